"""Backbone (+ FPN neck) latency for dense prediction at the paper's protocol: 512 x 512, batch 32."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch

from ..registry import create_model
from .backbone import build_backbone


@torch.no_grad()
def dense_latency(
    name: str = "efficientvim_m4",
    size: int | Sequence[int] = 512,
    batch_size: int = 32,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    fpn_channels: int | None = 256,
    threads: int | None = None,
    warmup: int = 2,
    iters: int = 5,
) -> dict:
    """Time eager fp32 inference of the trunk (and FPN unless ``fpn_channels`` is None) on CPU.

    Random weights, eval mode, no grad; ``warmup`` untimed batches, then the median of ``iters``
    timed batches. Returns the settings with ``ms_per_batch``, ``ms_per_image`` and ``img_per_s``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if fpn_channels:
        model = build_backbone(name, out_indices, fpn_channels).eval()
    else:
        model = create_model(name, features_only=True, out_indices=tuple(out_indices)).eval()
    x = torch.rand(batch_size, 3, height, width)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1000
    return dict(
        model=name,
        input=f"{batch_size}x3x{height}x{width}",
        out_indices=tuple(out_indices),
        neck=f"FPN {fpn_channels}" if fpn_channels else "none",
        threads=torch.get_num_threads(),
        runtime=f"PyTorch {torch.__version__} eager fp32 CPU",
        ms_per_batch=ms,
        ms_per_image=ms / batch_size,
        img_per_s=1000 * batch_size / ms,
    )
