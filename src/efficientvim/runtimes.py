"""The runtimes a fused classifier runs in for ``predict`` and ``eval``: PyTorch, ONNX Runtime and OpenVINO.

``inference_model(model, runtime, precision)`` is what those commands run: the fused model
(:func:`efficientvim.fuse`) in PyTorch, or the same fused graph written to a temporary ONNX file (the one
writer, :func:`efficientvim.export.write_onnx`: dynamic batch, height and width) and run by ONNX Runtime or
OpenVINO on the CPU. The session settings (threads, no spinning, OpenVINO's precision hint) are the
benchmark's own, so a command runs what ``efficientvim bench --runtimes`` timed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .deploy import PRECISION_DTYPES, fuse
from .errors import EfficientViMError
from .export.onnx import onnxruntime_session
from .export.openvino import openvino_request

INFERENCE_RUNTIMES = ("eager", "onnxruntime", "openvino")
# what each runtime runs a float model in (int8 needs calibration: `efficientvim export --precision int8`)
INFERENCE_PRECISIONS = {"eager": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


class FileRuntimeModel(nn.Module):
    """A classifier run by ONNX Runtime or OpenVINO: float32 image batches in, float32 logits out, as the
    model; it keeps the model's ``pretrained_cfg``, ``num_classes``, ``model_name`` and ``total_stride``
    (preprocessing, class names and the smallest image it takes)."""

    def __init__(self, model: nn.Module, runtime: str, precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__()
        from .export import EXPORT_LAYOUT, write_onnx

        for name in ("pretrained_cfg", "num_classes", "model_name", "total_stride", "in_chans"):
            setattr(self, name, getattr(model, name))
        self.runtime, self.precision = runtime, precision
        threads = threads or torch.get_num_threads()
        size = tuple(model.pretrained_cfg["input_size"][-2:])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            write_onnx(fuse(model.cpu(), layout=EXPORT_LAYOUT), path, size)
            self._run = self._runner(path, runtime, precision, threads)  # the file is read in full here

    @staticmethod
    def _runner(path: Path, runtime: str, precision: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
        if runtime == "onnxruntime":
            session = onnxruntime_session(path, threads)
            return lambda x: session.run(None, {"images": x})[0]
        request = openvino_request(path, threads, precision)
        return lambda x: request.infer({0: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.array(self._run(x.detach().float().cpu().numpy()))).to(x.device)


def check_runtime_precision(runtime: str, precision: str) -> None:
    """Raise unless ``runtime`` runs ``precision`` (``INFERENCE_PRECISIONS``): the same answer on every CPU, asked
    before whether this CPU has the precision natively (where it does not, a runtime that takes it runs fp32)."""
    if runtime not in INFERENCE_RUNTIMES:
        raise EfficientViMError(f"unknown runtime {runtime!r}: choose from {', '.join(INFERENCE_RUNTIMES)}")
    if precision not in INFERENCE_PRECISIONS[runtime]:
        raise EfficientViMError(
            f"--runtime {runtime} runs {' or '.join(INFERENCE_PRECISIONS[runtime])}, not {precision}; int8: write "
            "the model once with `efficientvim export --precision int8` (calibrated) and run that file")


def inference_model(model: nn.Module, runtime: str = "eager", precision: str = "fp32",
                    threads: int | None = None) -> nn.Module:
    """``model`` ready for inference in ``runtime`` (``INFERENCE_RUNTIMES``) and ``precision``: fused in
    PyTorch, or a :class:`FileRuntimeModel`. ``precision`` must be one the runtime runs
    (``INFERENCE_PRECISIONS``) and, for bf16, one the device has natively (the caller checks that)."""
    check_runtime_precision(runtime, precision)
    if runtime == "eager":
        return fuse(model, dtype=PRECISION_DTYPES[precision])
    if next(model.parameters()).device.type != "cpu":
        raise EfficientViMError(f"--runtime {runtime} runs on the CPU: use --runtime eager on the GPU")
    return FileRuntimeModel(model, runtime, precision, threads)
