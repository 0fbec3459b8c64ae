"""What the fixed-shape formats (ExecuTorch, LiteRT, Core ML) share: the batch-1 sample at the model's size,
int8 calibration at that size, the metadata written beside the file and its check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..deploy import export_graph
from .common import check_sizes, metadata, suffixed
from .verify import verify


def fixed_shape_calibration(reference: nn.Module, sample: torch.Tensor, precision: str,
                             calibration: str | os.PathLike | None) -> tuple[dict, list[torch.Tensor] | None]:
    """(report, calibration images at ``sample``'s size for int8, else None)."""
    if precision != "int8":
        return {}, None
    from ..quantize import CALIBRATION_IMAGES, calibration_images

    images = calibration_images(reference, calibration, CALIBRATION_IMAGES, size=tuple(sample.shape[-2:]))
    return {"calibration_images": len(images)}, images


def fixed_shape_check(reference: nn.Module, path: Path, sample: torch.Tensor, precision: str,
                       calibration: str | os.PathLike | None, report: dict, run, what: str) -> dict:
    """Write the metadata beside ``path`` as .json and check ``run`` (batch-1 tensor -> list of arrays): fp32
    against PyTorch (``error``), int8 by top-1 agreement with fp32 PyTorch on held-out images."""
    meta = {k: json.loads(v) for k, v in metadata(reference).items()}
    meta.update(input_shape=list(sample.shape), precision=precision)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    size = tuple(sample.shape[-2:])
    if precision == "int8":
        from ..quantize import CALIBRATION_IMAGES, held_out_images, top1_agreement

        def batch_run(batch: np.ndarray) -> np.ndarray:  # the file takes one image at a time
            return np.concatenate([run(torch.from_numpy(x[None]))[0] for x in batch])

        check, fresh = held_out_images(reference, calibration, CALIBRATION_IMAGES, size)
        return {**report, "checked_images": len(check), "held_out": fresh,
                "top1_agreement": top1_agreement(reference, batch_run, check)}
    sizes = [(1, *size), (1, *size)]
    return {**report, "error": verify(reference, run, sizes, f"{what} {path}")}


def fixed_shape_export(model: nn.Module, path: str | os.PathLike, suffix: str, what: str, img_size: int | None
                        ) -> tuple[Path, nn.Module, nn.Module, torch.Tensor]:
    """(path, reference, graph, batch-1 sample at the export size) for the formats with a fixed input shape;
    a path without ``suffix`` is refused, naming the one to use."""
    path = suffixed(path, suffix, what)
    reference, graph = export_graph(model)
    _, height, width = check_sizes(reference, img_size)[0]
    return path, reference, graph, torch.zeros(1, reference.in_chans, height, width)
