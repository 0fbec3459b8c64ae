"""OpenVINO IR, converted from this package's ONNX export and checked in OpenVINO's CPU runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from ..deploy import export_graph
from ..errors import import_extra
from .common import MIN_OPSET, check_precision, check_sizes, suffixed, written_whole
from .onnx import export_onnx
from .verify import verify


@written_whole
def export_openvino(
    model: nn.Module, path: str | os.PathLike, precision: str = "fp32", calibration: str | os.PathLike | None = None,
    img_size: int | None = None, opset: int = MIN_OPSET, weight_bits: int = 7,
) -> dict:
    """Write ``model`` as OpenVINO IR (``path`` .xml and its .bin) with dynamic batch, height and width.

    Converted from this package's ONNX export (verified first; int8: the QDQ model of
    :func:`efficientvim.export.onnx.export_onnx_int8`, which OpenVINO runs as int8), weights kept as exported
    (OpenVINO would otherwise store them as fp16: 1e-3 off; ``precision="fp16"`` asks for that, OpenVINO's
    "FP16 IR", half the file, the runtime choosing the compute precision), with the same metadata in the IR's
    ``rt_info`` under ``efficientvim``. Checked in OpenVINO's CPU runtime: fp32 (f32 inference hint) against
    PyTorch within ``EXPORT_TOLERANCE``, fp16 to twice the model's own fp16 error; int8 by top-1 agreement
    with fp32 PyTorch on held-out images.
    Returns ``{"error": ...}`` or, for int8, the quantization report with OpenVINO's own agreement.
    """
    import tempfile

    ov = import_extra("openvino", "openvino", "OpenVINO export")
    onnx = import_extra("onnx", "onnx", "OpenVINO export (through ONNX)")
    path = suffixed(path, ".xml", "an OpenVINO model (its weights in a .bin beside it)")
    if precision != "int8":
        check_precision(precision, "openvino")
    reference, _ = export_graph(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        if precision == "int8":
            from .onnx import export_onnx_int8

            report = export_onnx_int8(model, onnx_file, calibration=calibration, opset=opset, check=False,
                                      weight_bits=weight_bits)
        else:
            export_onnx(model, onnx_file, opset=opset, img_size=img_size)
            report = {}
        meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
        meta["precision"] = json.dumps(precision)  # of this file (the ONNX in between is float32 unless int8)
        converted = ov.convert_model(str(onnx_file))
    for key, value in meta.items():
        converted.set_rt_info(value, ["efficientvim", key])
    ov.save_model(converted, str(path), compress_to_fp16=precision == "fp16")  # else the weights stay as exported
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    if precision == "int8":
        from ..quantize import CALIBRATION_IMAGES, held_out_images, top1_agreement

        images, fresh = held_out_images(reference, calibration, CALIBRATION_IMAGES)
        agreement = top1_agreement(reference, lambda b: compiled(b)[compiled.outputs[0]], images)
        return {**report, "checked_images": len(images), "held_out": fresh, "top1_agreement": agreement}
    sizes = check_sizes(reference, img_size)
    error = verify(reference, lambda x: [compiled(x.numpy())[o] for o in compiled.outputs], sizes,
                    f"OpenVINO export {path}", "fp16" if precision == "fp16" else "fp32")
    return {"error": error}
