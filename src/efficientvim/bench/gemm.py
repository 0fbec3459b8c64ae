"""The GEMM bound: the rate of large matrix products in the libraries each path uses, the ceiling a model's
achieved GFLOP/s is compared with.

One product timed a few times read 122-183 GFLOP/s from run to run on a Zen 3 machine, issue 25 reports (a fused
model then showed "103% of the bound"). A ceiling is the best the library reaches, so the bound is the fastest
of several repeats of several shapes in each library, and its spread (the slowest and fastest repeat of that
product) goes with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .models import PRECISIONS

# (M, K, N): squares, and the token-major shape of a stage-1 projection at batch 32 (6272 tokens of 224 px images)
CPU_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (3072, 3072, 3072), (6272, 512, 512))
CUDA_SHAPES = ((4096, 4096, 4096), (8192, 8192, 8192))


@dataclass(frozen=True)
class GemmBound:
    gflops: float  # the fastest repeat of the fastest product
    spread: tuple[float, float]  # GFLOP/s of that product's slowest and fastest timed repeat
    shape: tuple[int, int, int]  # its (M, K, N)
    library: str  # "torch" (PyTorch's matmul: MKL or cuBLAS) or "onednn" (oneDNN on a packed weight)

    def describe(self) -> str:
        m, k, n = self.shape
        return (f"{self.gflops:.0f} GFLOP/s ({m}x{k} @ {k}x{n} in {self.library}; its repeats "
                f"{self.spread[0]:.0f}-{self.spread[1]:.0f})")


def _products(precision: str, device: str, shape: tuple[int, int, int]) -> dict[str, object]:
    from ..kernels import MKLDNN_PACKED, PackedWeights, onednn_linear

    m, k, n = shape
    dtype = PRECISIONS[precision]
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    products = {"torch": lambda: a @ b}
    if device == "cpu" and MKLDNN_PACKED:
        weight = b.t().contiguous()  # a linear layer's (out, in) weight
        packed = PackedWeights()
        products["onednn"] = lambda: onednn_linear(a, weight, None, packed)
    return products


def _seconds(product, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    product()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def gemm_bound(precision: str, device: str = "cpu", threads: int = 2, repeats: int = 5,
               shapes: tuple[tuple[int, int, int], ...] | None = None) -> GemmBound:
    """The GEMM ceiling in ``precision``: every shape of ``shapes`` (default :data:`CPU_SHAPES` or
    :data:`CUDA_SHAPES`) in every library the fused path chooses between (PyTorch's matmul, and oneDNN on a
    packed weight where PyTorch has it), each timed ``repeats`` times after two untimed calls; the fastest
    repeat of all, with its product's spread."""
    shapes = shapes or (CUDA_SHAPES if device.startswith("cuda") else CPU_SHAPES)
    torch.set_num_threads(threads)
    best: GemmBound | None = None
    for shape in shapes:
        flop = 2 * shape[0] * shape[1] * shape[2]
        for library, product in _products(precision, device, shape).items():
            for _ in range(2):
                product()
            # to 0.1 GFLOP/s, as results.json keeps them: the printed line and the file then round alike
            rates = [round(flop / _seconds(product, device) / 1e9, 1) for _ in range(repeats)]
            if best is None or max(rates) > best.gflops:
                best = GemmBound(max(rates), (min(rates), max(rates)), shape, library)
    return best
