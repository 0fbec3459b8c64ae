"""What every exporter shares: the precisions each format writes, the metadata a file carries, the sizes it
is checked at, file names, and silencing the native libraries' own prints."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ..errors import ExportError, InputSizeError
from ..predict import class_names
from ..writing import staging

Export = TypeVar("Export", bound=Callable)

EXPORT_TOLERANCE = 1e-4  # largest accepted max|export - pytorch| / max|pytorch|


# files computing in half precision, float32 in and out: which formats write each (the others say so)
LOW_PRECISION_FORMATS = {"fp16": ("onnx", "torchscript", "openvino", "coreml"), "bf16": ("torchscript",)}


LOW_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


# largest relative error of the model itself in fp16/bf16 for which a file in that precision is written: beyond
# it the precision does not hold the model's values (default-initialised trunks end in maps of 1e-10, below
# fp16's range), and twice that error would pass any file
LOW_PRECISION_LIMIT = 0.1


MIN_OPSET = 17


METADATA_KEYS = ("model_name", "input_size", "mean", "std", "crop_pct", "interpolation", "label_names")


@contextlib.contextmanager
def native_stderr_silenced():
    """File descriptor 2 sent to /dev/null: native libraries that print what no setting turns off (the
    PyTorch profiler's Kineto lines, ExecuTorch's CPU probing) stay quiet; Python errors still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def written_whole(export: Export) -> Export:
    """An exporter ``export(model, path, ...)`` whose files (the export, the .bin or .json beside it, a .mlpackage
    folder) replace those of the same names only once it has returned, its check passed: it writes into a
    private folder beside ``path`` (:func:`efficientvim.writing.staging`), so a failed check, a full disk or a
    signal leaves an earlier file as it was and nothing half-written at the name."""

    @functools.wraps(export)
    def whole(model: nn.Module, path: str | os.PathLike, *args, **kwargs):
        path = Path(path)
        with staging(path.parent, path) as private:
            return export(model, private / path.name, *args, **kwargs)

    return whole  # type: ignore[return-value]


def metadata(model: nn.Module) -> dict[str, str]:
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg["model_name"] = getattr(model, "model_name", type(model).__name__)
    if getattr(model, "num_classes", 0):
        cfg["label_names"] = class_names(model)
    return {k: json.dumps(cfg.get(k)) for k in METADATA_KEYS}


def check_sizes(model: nn.Module, img_size: int | None) -> list[tuple[int, int, int]]:
    """(batch, height, width) of the verification inputs: square at the model size, and non-square."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = img_size or cfg.get("input_size", (3, 224, 224))[-1]
    stride = model.total_stride
    if size < stride:
        raise InputSizeError(
            f"image size {size} is smaller than the network's total stride {stride}: use {stride} or more"
        )
    size = max(stride, size // stride * stride)
    return [(1, size, size), (2, size, size + stride)]


def outputs(y: torch.Tensor | list | tuple) -> list[np.ndarray]:
    return [t.detach().float().cpu().numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]


def suffixed(path: str | os.PathLike, suffix: str, what: str) -> Path:
    """``path``, refused with the name to use when it lacks ``suffix``."""
    path = Path(path)
    if path.suffix != suffix:
        raise ExportError(f"{what} is a {suffix} file: name it {path.stem}{suffix}")
    return path


def check_precision(precision: str, fmt: str) -> None:
    if precision != "fp32" and fmt not in LOW_PRECISION_FORMATS.get(precision, ()):
        formats = ", ".join(LOW_PRECISION_FORMATS.get(precision, ())) or "none of the formats"
        raise ExportError(f"{fmt} export in {precision}: written for {formats}")
