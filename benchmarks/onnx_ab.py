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
    for _ in range(args.warmup):
        for run in runs.values():
            run(x)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(args.rounds):
        for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
            start = time.perf_counter()
            runs[name](x)
            times[name].append(time.perf_counter() - start)
    ratios = sorted(a / b for a, b in zip(times["a"], times["b"]))
    q1, median, q3 = statistics.quantiles(ratios, n=4)
    print(f"{args.runtime} {args.precision} batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds: "
          f"A {1e3 * statistics.median(times['a']):.2f} ms, B {1e3 * statistics.median(times['b']):.2f} ms; "
          f"A/B {median:.3f} (quartiles {q1:.3f}-{q3:.3f}; above 1: B faster)")


if __name__ == "__main__":
    main()
