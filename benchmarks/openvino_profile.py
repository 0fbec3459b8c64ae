"""Where OpenVINO spends its time on one model: milliseconds per call by executed layer type.

    python benchmarks/openvino_profile.py MODEL [MODEL ...] [--batch-size 32] [--threads 2] [--calls 10]
        [--precision fp32|bf16|int8]

MODEL is a bench name (efficientvim_m1+fuse, timm:shvit_s1, ...; see ``efficientvim bench``). Each model is
exported as ``efficientvim bench --runtimes openvino`` exports it (int8: the static QDQ file bench quantizes,
calibrated on 32 digit images), compiled with the same settings plus OpenVINO's performance counters, and the
real time of each executed layer is summed per layer type over the timed calls (the compiled graph: after
OpenVINO's fusions, so a LayerNorm it fused shows as MVN, a convolution with its ReLU as one Convolution).
The counters add a little overhead; compare models within one run.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

import openvino as ov
import torch
from ort_profile import model_file, print_breakdown, profile_parser  # benchmarks/ is on the path when this script runs


def profile(name: str, batch: int, threads: int, calls: int, workdir: Path, precision: str
            ) -> tuple[float, Counter, Counter]:
    """(ms per call with the counters on, layer ms per call by executed type, layer count by executed type)."""
    path, res = model_file(name, workdir, precision == "int8")
    core = ov.Core()
    compiled = core.compile_model(ov.convert_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = torch.randn(batch, 3, res, res).numpy()
    for _ in range(3):
        request.infer({0: x})
    layer_ms, layers, times = Counter(), Counter(), []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - start)
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                layer_ms[info.node_type] += info.real_time.total_seconds() * 1000 / calls
                layers[info.node_type] += 1
    times.sort()
    return times[len(times) // 2] * 1000, layer_ms, Counter({k: v // calls for k, v in layers.items()})


def main() -> None:
    parser = profile_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            ms, layer_ms, layers = profile(name, args.batch_size, args.threads, args.calls, Path(tmp), args.precision)
            print_breakdown(f"{name}: {args.precision}, batch {args.batch_size}, {args.threads} threads, {ms:.1f} ms "
                            f"per call (median of {args.calls}, counters on), layers", layer_ms, layers, args.top,
                            "layers")


if __name__ == "__main__":
    main()
