"""The formats, by name: how each is written and read back, and what it takes. The command line, the
benchmark and the runtimes read this table; adding a format is one module of ``efficientvim.export`` and one
line here.

``Format.write(model, path, precision, calibration, img_size, opset)`` writes the file, checks it in its runtime
and returns the report the command line prints: ``what`` (the file in words), ``runtime`` (where it was
checked), and either ``error`` (largest relative error against PyTorch), or ``top1_agreement`` with
``checked_images`` and ``held_out`` (and ``calibration_images`` for int8), or ``verified: False``; ``notes``
for stderr.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..sessions import onnxruntime_session, openvino_request
from .common import MIN_OPSET
from .coreml import export_coreml
from .executorch import export_executorch, load_executorch
from .litert import export_litert, load_litert
from .onnx import export_onnx, export_onnx_int8, weights_phrase
from .openvino import export_openvino
from .torchscript import export_torchscript


@dataclass(frozen=True)
class Format:
    suffix: str  # the file name's suffix (the others say which to use)
    extra: str  # the pip extra that brings its writer and runtime
    precisions: tuple[str, ...]
    write: Callable[..., dict]
    # path -> run(float32 NCHW numpy images) -> first output as numpy, in the format's runtime; None: not on
    # this kind of machine
    load: Callable[[str | os.PathLike], Callable] | None


def _onnx(model: nn.Module, path: Path, precision: str = "fp32", calibration=None, img_size=None,
          opset: int = MIN_OPSET) -> dict:
    shape = "dynamic batch/height/width"
    if precision == "int8":
        report = export_onnx_int8(model, path, calibration=calibration, opset=opset)
        return {**report, "what": f"ONNX opset {opset}, int8 QDQ, {weights_phrase(report)}, {shape}",
                "runtime": "ONNX Runtime"}
    error = export_onnx(model, path, opset=opset, img_size=img_size, precision=precision)
    return {"error": error, "what": f"ONNX opset {opset}{_computes(precision)}, {shape}", "runtime": "ONNX Runtime"}


def _torchscript(model: nn.Module, path: Path, precision: str = "fp32", calibration=None, img_size=None,
                 opset: int = MIN_OPSET) -> dict:
    error = export_torchscript(model, path, img_size=img_size, precision=precision)
    return {"error": error, "what": f"TorchScript{_computes(precision)}, dynamic batch/height/width",
            "runtime": "the TorchScript interpreter"}


def _openvino(model: nn.Module, path: Path, precision: str = "fp32", calibration=None, img_size=None,
              opset: int = MIN_OPSET) -> dict:
    report = export_openvino(model, path, precision, calibration, img_size, opset)
    kind = f"from int8 QDQ ONNX, {weights_phrase(report)}" if precision == "int8" else precision
    return {**report, "what": f"OpenVINO IR {kind}, dynamic batch/height/width; weights in {Path(path).stem}.bin",
            "runtime": "OpenVINO's CPU runtime"}


def _fixed(exporter: Callable[..., dict], name: str, runtime: str):
    """The writer of a fixed-shape format (ExecuTorch, LiteRT): its exporter's report with the CLI's words."""

    def write(model: nn.Module, path: Path, precision: str = "fp32", calibration=None, img_size=None,
              opset: int = MIN_OPSET) -> dict:
        report = exporter(model, path, img_size, precision, calibration)
        outside = report.pop("outside_xnnpack", None)
        notes = [f"{sum(outside.values())} operators run outside XNNPACK on ExecuTorch's portable kernels "
                 f"({', '.join(f'{n} {op}' for op, n in sorted(outside.items(), key=lambda kv: -kv[1]))}): expect it "
                 "to be slow (docs/benchmarks.md, ExecuTorch)"] if outside else []
        return {**report, "what": f"{name}, {precision}, input fixed at batch 1; metadata in "
                f"{Path(path).with_suffix('.json').name}", "runtime": runtime, "notes": notes}

    return write


def _coreml(model: nn.Module, path: Path, precision: str = "fp32", calibration=None, img_size=None,
            opset: int = MIN_OPSET) -> dict:
    report = export_coreml(model, path, img_size, precision)
    return {**report, "what": f"Core ML ML Program, {precision}, input fixed at batch 1", "runtime": "Core ML"}


def _computes(precision: str) -> str:
    return f", computes in {precision} with float32 images in and outputs out" if precision != "fp32" else ""


def _load_onnx(path):
    session = onnxruntime_session(path, threads=os.cpu_count() or 1)
    return lambda x: session.run(None, {"images": x})[0]


def _load_torchscript(path):
    module = torch.jit.load(str(path))

    def run(x):
        with torch.no_grad():
            y = module(torch.from_numpy(x))
        return (y[0] if isinstance(y, (list, tuple)) else y).numpy()

    return run


def _load_openvino(path):
    request = openvino_request(path, threads=os.cpu_count() or 1)
    return lambda x: request.infer({0: x})[0]


def _load_executorch(path):
    method = load_executorch(path)
    return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()


FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", "onnx", ("fp32", "fp16", "int8"), _onnx, _load_onnx),
    "torchscript": Format(".pt", "", ("fp32", "fp16", "bf16"), _torchscript, _load_torchscript),
    "openvino": Format(".xml", "openvino", ("fp32", "fp16", "int8"), _openvino, _load_openvino),
    "executorch": Format(".pte", "executorch", ("fp32", "int8"), _fixed(
        export_executorch, "ExecuTorch, XNNPACK delegate", "ExecuTorch's runtime"), _load_executorch),
    "litert": Format(".tflite", "litert", ("fp32", "int8"), _fixed(
        export_litert, "LiteRT flatbuffer", "LiteRT's interpreter"), load_litert),
    "coreml": Format(".mlpackage", "coreml", ("fp32", "fp16"), _coreml, None),  # Core ML predicts on macOS only
}
