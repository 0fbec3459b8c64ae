"""Single-kernel timings behind the batch-1 choices of ``efficientvim.fuse`` (CPU, fp32).

    python benchmarks/kernels.py [--threads 2]

For the shapes a fused EfficientViM-M1 meets at batch 1 (224x224), in microseconds per call
(best of 5 runs of a few hundred calls, the operands hot in cache; in a whole model every call
also waits for its weights, so these are lower bounds):

- depthwise 3x3 convolution: ``F.conv2d`` on a channels-last map, which reorders the kernel on
  every call, against oneDNN on a kernel reordered once (``mkldnn._convolution_pointwise``);
- 1x1 projection: ``F.linear`` against MKL's GEMM on a weight packed once (``mkl._mkl_linear``);
- HSM-SSD's softmax over the L tokens of a (1, L, N) view: over the strided token axis against
  over the last axis of its transpose.

Then what packing costs in memory: the packed weights a fused M1 holds after one batch-1 call at
224, and how much its resident memory grew over that call (Linux: read from /proc/self/statm).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F


def _us(fn, *args, calls: int = 300) -> float:
    for _ in range(30):
        fn(*args)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def depthwise_rows() -> list[tuple[str, float, float]]:
    rows = []
    for channels, size in ((128, 14), (160, 14), (192, 7), (320, 4), (768, 14)):
        x = torch.randn(1, size, size, channels).permute(0, 3, 1, 2)  # channels-last NCHW view
        weight, bias = torch.randn(channels, 1, 3, 3), torch.randn(channels)
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), [1, 1], [1, 1], [1, 1], channels,
                                                           list(x.shape))
        plain = _us(F.conv2d, x, weight, bias, 1, 1, 1, channels)
        fast = _us(torch.ops.mkldnn._convolution_pointwise, x, packed, bias, [1, 1], [1, 1], [1, 1], channels, "none",
                   [], "")
        rows.append((f"depthwise 3x3, {channels} ch, {size}x{size}", plain, fast))
    return rows


def linear_rows() -> list[tuple[str, float, float]]:
    rows = []
    for tokens, c_in, c_out in ((196, 128, 512), (196, 512, 128), (49, 192, 768), (16, 320, 1280), (9, 320, 640)):
        x, weight = torch.randn(1, tokens, c_in), torch.randn(c_out, c_in)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, tokens)
        plain = _us(F.linear, x, weight)
        fast = _us(torch.ops.mkl._mkl_linear, x, packed, weight, None, tokens)
        rows.append((f"1x1 projection, {tokens} tokens, {c_in}->{c_out}", plain, fast))
    return rows


def softmax_rows() -> list[tuple[str, float, float]]:
    rows = []
    for tokens, states in ((196, 49), (49, 25), (3136, 49)):
        dt = torch.randn(1, tokens, 3 * states)[..., 2 * states:]  # the dt slice of the B/C/dt tensor
        plain = _us(torch.softmax, dt, 1)
        fast = _us(torch.softmax, dt.transpose(1, 2), -1)
        rows.append((f"softmax over {tokens} tokens, {states} states", plain, fast))
    return rows


def _resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def packed_memory() -> str:
    import efficientvim
    from efficientvim.kernels import PackedWeights

    fused = efficientvim.fuse(efficientvim.create_model("efficientvim_m1").eval())
    weights_mb = sum(p.numel() * p.element_size() for p in fused.parameters()) / 2**20
    before = _resident_mb()
    with torch.inference_mode():
        fused(torch.randn(1, 3, 224, 224))
    grown = _resident_mb() - before
    caches = [c for m in fused.modules() for c in vars(m).values() for c in (c if isinstance(c, tuple) else (c,))
              if isinstance(c, PackedWeights)]
    packed = [w for cache in caches for _stamp, w in cache.values()]
    dense = [w for w in packed if w.dim() == 2]  # MKL's packed GEMM weights, (size, 1); oneDNN's keep 4 dims
    dense_mb = sum(w.numel() * w.element_size() for w in dense) / 2**20
    return (f"fused M1, one batch-1 call at 224: {len(packed)} packed weights ({len(dense)} MKL GEMM weights "
            f"taking {dense_mb:.0f} MB of address space, the largest {max(w.numel() for w in dense) * 4 / 2**20:.1f} "
            f"MB, the smallest {min(w.numel() for w in dense) * 4 / 2**20:.1f} MB); resident memory grew by "
            f"{grown:.0f} MB over the call; the fused weights take {weights_mb:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{torch.__version__}, {args.threads} threads; microseconds per call\n")
    print(f"| {'kernel':44s} | {'plain':>8s} | {'fuse':>8s} | ratio |")
    print(f"|{'-' * 46}|{'-' * 9}:|{'-' * 9}:|------:|")
    with torch.inference_mode():
        for label, plain, fast in depthwise_rows() + linear_rows() + softmax_rows():
            print(f"| {label:44s} | {plain:8.1f} | {fast:8.1f} | {plain / fast:4.2f}x |")
    if os.path.exists("/proc/self/statm"):
        print("\n" + packed_memory())


if __name__ == "__main__":
    main()
