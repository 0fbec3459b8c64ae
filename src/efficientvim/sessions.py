"""The inference sessions of the file runtimes, as ``bench`` times them and the commands run them: ONNX Runtime and
OpenVINO on the CPU. Nothing here imports torch (:class:`efficientvim.onnx_predictor.OnnxPredictor` uses it)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import import_extra

# what each file runtime needs installed (the ONNX file it runs, and the runtime), and the extra that installs it
RUNTIME_EXTRAS = {"onnxruntime": (("onnx", "onnxruntime"), "onnx"), "openvino": (("onnx", "openvino"), "openvino")}
# --runtime auto's preference on a CPU, fastest first, per precision (the rule docs/benchmarks.md's matrix backs); here,
# beside what each runtime needs, so the torch-free OnnxPredictor follows it too
AUTO_ORDER = {"fp32": ("onnxruntime", "openvino", "eager"), "bf16": ("openvino", "eager")}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    from importlib.util import find_spec

    return find_spec(module) is not None


def missing_modules(runtime: str) -> list[str]:
    """The modules ``runtime`` needs that are not installed (none for eager)."""
    return [m for m in RUNTIME_EXTRAS.get(runtime, ((), None))[0] if not installed(m)]


def onnxruntime_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path`` on ``threads`` threads (default: ONNX Runtime's choice), all graph
    optimisations, idle threads sleeping instead of spinning (they would take the cores from image decoding or
    other processes)."""
    ort = import_extra("onnxruntime", "onnx", "The onnxruntime runtime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def openvino_request(path: str | os.PathLike, threads: int | None = None, precision: str = "fp32"):
    """An OpenVINO CPU infer request of the ONNX or IR file ``path`` on ``threads`` threads (default: OpenVINO's
    choice); ``precision`` is the inference hint (OpenVINO would otherwise choose bf16 by itself on CPUs that
    have it)."""
    ov = import_extra("openvino", "openvino", "The openvino runtime")
    hint = "bf16" if precision == "bf16" else "f32"
    core = ov.Core()
    # an IR (.xml) is read as written; an ONNX file goes through OpenVINO's converter
    model = core.read_model(str(path)) if Path(path).suffix == ".xml" else ov.convert_model(str(path))
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    return compiled.create_infer_request()
