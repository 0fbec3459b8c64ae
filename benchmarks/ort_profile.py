"""Where ONNX Runtime spends its time on one model: milliseconds per call by operator type.

    python benchmarks/ort_profile.py MODEL [MODEL ...] [--batch-size 32] [--threads 2] [--calls 10] [--int8]

MODEL is a bench name (efficientvim_m1+fuse, timm:shvit_s1, ...; see ``efficientvim bench``).
Each model is exported the way ``efficientvim bench --runtimes onnxruntime`` exports it (dynamic
batch, height and width, opset 17), run at its training resolution with ONNX Runtime's profiler
on, and the kernel times of the timed calls are summed per operator type. ``--int8``: the file
quantized as ``bench --precision int8`` quantizes it (static QDQ, calibrated on 32 digit images). Profiling adds a
little overhead to every node; compare models within one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import onnxruntime as ort
import torch

from efficientvim.bench import build_model, native_resolution, onnx_path
from efficientvim.export import write_onnx


def model_file(name: str, workdir: Path, int8: bool = False) -> tuple[Path, int]:
    """(the ONNX file ``bench`` times for ``name``, int8: quantized as bench quantizes it; its resolution)."""
    path = onnx_path(name, workdir)
    write_onnx(build_model(name, "onnxruntime"), path)
    if int8:
        from efficientvim.bench import INT8_CALIBRATION_IMAGES
        from efficientvim.bench.runners import Runner
        from efficientvim.quantize import calibration_images, quantize_onnx

        reference = Runner.reference(SimpleNamespace(name=name))
        images = calibration_images(reference, None, INT8_CALIBRATION_IMAGES)
        quantize_onnx(path, path.with_suffix(".int8.onnx"), images)
        path = path.with_suffix(".int8.onnx")
    return path, native_resolution(name)


def print_breakdown(title: str, ms: Counter, counts: Counter, top: int, unit: str) -> None:
    """``title``, then the ``top`` kinds by time per call (share, how many ``unit``), then the rest."""
    total = sum(ms.values())
    print(f"\n{title} {total:.1f} ms")
    for kind, t in ms.most_common(top):
        print(f"  {kind:24s} {t:7.2f} ms  {100 * t / total:5.1f}%  {counts[kind]:3d} {unit}")
    rest = total - sum(t for _, t in ms.most_common(top))
    print(f"  {'other':24s} {rest:7.2f} ms  {100 * rest / total:5.1f}%")


def profile(name: str, batch: int, threads: int, calls: int, workdir: Path, int8: bool = False
            ) -> tuple[float, Counter, Counter]:
    """(ms per call without the profiler, kernel ms per call by op type, node count by op type)."""
    path, res = model_file(name, workdir, int8)
    x = torch.randn(batch, 3, res, res).numpy()

    def session(profiling: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = profiling
        options.profile_file_prefix = str(workdir / "profile")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    plain = session(False)
    for _ in range(3):
        plain.run(None, {"images": x})
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        plain.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    profiled = session(True)
    for _ in range(3 + calls):
        profiled.run(None, {"images": x})
    events = json.loads(Path(profiled.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_timed = runs[3]  # the three warm-up calls are profiled too: leave their nodes out
    kernel_ms, nodes = Counter(), Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            kernel_ms[e["args"]["op_name"]] += e["dur"] / 1000 / calls
            nodes[e["args"]["op_name"]] += 1
    times.sort()
    return times[len(times) // 2] * 1000, kernel_ms, Counter({k: v // calls for k, v in nodes.items()})


def profile_parser(description: str) -> argparse.ArgumentParser:
    """The options every per-operator profile takes: models, batch, threads, calls, how many kinds to list."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--top", type=int, default=8, help="kinds listed per model")
    return parser


def main() -> None:
    parser = profile_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--int8", action="store_true", help="profile the int8 (static QDQ) file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ms, kernel_ms, nodes = profile(name, args.batch_size, args.threads, args.calls, Path(tmp), args.int8)
            print_breakdown(f"{name}: batch {args.batch_size}, {args.threads} threads, {ms:.1f} ms per call "
                            f"(median of {args.calls}), kernels", kernel_ms, nodes, args.top, "nodes")


if __name__ == "__main__":
    main()
