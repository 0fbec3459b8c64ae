"""The inference graph of EfficientViM: every affine map folded, tokens kept channels-last.

``fuse(model)`` turns a trained :class:`EfficientViM` or :class:`EfficientViMFeatures` into an
inference-only copy that computes the same function with fewer, larger operations:

* BatchNorm is folded into the convolution or projection before it.
* A gated depthwise branch (1 - s) x + s DW(x) is one depthwise conv whose kernel is
  s K + (1 - s) delta (delta: the identity kernel), and a residual x + DW(x) is K + delta.
* The MSF heads' LayerNorm affine (gamma, beta) is folded into the merged head, so only the
  normalisation itself remains there. Inside a block the LayerNorm keeps its affine: it is free
  within the norm, and folding it into the hidden-state projection would leave a rank-one
  correction (two more operations per block). HSM-SSD's A is the bias of the B/C/dt depthwise
  conv (on the dt channels only).
* The gates of the HSM-SSD and FFN branches become free by carrying the residual stream in
  a rescaled form: the block output (1 - s) (x + s / (1 - s) f(x)) is kept as x + r f(x) with
  r = s / (1 - s) folded into the branch's last projection, and the per-channel factor
  (1 - s) folded into the next depthwise kernel, which is linear in its input. The branch
  sum then happens inside the GEMM that produces it (``baddbmm`` / ``addmm``, in place). The
  FFN's output bias moves in front of the FFN into the preceding depthwise bias while
  r <= ``MAX_MOVED_BIAS_GAIN`` (beyond that the move would cost fc1 precision).
* The four (or, distilled, eight) MSF heads become one linear layer on the concatenated
  pooled features.
* Maps are held as (B, H, W, C) tensors: every 1x1 projection is one GEMM over the tokens,
  depthwise convolutions run on the same memory as channels-last NCHW views (no copies), and
  HSM-SSD is two batched matrix products over the token axis. ``layout="channels_first"``
  keeps NCHW maps instead, for ONNX Runtime (see :func:`fuse`).
* HSM-SSD's B, C and dt channels are padded with zeros to whole 16-channel blocks, which the
  CPU kernels of oneDNN and ONNX Runtime run faster than a ragged remainder.
* Which library call runs each operation (weights pre-packed for batch-1 sizes, sums inside the
  GEMM) is decided in :mod:`efficientvim.kernels`.

All folding is done in float64 and cast back, so the fused model matches the original to
float32 rounding (tests check 1e-4 relative on random weights).
"""

from .blocks import FusedBlock, FusedStateMixer, FusedStem
from .folding import CHANNEL_BLOCK, MAX_MOVED_BIAS_GAIN, TokenConv
from .graph import EXPORT_LAYOUT, FloatInterface, export_graph
from .network import (
    LAYOUTS,
    PRECISION_DTYPES,
    FusedEfficientViM,
    FusedEfficientViMFeatures,
    FusedMSFHead,
    FusedPatchMerging,
    FusedStage,
    fuse,
)

__all__ = [
    "CHANNEL_BLOCK", "EXPORT_LAYOUT", "LAYOUTS", "MAX_MOVED_BIAS_GAIN", "PRECISION_DTYPES", "FloatInterface",
    "FusedBlock", "FusedEfficientViM", "FusedEfficientViMFeatures", "FusedMSFHead", "FusedPatchMerging",
    "FusedStage", "FusedStateMixer", "FusedStem", "TokenConv", "export_graph", "fuse",
]
