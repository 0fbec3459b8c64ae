"""Each fused layout in each runtime: is one formulation of the block enough?

    python benchmarks/layouts.py efficientvim_m2 --batch-size 32 --rounds 8

Fuses one random-weight model with ``layout="channels_last"`` (token-major, the eager default) and
``layout="channels_first"`` (NCHW, what the ONNX export uses), writes both as ONNX, and times the
four combinations interleaved: eager PyTorch and ONNX Runtime, each on both graphs. Prints the
medians and the median per-round ratio channels_first / channels_last per runtime.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import efficientvim as ev
from efficientvim.errors import import_extra
from efficientvim.export import write_onnx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="efficientvim_m2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    ort = import_extra("onnxruntime", "onnx", "benchmarks/layouts.py")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ev.create_model(args.model).eval()
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(args.batch_size, 3, size, size)
    layouts = ("channels_last", "channels_first")
    fused = {layout: ev.fuse(model, layout=layout) for layout in layouts}
    calls = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for layout, f in fused.items():
            path = f"{tmp}/{layout}.onnx"
            write_onnx(f, path, (size, size))
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            calls["eager", layout] = lambda f=f: f(x)
            calls["onnxruntime", layout] = lambda s=session: s.run(None, {"images": x.numpy()})
        for call in calls.values():
            for _ in range(2):
                call()
        times: dict = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
    print(f"{args.model}, batch {args.batch_size} at {size}, {args.threads} threads, fp32, {args.rounds} rounds")
    for runtime in ("eager", "onnxruntime"):
        last, first = times[runtime, "channels_last"], times[runtime, "channels_first"]
        ratio = statistics.median(b / a for a, b in zip(last, first))
        print(f"  {runtime:12s} channels_last {statistics.median(last) * 1e3:8.1f} ms   channels_first "
              f"{statistics.median(first) * 1e3:8.1f} ms   channels_first / channels_last {ratio:.3f}")


if __name__ == "__main__":
    main()
