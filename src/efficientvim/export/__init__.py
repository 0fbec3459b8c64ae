"""Export to every deployment format, each file checked in its own runtime against PyTorch.

One module per format (``onnx``, ``torchscript``, ``openvino``, ``executorch``, ``litert``, ``coreml``), each a
function ``export_<format>(model, path, ...)`` writing the fused inference graph (:func:`efficientvim.fuse`)
and its runtime loader; one output check (:mod:`.verify`); ``FORMATS`` (:mod:`.registry`) maps a format's name
to its writer, loader and precisions for the command line, the benchmark and the tests. int8 files are
calibrated by :mod:`efficientvim.quantize`, which sits below this package. Preprocessing (input size, mean,
std, crop, interpolation) and class names travel inside each file or beside it, so
:class:`efficientvim.onnx_predictor.OnnxPredictor` and the runtimes need nothing else.
"""

from ..deploy import EXPORT_LAYOUT
from .common import (
    EXPORT_TOLERANCE,
    LOW_PRECISION_FORMATS,
    LOW_PRECISION_LIMIT,
    MIN_OPSET,
    native_stderr_silenced,
)
from .coreml import export_coreml
from .executorch import export_executorch, load_executorch, lower_executorch
from .litert import export_litert, load_litert, lower_litert
from .onnx import export_onnx, export_onnx_int8, set_onnx_metadata, write_onnx
from .openvino import export_openvino
from .registry import FORMATS, Format
from .torchscript import export_torchscript

__all__ = [
    "EXPORT_LAYOUT", "EXPORT_TOLERANCE", "FORMATS", "LOW_PRECISION_FORMATS", "LOW_PRECISION_LIMIT", "MIN_OPSET",
    "Format", "export_coreml", "export_executorch", "export_litert", "export_onnx", "export_onnx_int8",
    "export_openvino", "export_torchscript", "load_executorch", "load_litert", "lower_executorch", "lower_litert",
    "native_stderr_silenced", "set_onnx_metadata", "write_onnx",
]
