"""Two ONNX files of one model timed alternately in one process, in ONNX Runtime or OpenVINO: is a graph change faster?

    git worktree add /tmp/old <commit>      # the tree before the change
    PYTHONPATH=/tmp/old/src efficientvim export --model efficientvim_m2 --format onnx -o old.onnx   # or int8
    efficientvim export --model efficientvim_m2 --format onnx -o new.onnx
    python benchmarks/onnx_ab.py old.onnx new.onnx --runtime onnxruntime --batch-size 32 --rounds 20

Both files must take the same input (random weights are fine: the speed does not depend on them, and the
outputs are not compared: run ``efficientvim export``, which checks each file against PyTorch). Each round
calls A then B, or B then A, alternating, so that machine noise hits both alike; the figure to read is the
median of the per-round ratios A/B (above 1: B is faster), with its quartiles. Sessions use the settings
``efficientvim bench`` uses (``efficientvim.sessions``); ``--precision bf16`` is OpenVINO's bf16 hint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from efficientvim.sessions import onnxruntime_session, openvino_request


def runner(path: str, runtime: str, threads: int, precision: str):
    if runtime == "onnxruntime":
        session = onnxruntime_session(path, threads)
        return lambda x: session.run(None, {"images": x})
    request = openvino_request(path, threads, precision)
    return lambda x: request.infer({0: x})


def input_size(path: str) -> tuple[int, int]:
    import onnx

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    try:  # an export's metadata; a file quantized or written without it (bench) is timed at 224
        return tuple(json.loads(props["input_size"])[-2:])
    except (KeyError, ValueError):
        return (224, 224)


def alternate(a, b, rounds: int, warmup: int = 3) -> tuple[float, float, tuple[float, float, float]]:
    """Time the calls ``a`` and ``b`` alternately, A then B or B then A by round: (median ms of A, of B, and the
    quartiles and median (q1, median, q3) of the per-round ratios A/B). The A/B timer of the benchmarks here."""
    for _ in range(warmup):
        a()
        b()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(rounds):
        for j in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            (a, b)[j]()
            times[j].append(time.perf_counter() - start)
    ratios = statistics.quantiles([t_a / t_b for t_a, t_b in zip(*times)], n=4)
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1]), tuple(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, help="input size (default: the file's metadata, else 224)")
    args = p.parse_args()
    size = (args.size, args.size) if args.size else input_size(args.a)
    x = np.random.default_rng(0).standard_normal((args.batch_size, 3, *size)).astype(np.float32)
    runs = {name: runner(path, args.runtime, args.threads, args.precision) for name, path in (("a", args.a),
                                                                                              ("b", args.b))}
    ms_a, ms_b, (q1, median, q3) = alternate(lambda: runs["a"](x), lambda: runs["b"](x), args.rounds, args.warmup)
    print(f"{args.runtime} {args.precision} batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds: "
          f"A {ms_a:.2f} ms, B {ms_b:.2f} ms; "
          f"A/B {median:.3f} (quartiles {q1:.3f}-{q3:.3f}; above 1: B faster)")


if __name__ == "__main__":
    main()
