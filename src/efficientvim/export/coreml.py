"""Core ML ML Programs through torch.export; checked on macOS only (Core ML predicts nowhere else)."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import import_extra
from .common import metadata, native_stderr_silenced, written_whole
from .fixed_shape import fixed_shape_export
from .verify import agreement, verify


@written_whole
def export_coreml(model: nn.Module, path: str | os.PathLike, img_size: int | None = None, precision: str = "fp32"
                  ) -> dict:
    """Write ``model`` (fused, NCHW formulation) as a Core ML ML Program (``.mlpackage``) through torch.export.

    ``precision``: ``fp32`` or ``fp16`` (Core ML's compute precision; fp16 is what the Neural Engine runs).
    The input is fixed at batch 1 and the model's size (or ``img_size``), named ``images``; the metadata
    (preprocessing, class names) is the package's user-defined metadata. Only standard ops are used (the
    LayerNorm is Core ML's own ``layer_norm``). Core ML predicts on macOS only: there the package is checked
    against PyTorch (``{"verified": True, "error": ...}``); elsewhere it is converted and not checked
    (``{"verified": False}``), and the caller says so.
    """
    import platform

    with native_stderr_silenced():  # coremltools reports its missing macOS-only libraries on import
        ct = import_extra("coremltools", "coreml", "Core ML export")
    path, reference, graph, sample = fixed_shape_export(model, path, ".mlpackage", "a Core ML ML Program", img_size)
    height, width = sample.shape[-2:]
    compute = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}[precision]
    with warnings.catch_warnings(), torch.no_grad(), native_stderr_silenced():  # its progress bars
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, (sample,)).run_decompositions({})
        converted = ct.convert(program, inputs=[ct.TensorType(name="images", shape=sample.shape)],
                               compute_precision=compute, minimum_deployment_target=ct.target.iOS17)
    for key, value in {**metadata(reference), "precision": json.dumps(precision)}.items():
        converted.user_defined_metadata[key] = value
    converted.save(str(path))
    if platform.system() != "Darwin":
        return {"verified": False}
    output = converted.get_spec().description.output[0].name
    sizes = [(1, height, width), (1, height, width)]
    def run(x: torch.Tensor) -> list[np.ndarray]:
        return [np.asarray(converted.predict({"images": x.numpy()})[output])]

    if precision == "fp16":  # fp16 keeps 11 bits: checked by top-1 class, not to float32 rounding
        return {"verified": True, "top1_agreement": agreement(reference, run, sizes)}
    return {"verified": True, "error": verify(reference, run, sizes, f"Core ML export {path}")}
