"""ExecuTorch programs with the XNNPACK delegate, fp32 or int8 (PT2E), checked in ExecuTorch's runtime."""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from ..errors import import_extra
from ..quantize import quantize_xnnpack
from .common import native_stderr_silenced, outputs, written_whole
from .fixed_shape import fixed_shape_calibration, fixed_shape_check, fixed_shape_export


@written_whole
def export_executorch(
    model: nn.Module, path: str | os.PathLike, img_size: int | None = None, precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
) -> dict:
    """Write ``model`` (fused, NCHW formulation) as an ExecuTorch program with the XNNPACK delegate.

    The input shape is fixed, batch 1 at the model's size (or ``img_size``): XNNPACK lowering of this graph
    refused symbolic batch and image sizes. ``precision="int8"``: PyTorch 2 export quantization with
    XNNPACK's quantizer (per-channel symmetric int8 weights, int8 activations), calibrated on
    ``calibration`` as :mod:`efficientvim.quantize` reads it. Checked in ExecuTorch's own runtime: fp32
    against PyTorch within ``EXPORT_TOLERANCE`` (``{"error": ...}``), int8 by top-1 agreement with fp32
    PyTorch on held-out images. Programs hold no free-form metadata: it is written beside as ``.json``.
    """
    path, reference, graph, sample = fixed_shape_export(model, path, ".pte", "an ExecuTorch program", img_size)
    report, images = fixed_shape_calibration(reference, sample, precision, calibration)
    program, outside = lower_executorch(graph, sample, images)
    path.write_bytes(program)
    report["outside_xnnpack"] = outside
    method = load_executorch(path)
    return fixed_shape_check(reference, path, sample, precision, calibration, report,
                              lambda x: outputs(method.execute([x])), "ExecuTorch export")


def executorch_modules():
    with native_stderr_silenced():  # torchao, imported by executorch, logs a deprecation note of torch's
        import_extra("executorch", "executorch", "ExecuTorch export")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
    return XnnpackPartitioner, to_edge_transform_and_lower, Runtime


def lower_executorch(graph: nn.Module, sample: torch.Tensor, images: list[torch.Tensor] | None = None
                     ) -> tuple[bytes, dict[str, int]]:
    """The ExecuTorch program (XNNPACK delegate) of ``graph`` at ``sample``'s fixed shape, int8 by PT2E
    calibrated on ``images`` when given, and the operators left outside XNNPACK (op name -> count: they
    run on ExecuTorch's portable kernels, far slower). The one lowering: export and the benchmark use it."""
    partitioner, lower, _ = executorch_modules()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, (sample,))
        if images is not None:
            program = torch.export.export(quantize_xnnpack(program.module(), images, batch=sample.shape[0]), (sample,))
        edge = lower(program, partitioner=[partitioner()])
        outside: dict[str, int] = {}
        for node in edge.exported_program().graph_module.graph.nodes:
            name = getattr(node.target, "__name__", str(node.target))  # e.g. aten.native_layer_norm.default
            if node.op == "call_function" and name != "getitem" and "delegate" not in name:
                op = name.split(".")[1] if name.count(".") >= 2 else name
                outside[op] = outside.get(op, 0) + 1
        return edge.to_executorch().buffer, outside


def load_executorch(path: str | os.PathLike):
    """The ``forward`` method of a .pte file in ExecuTorch's runtime (``method.execute([x])``)."""
    _, _, runtime = executorch_modules()
    with native_stderr_silenced():  # the runtime's CPU probing prints to stderr on every machine
        return runtime.get().load_program(str(path)).load_method("forward")
