"""Where a fused model's eager time goes, by kind of operation, and how fast its GEMMs run.

    python benchmarks/profile_eager.py efficientvim_m2 --precision bf16 --batch-size 32

Groups the PyTorch profiler's self time per call into matrix products (1x1 projections, the state
products, the head), depthwise convolutions, the stem's dense 3x3 convolutions and the rest (LayerNorm,
softmax, element-wise), and times the model's largest projection shapes alone next to the bound `efficientvim
bench` reports against (the best of several products): how far from that bound the model's own GEMM shapes
already are, and the ceiling the rest leaves: the share of the bound
the whole model would reach if every product and convolution ran at the bound and the rest (depthwise
convolutions, LayerNorm, softmax, element-wise work, bookkeeping) took the time it takes now.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn.functional as F

import efficientvim as ev
from efficientvim.bench.gemm import gemm_bound
from efficientvim.flops import count_flops

# the categories whose work is multiply-adds at GEMM-like intensity; the rest run at memory speed
PRODUCTS = ("matrix products", "stem 3x3 convs")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def category(event) -> str:
    name, shapes = event.key, event.input_shapes
    if "convolution" in name:
        weight = shapes[1] if len(shapes) > 1 else []
        if len(weight) == 4 and weight[1] == 1 and weight[2] > 1:
            return "depthwise conv"
        if len(weight) == 4 and weight[2] == 1:
            return "matrix products"  # a 1x1 convolution is a GEMM over the tokens
        return "stem 3x3 convs"
    if any(k in name for k in ("addmm", "aten::mm", "bmm", "_mkl_linear", "linear_pointwise")):
        return "matrix products"
    if name.startswith("aten::") and name.split("::")[1] in ("linear", "matmul", "conv2d", "_convolution", "t",
                                                             "view", "permute", "as_strided", "empty", "reshape",
                                                             "split", "transpose", "contiguous", "expand"):
        return "bookkeeping"
    return "other (LayerNorm, softmax, element-wise, copies)"


def gemm_rate(rows: int, k: int, n: int, dtype: torch.dtype, repeats: int = 20) -> float:
    a, w = torch.randn(rows, k).to(dtype), torch.randn(n, k).to(dtype)
    for _ in range(3):
        F.linear(a, w)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        F.linear(a, w)
        times.append(time.perf_counter() - start)
    return 2 * rows * k * n / statistics.median(times) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="efficientvim_m2")
    p.add_argument("--precision", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.precision]
    model = ev.create_model(args.model).eval()
    fused = ev.fuse(model, dtype=dtype)
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(args.batch_size, 3, size, size).to(dtype)
    with torch.inference_mode():
        for _ in range(3):
            fused(x)
        start = time.perf_counter()
        for _ in range(args.calls):
            fused(x)
        plain = (time.perf_counter() - start) / args.calls * 1e3  # ms per call without the profiler
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(args.calls):
                fused(x)
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        totals[category(event)] += event.self_cpu_time_total / 1e3 / args.calls
    whole = sum(totals.values())
    print(f"{args.model} fused, {args.precision}, batch {args.batch_size} at {size}, {args.threads} threads: "
          f"{whole:.1f} ms per call profiled (the operators' self time), {plain:.1f} ms without the profiler")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {name:50s} {ms:7.1f} ms  {100 * ms / whole:5.1f}%")
    dim = model.embed_dim
    tokens = args.batch_size * (size // 16) ** 2
    shapes = [(tokens, dim[0], 4 * dim[0]), (tokens, 4 * dim[0], dim[0]),
              (tokens // 4, dim[1], 4 * dim[1]), (tokens // 4, 4 * dim[1], dim[1])]
    print("GEMM rate of the model's FFN shapes alone (F.linear):")
    for rows, k, n in shapes:
        print(f"  {rows} x {k} -> {n}: {gemm_rate(rows, k, n, dtype):.0f} GFLOP/s")
    bound = gemm_bound(args.precision, threads=args.threads)
    flop = 2 * count_flops(model, size) * args.batch_size
    rest = sum(ms for name, ms in totals.items() if name not in PRODUCTS)
    at_bound = flop / bound.gflops / 1e6  # ms
    print(f"bench's GEMM bound: {bound.describe()}; the model without the profiler: {flop / plain / 1e6:.0f} "
          f"GFLOP/s, {100 * flop / plain / 1e6 / bound.gflops:.0f}% of it")
    print(f"ceiling with every product and stem conv at the bound and the rest as profiled ({rest:.1f} ms): "
          f"{100 * at_bound / (at_bound + rest):.0f}% of the bound")


if __name__ == "__main__":
    main()
