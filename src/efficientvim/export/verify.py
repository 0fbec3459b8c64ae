"""The one output check: run a written file in its runtime, compare it with PyTorch, raise
:class:`efficientvim.errors.ExportError` on a mismatch (float files by relative error, quantized and fp16
Core ML files by top-1 agreement)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from .common import EXPORT_TOLERANCE, LOW_PRECISION_DTYPES, LOW_PRECISION_LIMIT, outputs


def relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def verify(reference: nn.Module, run, sizes: list[tuple[int, int, int]], what: str, precision: str = "fp32"
            ) -> float:
    """Largest relative error of ``run`` (numpy batch -> list of arrays) against ``reference`` in float32.

    The tolerance is ``EXPORT_TOLERANCE`` for a float32 file. A file computing in fp16 or bf16 cannot be
    closer to float32 than the model itself run in that precision, so its tolerance is twice the model's
    own error in it (``reference`` converted with ``.to(dtype)``, on the same images) or ``EXPORT_TOLERANCE``,
    whichever is larger; a model whose own error exceeds ``LOW_PRECISION_LIMIT`` is refused in that precision."""
    worst = own = 0.0
    low = copy.deepcopy(reference).to(LOW_PRECISION_DTYPES[precision]) if precision != "fp32" else None
    g = torch.Generator().manual_seed(0)
    for batch, height, width in sizes:
        x = torch.randn(batch, reference.in_chans, height, width, generator=g)
        with torch.no_grad():
            expected = outputs(reference(x))
            if low is not None:
                mine = outputs(low(x.to(LOW_PRECISION_DTYPES[precision])))
                own = max([own] + [relative(m, e) for m, e in zip(mine, expected)])
        got = run(x)
        if len(got) != len(expected):
            raise ExportError(f"{what} returned {len(got)} outputs, PyTorch {len(expected)}")
        for e, o in zip(expected, got):
            if o.shape != e.shape:
                raise ExportError(f"{what} gave shape {o.shape} for input {tuple(x.shape)}, PyTorch {e.shape}")
            worst = max(worst, relative(o, e))
    if own > LOW_PRECISION_LIMIT:
        other = "fp32 or bf16" if precision == "fp16" else "fp32"
        raise ExportError(
            f"{what}: the model itself is off by {own:.1e} relative in {precision} (its values leave {precision}'s "
            f"range), so no {precision} file can be checked against it: export it in {other}"
        )
    tolerance = max(EXPORT_TOLERANCE, 2 * own)
    if worst > tolerance:
        why = f"twice the model's own {precision} error" if tolerance > EXPORT_TOLERANCE else "float32"
        raise ExportError(
            f"{what} differs from PyTorch by {worst:.2e} relative (tolerance {tolerance:.0e}: {why}); "
            "the file was written but should not be used"
        )
    return worst


def agreement(reference: nn.Module, run, sizes: list[tuple[int, int, int]]) -> float:
    g = torch.Generator().manual_seed(0)
    same = total = 0
    for batch, height, width in sizes:
        x = torch.randn(batch, reference.in_chans, height, width, generator=g)
        with torch.no_grad():
            same += int((reference(x).argmax(1).numpy() == run(x)[0].argmax(1)).sum())
        total += batch
    return 100.0 * same / total
