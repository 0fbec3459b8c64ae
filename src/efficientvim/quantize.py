"""int8 by post-training static quantization, calibrated on real images: the layer below the int8 exporters.

* ``calibration_images`` / ``held_out_images``: the images of a folder (searched recursively; default: the
  training split of the digits bundled with scikit-learn), preprocessed as the model's own eval transform,
  split into disjoint calibration and check sets.
* ``quantize_onnx``: ONNX Runtime's static QDQ quantization of an ONNX file: weights int8 per output channel
  (7 bits by default, ``WEIGHT_BITS``), activations uint8 per tensor, convolutions, matrix products and the
  head quantized, LayerNorm and softmax kept in float32. :func:`efficientvim.export.onnx.export_onnx_int8`
  writes the model's file with it.
* ``quantize_xnnpack``: PyTorch 2 export quantization with XNNPACK's quantizer (ExecuTorch and LiteRT files);
  ``quantize_pt2e``: with the X86 Inductor quantizer, compiled, for int8 inside PyTorch.

Quantization moves logits by more than float rounding: instead of a tolerance the exporters report the
top-1 agreement with the float32 PyTorch model on images it was not calibrated on (``top1_agreement``).
Imports nothing of :mod:`efficientvim.export`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import EfficientViMError, ExportError, import_extra

# ops quantized: what carries the multiply-adds; LayerNorm, softmax, SiLU and the sums stay float32. Relu and
# Clip are listed so the quantizer folds them into the range of the product before them: left out, every
# Conv -> ReLU -> Conv ran as int8 -> float32 -> ReLU -> int8 (M2 int8 1.15x faster, SHViT-S2 1.07x)
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "Relu", "Clip")
CALIBRATION_IMAGES = 256  # images run for the ranges: enough for min/max to settle, a few seconds
CHECK_IMAGES = 64  # held-out images the int8 model's top-1 is compared on
# Bits of the int8 weights. x86 CPUs without VNNI (AVX2; AVX-512 without VNNI) multiply uint8 activations by
# int8 weights with VPMADDUBSW, which adds adjacent products into a saturating int16: two products of
# 255 x 127 (64,770) overflow it. ONNX Runtime takes that kernel there (so does oneDNN, OpenVINO's int8 from
# this file): the digits model's int8 file kept its top-1 on 92.5% of images on an AMD Zen 3 (reported), 95%
# (ONNX Runtime) and 83% (OpenVINO) on an emulated AVX2 CPU. With 7-bit weights
# (|w| <= 64) a pair sums to at most 2 x 255 x 64 = 32,640 < 32,767: exact on every x86 CPU, at the cost of one
# bit of weight resolution (docs/benchmarks.md, "int8 on every x86 CPU"). 8 bits is for files that only ever run
# on CPUs with VNNI (VPDPBUSD accumulates in int32).
WEIGHT_BITS = (7, 8)


def calibration_images(model: nn.Module, folder: str | os.PathLike | None, count: int,
                       size: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """Up to ``count`` preprocessed images (C, H, W) of ``folder`` (searched recursively; None: the digits'
    training split) to calibrate on, at the model's input size or ``size`` (height, width): spread evenly over
    the sorted files, never one that :func:`held_out_images` checks on."""
    return _read(model, folder, size, _split(_count(folder), count)[0])


def held_out_images(model: nn.Module, folder: str | os.PathLike | None, count: int,
                    size: tuple[int, int] | None = None) -> tuple[list[torch.Tensor], bool]:
    """(images, held out): the images of ``folder`` an int8 file is checked on after calibrating on ``count``
    (:func:`calibration_images`): up to ``CHECK_IMAGES`` others; a folder too small to spare any (under 8
    images) gives its calibration images, and False."""
    calibrate, check = _split(_count(folder), count)
    return (_read(model, folder, size, check), True) if check else (_read(model, folder, size, calibrate), False)


def _split(n: int, count: int) -> tuple[list[int], list[int]]:
    """(calibration, check) indices into ``n`` sorted files: disjoint, each spread evenly over the files. Up to
    ``CHECK_IMAGES`` are held out; a folder with fewer than ``count`` + ``CHECK_IMAGES`` files holds out a
    quarter of them (so 80 images calibrate on 60 and check on 20), one with under 8 none."""
    check = CHECK_IMAGES if n >= count + CHECK_IMAGES else (min(CHECK_IMAGES, n // 4) if n >= 8 else 0)
    picks = _spread(n, min(n, count + check))
    held = set(_spread(len(picks), check))
    calibrate = [p for j, p in enumerate(picks) if j not in held]
    return [calibrate[j] for j in _spread(len(calibrate), count)], [picks[j] for j in sorted(held)]


def _paths(folder: str | os.PathLike) -> list[Path]:
    from .predict import expand_inputs

    folder = Path(folder)
    if not folder.is_dir():
        raise EfficientViMError(f"calibration folder {folder} not found: pass a folder of images")
    paths = expand_inputs([folder])
    if len(paths) < 2:
        raise EfficientViMError(f"calibration folder {folder} holds {len(paths)} images: give it at least 2 "
                                f"(a few hundred typical ones are best)")
    return paths


def _count(folder: str | os.PathLike | None) -> int:
    if folder is None:
        from .data import digits_split

        return len(digits_split()["train"])
    return len(_paths(folder))


def _read(model: nn.Module, folder: str | os.PathLike | None, size: tuple[int, int] | None, picks: list[int]
          ) -> list[torch.Tensor]:
    from .images import read_image
    from .predict import make_transform

    transform = make_transform(model, size)
    if folder is None:
        from .data import DigitsDataset

        digits = DigitsDataset("train")
        return [transform(digits.images[i]) for i in picks]
    paths = _paths(folder)
    return [transform(read_image(paths[i])) for i in picks]


def _spread(n: int, count: int) -> list[int]:
    """Up to ``count`` indices spread evenly over range(n), in a fixed order."""
    if count >= n:
        return list(range(n))
    return [int(i * n / count) for i in range(count)]


def _batches(images: Sequence[torch.Tensor], size: int = 16) -> Iterator[np.ndarray]:
    for i in range(0, len(images), size):
        yield torch.stack(images[i : i + size]).numpy()


def quantize_onnx(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, images: Sequence[torch.Tensor],
                  weight_bits: int = 7, ops: Sequence[str] = QUANTIZED_OPS) -> None:
    """Static QDQ quantization of an ONNX file whose input is ``images``, calibrated on ``images``; weights in
    ``weight_bits`` (``WEIGHT_BITS``: 7 runs exactly on every x86 CPU, 8 only on CPUs with VNNI); ``ops``: the
    ONNX op types quantized (``benchmarks/int8_softmax.py`` adds Softmax)."""
    if weight_bits not in WEIGHT_BITS:
        raise ExportError(f"int8 weights take {' or '.join(map(str, WEIGHT_BITS))} bits, not {weight_bits}")
    quant = import_extra("onnxruntime.quantization", "onnx", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = _batches(images)

    class Reader(quant.CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"images": batch}

    fp32_path, int8_path = Path(fp32_path).resolve(), Path(int8_path).resolve()
    # in a scratch folder: ONNX Runtime's shape inference writes weight files to the working directory and
    # leaves them there when it fails (seen with EfficientViT)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference and graph clean-up, as ORT advises
        quant.quantize_static(
            str(prepared), str(int8_path), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
            activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
            op_types_to_quantize=list(ops), calibrate_method=quant.CalibrationMethod.MinMax,
            reduce_range=weight_bits == 7,
        )


def top1_agreement(reference: nn.Module, run, images: Sequence[torch.Tensor]) -> float:
    """Percent of ``images`` on which ``run`` (numpy batch -> logits) and ``reference`` pick the same class."""
    agree = 0
    for batch in _batches(images):
        with torch.no_grad():
            expected = reference(torch.from_numpy(batch)).argmax(1).numpy()
        agree += int((np.asarray(run(batch)).argmax(1) == expected).sum())
    return 100.0 * agree / len(images)


def quantize_pt2e(model: nn.Module, calibration: str | os.PathLike | None = None,
                  count: int = CALIBRATION_IMAGES) -> nn.Module:
    """An int8 copy of ``model`` for PyTorch on x86 CPUs, by PyTorch 2 export quantization.

    The fused NCHW graph is exported (``torch.export``, batch, height and width dynamic), quantized by
    torchao's X86 Inductor quantizer (int8 weights per output channel, uint8 activations: what oneDNN's VNNI
    and AMX kernels run), calibrated on ``count`` images of ``calibration`` (as :func:`calibration_images`
    reads it), and compiled by Inductor with frozen weights, which lowers the quantize / dequantize pairs into
    int8 convolutions and matrix products. Takes float32 NCHW images and returns logits; the first call of
    each input shape compiles (tens of seconds). Sides are free above the total stride (65 px and more); a
    model made for exactly the stride (64 px) takes that size only.
    torchao comes with the ``[executorch]`` extra.
    """
    import_extra("torchao", "executorch", "PT2E int8 quantization")
    from torch.fx.experimental import _config as fx_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    from .deploy import export_graph

    reference, graph = export_graph(model)
    images = calibration_images(reference, calibration, count)
    stride = reference.total_stride
    # sides from stride + 1: at exactly the stride the last map is 1 x 1, which export traces apart; a model
    # made for that size (the digits model) keeps it fixed
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    for axis, side in ((2, "height"), (3, "width")):
        if images[0].shape[axis - 1] > stride:
            dims[axis] = torch.export.Dim(side, min=stride + 1, max=16384)
    # size-oblivious: a batch of 1 takes the graph traced at batch 2 (export would otherwise guard on >= 2)
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        exported = torch.export.export(graph, (torch.zeros(2, *images[0].shape),), dynamic_shapes=(dims,)).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for batch in _batches(images):
            prepared(torch.from_numpy(batch))
        converted = convert_pt2e(prepared)
    return _BatchOfTwoAtLeast(torch.compile(converted, options={"freezing": True}))


class _BatchOfTwoAtLeast(nn.Module):
    """Runs a single image as a batch of two copies: the exported graph keeps a guard against batch 1 (its
    traced 0/1 specialisation) that size-oblivious export did not remove."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return self.compiled(x.expand(2, -1, -1, -1))[:1]
        return self.compiled(x)


