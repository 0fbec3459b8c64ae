"""Kernel plumbing of the fused inference path: which library call runs each operation, on which weights.

The fused modules (:mod:`efficientvim.deploy`) compute the folded maths; this module decides how:

* ``packed_linear`` / ``packed_conv2d``: batch-1 sized work in eager PyTorch on CPU (float32) runs on
  weights packed once into the kernel library's own format, cached per input shape
  (:class:`PackedWeights`): MKL's GEMM for projections, oneDNN's convolution (ReLU inside) for
  depthwise and small dense convolutions. Otherwise a small layer's time is mostly spent re-packing
  its weight on every call. Other dtypes and devices, traced graphs and torch.compile take the plain
  ``F.linear`` / ``F.conv2d``.
* ``accumulate``: the residual sums done inside the GEMM that produces the branch, in place when eager.
* ``GEMM_LIBRARY``: which library runs float32 projections in eager mode, by CPU vendor. MKL takes its
  AVX-512 kernels on Intel CPUs only: on an AMD EPYC Zen 4 its float32 GEMM ran 206-227 GFLOP/s where
  oneDNN's 1x1 convolution on the same shapes ran 490-515 (2 threads), so on AMD the projections (and
  the GEMM sums, then added in place) run through oneDNN (:func:`onednn_linear`). ``EFFICIENTVIM_GEMM=mkl``
  or ``=onednn`` overrides the choice.

This is where precision- and CPU-specific kernels belong.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import ConfigError

# Token count below which a 1x1 projection runs as F.linear rather than a oneDNN 1x1 conv.
SMALL_GEMM_TOKENS = 1024
# Most rows (tokens) for which a projection uses MKL's pre-packed GEMM (batch-1 sizes); above
# it, batch-32 runs were faster on the plain GEMM.
PACKED_GEMM_TOKENS = 256


def accumulate(op, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, packed: PackedWeights | None = None
               ) -> torch.Tensor:
    """x + a @ b with ``op`` = torch.addmm or torch.baddbmm, in place when running eagerly.

    In place saves a pass over x (x is always a fresh intermediate here); traced graphs (ONNX,
    TorchScript) get the functional op, since the exporters do not keep in-place semantics. An
    ``addmm`` whose ``b`` is a weight (``packed`` given) runs on oneDNN where ``GEMM_LIBRARY`` says so.
    """
    if packed is not None and GEMM_LIBRARY == "onednn" and _native_cpu_fp32(x):
        return x.add_(onednn_linear(a, b.t(), None, packed))
    if torch.jit.is_tracing() or not x.dtype == a.dtype == b.dtype:
        # under autocast the operands arrive in the low precision and the stream may not: the functional
        # op lets autocast choose the dtype (an in-place sum into a float32 x cannot take bfloat16 operands)
        return op(x, a, b)
    return getattr(x, op.__name__ + "_")(a, b)


def eager() -> bool:
    """Whether this call runs eagerly, neither traced (ONNX, TorchScript) nor under torch.compile."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


# MKL's GEMM on a weight packed once beforehand; absent from PyTorch builds without MKL.
MKL_PACKED = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
# oneDNN's convolution on a weight reordered once beforehand (the op torch.compile's CPU backend emits).
MKLDNN_PACKED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
# Largest input (elements) for which a dense convolution (the stem) runs on a pre-reordered weight; at
# batch 32 oneDNN's plain path was as fast or faster. Depthwise convolutions always use one.
PACKED_CONV_ELEMENTS = 1 << 18
# Input shapes a module keeps packed weights for; a model fed ever new sizes repacks the oldest away.
PACKED_SHAPES = 8


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD`` ... from /proc/cpuinfo; empty where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


GEMM_LIBRARY = os.environ.get("EFFICIENTVIM_GEMM") or (
    "onednn" if cpu_vendor() == "AuthenticAMD" and MKLDNN_PACKED else "mkl")
if GEMM_LIBRARY not in ("mkl", "onednn"):
    raise ConfigError(f"EFFICIENTVIM_GEMM={GEMM_LIBRARY!r} names no GEMM library: set it to mkl or onednn, or unset "
                      "it to let the CPU choose")


class PackedWeights(dict):
    """Weights a kernel library has packed for one input shape: shape -> (stamp, packed weight).

    A cache, not state: copies and pickles of the module start it empty, and an entry whose stamp
    (the weight's version and storage) no longer matches is packed again, so weights loaded after
    the model has run are used.
    """

    def get_or_pack(self, key, weight: torch.Tensor, pack):
        # inference tensors (a model fused under torch.inference_mode) keep no version counter
        stamp = (weight.data_ptr(), 0 if weight.is_inference() else weight._version)
        entry = self.get(key)
        if entry is None or entry[0] != stamp:
            if key not in self and len(self) >= PACKED_SHAPES:
                del self[next(iter(self))]
            entry = self[key] = (stamp, pack())
        return entry[1]

    def __deepcopy__(self, memo) -> PackedWeights:
        return PackedWeights()

    def __reduce__(self):
        return PackedWeights, ()


# bfloat16 kernels of oneDNN need AVX512-BF16 or AMX; elsewhere they emulate and run slower than float32
BF16_NATIVE = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
# float16 likewise needs AVX512-FP16 or AMX-FP16
FP16_NATIVE = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_fp16_supported()
LOW_PRECISION = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


