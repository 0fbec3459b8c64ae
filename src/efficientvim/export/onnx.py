"""ONNX: the one ONNX writer (dynamic batch, height and width), metadata in the file, checked in ONNX Runtime;
fp16 files for GPUs, and int8 QDQ files by :mod:`efficientvim.quantize`."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from timm.models import FeatureInfo
from torch import nn

from ..deploy import export_graph
from ..errors import ExportError, import_extra
from ..quantize import CALIBRATION_IMAGES
from .common import MIN_OPSET, check_precision, check_sizes, metadata, written_whole
from .verify import verify


def output_names(graph: nn.Module) -> list[str]:
    info = getattr(graph, "feature_info", None)
    if isinstance(info, FeatureInfo):  # a feature extractor (ours fused or not, or timm's): maps by stride
        return [f"stride{r}" for r in info.reduction()]
    if hasattr(graph, "out_indices"):  # a pyramid over one: its levels in order
        return [f"level{i}" for i in range(len(graph.out_indices))]
    return ["logits"]


def write_onnx(graph: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (224, 224),
               opset: int = MIN_OPSET) -> None:
    """Trace ``graph`` (a model taking NCHW images) to ONNX with dynamic batch, height and width, unchecked.

    The one ONNX writer: :func:`export_onnx` adds metadata and verification on top, the benchmark
    times the file as written. Outputs are ``logits`` or, for a feature extractor, ``stride{r}`` per map.
    """
    names = output_names(graph)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch"} if n == "logits" else {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names})
    sample = torch.zeros(1, getattr(graph, "in_chans", 3), *size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is the legacy path
        torch.onnx.export(
            graph, (sample,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
            output_names=names, dynamic_axes=dynamic, do_constant_folding=True,
        )


@written_whole
def export_onnx(
    model: nn.Module, path: str | os.PathLike, opset: int = MIN_OPSET, img_size: int | None = None,
    precision: str = "fp32",
) -> float:
    """Write ``model`` (fused first) as ONNX with dynamic batch, height and width; return the verified error.

    The file is checked with ONNX Runtime against the PyTorch model on a square and a non-square
    batch; :class:`ExportError` if it is off by more than ``EXPORT_TOLERANCE``. ``precision="fp16"``:
    weights and computation in float16 (half the file; for GPUs, ONNX Runtime's CUDA or TensorRT provider),
    float32 images in and logits out; checked in ONNX Runtime's CPU provider to twice the model's own
    fp16 error (see ``verify``).
    """
    import_extra("onnx", "onnx", "ONNX export")
    ort = import_extra("onnxruntime", "onnx", "Checking an ONNX export")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    check_precision(precision, "onnx")
    reference, graph = export_graph(model, precision)
    sizes = check_sizes(reference, img_size)
    path = Path(path)
    write_onnx(graph, path, sizes[0][1:], opset)
    set_onnx_metadata(path, {**metadata(reference), "precision": json.dumps(precision)})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return verify(reference, lambda x: session.run(None, {"images": x.numpy()}), sizes, f"ONNX export {path}",
                   precision)


def set_onnx_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Make ``metadata`` the ONNX file's metadata properties (what OnnxPredictor reads), in place."""
    onnx = import_extra("onnx", "onnx", "ONNX export")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


@written_whole
def export_onnx_int8(
    model: nn.Module,
    path: str | os.PathLike,
    calibration: str | os.PathLike | None = None,
    count: int = CALIBRATION_IMAGES,
    opset: int | None = None,
    check: bool = True,
    weight_bits: int = 7,
) -> dict:
    """Write ``model`` as an int8 QDQ ONNX file calibrated on ``calibration``, weights in ``weight_bits``
    (``WEIGHT_BITS``); return ``calibration_images``, ``weight_bits`` and, with ``check`` (a caller that checks
    the file in another runtime passes False), ``checked_images``, ``held_out`` and ``top1_agreement`` (%) with
    the float32 PyTorch model in ONNX Runtime."""
    import_extra("onnx", "onnx", "ONNX export")
    ort = import_extra("onnxruntime", "onnx", "Checking an ONNX export")
    from ..quantize import calibration_images, held_out_images, quantize_onnx, top1_agreement

    reference, graph = export_graph(model)
    if not getattr(reference, "num_classes", 0):
        raise ExportError("int8 export checks top-1 agreement: it takes a classifier with classes")
    images = calibration_images(reference, calibration, count)
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        write_onnx(graph, fp32, tuple(images[0].shape[-2:]), opset or MIN_OPSET)
        quantize_onnx(fp32, path, images, weight_bits)
    calibrated = f"{len(images)} images of {calibration or 'the digits training split'}"
    set_onnx_metadata(path, {**metadata(reference), "precision": json.dumps("int8"),
                             "calibration": json.dumps(calibrated), "weight_bits": json.dumps(weight_bits)})
    report = dict(calibration_images=len(images), weight_bits=weight_bits)
    if check:
        held_out, fresh = held_out_images(reference, calibration, count)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {"images": batch})[0]

        report.update(checked_images=len(held_out), held_out=fresh,
                      top1_agreement=top1_agreement(reference, run, held_out))
    return report


def weights_phrase(report: dict) -> str:
    """Which int8 weights were written and where they run exactly (``efficientvim.quantize.WEIGHT_BITS``)."""
    where = "exact on every x86 CPU" if report["weight_bits"] == 7 else "exact only on CPUs with VNNI"
    return f"{report['weight_bits']}-bit weights, {where}"