def quantize_xnnpack(graph: nn.Module, images: list[torch.Tensor], float_boundary: bool = False,
                     batch: int = 1) -> nn.Module:
    """PyTorch 2 export quantization of an exported graph with XNNPACK's quantizer (per-channel symmetric
    int8), calibrated in batches of ``batch`` images, the batch the graph was exported at (the last batch filled
    from the first images). ``float_boundary`` (LiteRT): the graph's input and output and every
    softmax output stay float32 and the weights stay as quantize/dequantize pairs, as litert-torch takes them
    (it folds a quantized input or output into the file's signature, and its int8 softmax has a fixed
    1/256 step)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if float_boundary:
        softmax = (torch.ops.aten.softmax.int, torch.ops.aten._softmax.default)

        def quantized(node) -> bool:
            args = [a for a in node.args if isinstance(a, torch.fx.Node)]
            return not (any(a.op == "placeholder" for a in args)  # the images (weights are attributes)
                        or any(u.op == "output" for u in node.users)
                        or any(a.target in softmax for a in args))

        quantizer.set_filter_function(quantized)
    prepared = prepare_pt2e(graph, quantizer)
    for start in range(0, len(images), batch):
        prepared(torch.stack([images[(start + i) % len(images)] for i in range(batch)]))
    return convert_pt2e(prepared, fold_quantize=not float_boundary)
