"""The graph an exported file holds: the fused model (NCHW inside, see ``EXPORT_LAYOUT``), and for fp16/bf16
files that graph in the low precision behind a float32 interface. Exporters and quantizers trace it."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .network import PRECISION_DTYPES, FusedEfficientViM, FusedEfficientViMFeatures, fuse

EXPORT_LAYOUT = "channels_first"  # ONNX has no strided views: NCHW avoids a transpose around every conv


def export_graph(model: nn.Module, precision: str = "fp32") -> tuple[nn.Module, nn.Module]:
    """(reference, graph to trace): a fused model is its own reference. fp16/bf16: the graph computes in
    that dtype and takes and returns float32 (:class:`FloatInterface`)."""
    if isinstance(model, (FusedEfficientViM, FusedEfficientViMFeatures)):
        reference, graph = model, model
    else:
        reference = copy.deepcopy(model).eval() if model.training else model  # leave the caller's mode alone
        graph = fuse(model, layout=EXPORT_LAYOUT)
    if precision in ("fp16", "bf16"):
        graph = FloatInterface(graph, PRECISION_DTYPES[precision])
    return reference, graph


class FloatInterface(nn.Module):
    """A fused graph in fp16 or bf16 behind a float32 interface: what a low-precision file holds. The images
    are cast on the way in (the fused model does that itself) and the outputs on the way out, so a user feeds
    and reads float32 as with the float32 file, and the file's runtime computes in the low precision.

    Converted with ``.to(dtype)`` rather than fused in it: the file is for the device that will run it, so
    this machine's lack of native fp16 (which makes ``fuse(dtype=...)`` stay float32) does not apply."""

    def __init__(self, graph: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.graph = copy.deepcopy(graph).to(dtype)
        for name in ("in_chans", "total_stride", "feature_info", "out_indices", "pretrained_cfg", "num_classes"):
            if hasattr(graph, name):
                setattr(self, name, getattr(graph, name))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        y = self.graph(x)
        return [t.float() for t in y] if isinstance(y, (list, tuple)) else y.float()

    def train(self, mode: bool = True) -> FloatInterface:
        return super().train(False)  # inference-only, like the fused graph inside
