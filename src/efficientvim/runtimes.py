"""The runtimes a fused classifier runs in for ``predict``, ``eval``, ``embed`` and the demo: PyTorch, ONNX
Runtime and OpenVINO, and ``auto``, the fastest of them installed.

``inference_model(model, runtime, precision)`` is what those commands run: the fused model
(:func:`efficientvim.fuse`) in PyTorch, or the same fused graph written as ONNX (the one writer,
:func:`efficientvim.export.write_onnx`: dynamic batch, height and width; kept in :mod:`.onnx_cache` so that the
next command on the same weights does not trace it again) and run by ONNX Runtime or OpenVINO on the CPU. The
session settings (threads, no spinning, OpenVINO's precision hint) are the benchmark's own, so a command runs
what ``efficientvim bench --runtimes`` timed.

``auto`` (:func:`auto_runtime`) is a rule backed by ``bench`` runs on AMD Zen 4 (docs/benchmarks.md, "The
runtime matrix"): on a CPU, fp32 runs fastest in ONNX Runtime at batch 1 and 32, then OpenVINO, then PyTorch;
bf16 in OpenVINO, then PyTorch (ONNX Runtime's CPU provider has no bf16); on a GPU only PyTorch runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .deploy import PRECISION_DTYPES, fuse
from .errors import EfficientViMError
from .onnx_cache import load_cached_onnx
from .sessions import AUTO_ORDER, missing_modules, onnxruntime_session, openvino_request

INFERENCE_RUNTIMES = ("eager", "onnxruntime", "openvino")
AUTO = "auto"
# what each runtime runs a float model in (int8 needs calibration: `efficientvim export --precision int8`)
INFERENCE_PRECISIONS = {"eager": ("fp32", "bf16"), "onnxruntime": ("fp32",), "openvino": ("fp32", "bf16")}


def auto_runtime(precision: str, device: str = "cpu") -> tuple[str, str]:
    """The runtime ``auto`` picks for ``precision`` on ``device`` (``"cpu"`` or a GPU), and why, in a phrase:
    the first of :data:`AUTO_ORDER` (``efficientvim.sessions``) that is installed on a CPU, PyTorch on a GPU."""
    if device != "cpu":
        return "eager", f"PyTorch is the runtime here that runs on {device}"
    order = AUTO_ORDER[precision]
    for runtime in order:
        if not missing_modules(runtime):
            skipped = [f"{r} is not installed" for r in order[: order.index(runtime)]]
            why = f"the fastest {precision} runtime on a CPU" if not skipped else \
                f"the fastest {precision} runtime installed ({'; '.join(skipped)})"
            return runtime, why
    raise AssertionError("eager is always installed")


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
        self._run = load_cached_onnx(  # the runtimes read the file in full when they load it
            model.cpu(), size, lambda path: write_onnx(fuse(model, layout=EXPORT_LAYOUT), path, size),
            lambda path: self._runner(path, runtime, precision, threads))

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
    if runtime == AUTO:
        runtime = "eager"  # auto picks among the runtimes that run the precision; eager runs them all
    if runtime not in INFERENCE_RUNTIMES:
        raise EfficientViMError(
            f"unknown runtime {runtime!r}: choose from {', '.join((AUTO, *INFERENCE_RUNTIMES))}")
    if precision not in INFERENCE_PRECISIONS[runtime]:
        raise EfficientViMError(
            f"--runtime {runtime} runs {' or '.join(INFERENCE_PRECISIONS[runtime])}, not {precision}; int8: write "
            "the model once with `efficientvim export --precision int8` (calibrated) and run that file")


def inference_model(model: nn.Module, runtime: str = "eager", precision: str = "fp32",
                    threads: int | None = None) -> nn.Module:
    """``model`` ready for inference in ``runtime`` (``INFERENCE_RUNTIMES`` or ``"auto"``) and ``precision``: fused in
    PyTorch, or a :class:`FileRuntimeModel`. ``precision`` must be one the runtime runs
    (``INFERENCE_PRECISIONS``) and, for bf16, one the device has natively (the caller checks that)."""
    if runtime == AUTO:
        runtime = auto_runtime(precision, next(model.parameters()).device.type)[0]
    check_runtime_precision(runtime, precision)
    if runtime == "eager":
        return fuse(model, dtype=PRECISION_DTYPES[precision])
    if next(model.parameters()).device.type != "cpu":
        raise EfficientViMError(f"--runtime {runtime} runs on the CPU: use --runtime eager on the GPU")
    return FileRuntimeModel(model, runtime, precision, threads)
