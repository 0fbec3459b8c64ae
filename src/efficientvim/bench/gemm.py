"""The GEMM bound: the rate of one large matrix product in the library each path uses, the ceiling a model's
achieved GFLOP/s is compared with."""

from __future__ import annotations

import statistics
import time

import torch

from .models import PRECISIONS


def gemm_bound(precision: str, device: str = "cpu", threads: int = 2, size: int | None = None, repeats: int = 5
               ) -> float:
    """GFLOP/s of one large square matrix product in ``precision``, the ceiling a GEMM-bound model can reach:
    on CPU the faster of PyTorch's matmul and oneDNN's (the two libraries the fused path chooses between).
    ``size``: 2048 on CPU, 8192 on CUDA (a GPU needs the larger product to fill)."""
    from ..kernels import MKLDNN_PACKED, PackedWeights, onednn_linear

    size = size or (8192 if device.startswith("cuda") else 2048)
    torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device).to(PRECISIONS[precision])
    products = [lambda: a @ a]
    if device == "cpu" and MKLDNN_PACKED:
        packed = PackedWeights()
        products.append(lambda: onednn_linear(a, a, None, packed))
    best = 0.0
    for product in products:
        times = []
        for i in range(repeats + 2):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            product()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:  # two untimed calls first
                times.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / statistics.median(times) / 1e9)
    return best