def native_precision(dtype: torch.dtype, device: torch.device | str = "cpu") -> str | None:
    """None when ``device`` runs ``dtype`` in hardware (so faster than float32); else why not, in words.

    CPU: oneDNN's own check, AVX512-BF16 or AMX for bfloat16, AVX512-FP16 or AMX-FP16 for float16 (without
    them it emulates, slower than float32). CUDA: float16 always, bfloat16 from Ampere on.
    """
    device = torch.device(device)
    if dtype not in LOW_PRECISION:
        return None
    if device.type == "cuda":
        ok = dtype == torch.float16 or torch.cuda.is_bf16_supported(including_emulation=False)
        return None if ok else f"this GPU has no native {LOW_PRECISION[dtype]}"
    if device.type == "cpu":
        ok = BF16_NATIVE if dtype == torch.bfloat16 else FP16_NATIVE
        need = "AVX512-BF16 or AMX" if dtype == torch.bfloat16 else "AVX512-FP16 or AMX-FP16"
        return None if ok else f"this CPU has no native {LOW_PRECISION[dtype]} ({need})"
    return None


def _eager_cpu(x: torch.Tensor) -> bool:
    # not under autocast: pre-packed weights would bypass its casts
    return x.device.type == "cpu" and eager() and not torch.is_autocast_enabled("cpu")


def _packable_conv(x: torch.Tensor) -> bool:
    """Whether oneDNN's convolution on a pre-reordered weight can take ``x``: float32, or bfloat16 where native."""
    return (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and BF16_NATIVE)) and _eager_cpu(x)


def _native_cpu_fp32(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and _eager_cpu(x)


# Images (elements) up to which the stem gets a channels-last copy of its input on the oneDNN path (one image).
STEM_COPY_ELEMENTS = 1 << 18


def stem_reads_nchw(x: torch.Tensor) -> bool:
    """Whether the stem's first convolution reads the NCHW images as they come rather than a channels-last
    copy: on the oneDNN path (``GEMM_LIBRARY``), for more than one image. There the pre-reordered convolution
    takes NCHW itself and returns channels-last maps. The copy of a batch cost the float32 model 0-23% by the
    allocator's state (AMD EPYC Zen 4, batch 32, alternating calls, old/new: M2 1.00x-1.23x over four runs, M1
    1.00x-1.12x, M4 at 256 1.00x-1.02x; never slower; bfloat16 unchanged, 0.996x); for a single image the
    copy stays (0.98x-0.99x without it). MKL's path (Intel) keeps the copy: its plain convolution would
    return NCHW maps to the token layout."""
    # the size test last (see packed_linear)
    return GEMM_LIBRARY == "onednn" and MKLDNN_PACKED and _eager_cpu(x) and x.numel() > STEM_COPY_ELEMENTS


def packed_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: PackedWeights
) -> torch.Tensor:
    """F.linear(x, weight, bias): where ``GEMM_LIBRARY`` is oneDNN, :func:`onednn_linear`; with MKL, for at
    most ``PACKED_GEMM_TOKENS`` tokens on a weight MKL has packed.

    With few tokens (batch 1, late stages) re-packing the weight on each call is a large part of
    the GEMM, and the plain path often splits a thin GEMM across threads at a loss. ``packed``
    holds one packed weight per token count (a batch-1 model sees the same few every call).
    Other dtypes and devices, traced graphs and torch.compile (which packs weights itself) take F.linear.
    """
    # the size test comes last: under torch.export a comparison of symbolic sizes becomes a guard on the
    # exported graph's input shapes, even where the eager path is not taken
    if not _native_cpu_fp32(x):
        return F.linear(x, weight, bias)
    if GEMM_LIBRARY == "onednn":
        return onednn_linear(x, weight, bias, packed)
    rows = x.numel() // x.shape[-1]
    if not (MKL_PACKED and rows <= PACKED_GEMM_TOKENS):
        return F.linear(x, weight, bias)
    packed_weight = packed.get_or_pack(rows, weight, lambda: torch.ops.mkl._mkl_reorder_linear_weight(weight, rows))
    return torch.ops.mkl._mkl_linear(x, packed_weight, weight, bias, rows)


def packed_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int, groups: int,
    relu: bool, packed: PackedWeights,
) -> torch.Tensor:
    """F.conv2d (+ ReLU) with the weight in oneDNN's own format, reordered once per input shape.

    ``F.conv2d`` reorders the weight on every call, which is most of a small depthwise conv's time
    (batch 1); the ReLU runs inside the convolution. Falls back to F.conv2d where oneDNN's op is
    absent, for large dense convolutions (see ``PACKED_CONV_ELEMENTS``), and for other dtypes and
    devices, traced graphs and torch.compile.
    """
    # bf16, and oneDNN's float32 on AMD: the pre-reordered weight (and its fused ReLU) at every size; the size
    # test last (see packed_linear)
    if not (MKLDNN_PACKED and _packable_conv(x) and (groups > 1 or x.dtype == torch.bfloat16 or GEMM_LIBRARY ==
                                                     "onednn" or x.numel() <= PACKED_CONV_ELEMENTS)):
        x = F.conv2d(x, weight, bias, stride, padding, 1, groups)
        return x.relu_() if relu else x  # in place: the conv output is a fresh tensor
    pad, step = [padding, padding], [stride, stride]
    packed_weight = packed.get_or_pack(tuple(x.shape), weight, lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
        weight.to_mkldnn(), pad, step, [1, 1], groups, list(x.shape)))
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed_weight, bias, pad, step, [1, 1], groups, "relu" if relu else "none", [], "")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, packed: PackedWeights
                  ) -> torch.Tensor:
    """F.linear(x, weight, bias) run by oneDNN as a 1x1 convolution over the rows of x: the rows become one
    image's positions, a channels-last view, so nothing is copied either way."""
    rows, k = x.numel() // x.shape[-1], x.shape[-1]
    image = x.reshape(1, rows, 1, k).permute(0, 3, 1, 2)  # (1, K, rows, 1), channels-last
    out = packed_conv2d(image, weight.view(*weight.shape, 1, 1), bias, 1, 0, 1, False, packed)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])
