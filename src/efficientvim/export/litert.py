"""LiteRT (TensorFlow Lite) flatbuffers through litert-torch, fp32 or int8, checked in LiteRT's interpreter."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import nn

from ..errors import import_extra
from ..quantize import quantize_xnnpack
from .common import native_stderr_silenced, written_whole
from .fixed_shape import fixed_shape_calibration, fixed_shape_check, fixed_shape_export


@written_whole
def export_litert(
    model: nn.Module, path: str | os.PathLike, img_size: int | None = None, precision: str = "fp32",
    calibration: str | os.PathLike | None = None,
) -> dict:
    """Write ``model`` (fused, NCHW formulation) as a LiteRT (TensorFlow Lite) flatbuffer through litert-torch.

    The input shape is fixed, batch 1 at the model's size (or ``img_size``): litert-torch's lowering of this
    graph failed with symbolic sizes. The file takes and returns float32 (NCHW images, logits), so any
    LiteRT interpreter runs it as it runs the float model. ``precision="int8"``: PyTorch 2 export
    quantization with XNNPACK's quantizer (per-channel symmetric int8 weights, int8 activations), calibrated
    on ``calibration``; the first layer's input, the logits and the softmax over tokens stay float32 (LiteRT's
    int8 softmax has a fixed output step of 1/256, coarser than a distribution over hundreds of tokens).
    Checked in LiteRT's interpreter: fp32 against PyTorch within ``EXPORT_TOLERANCE``, int8 by top-1
    agreement with fp32 PyTorch on held-out images. The metadata is written beside as ``.json``.
    """
    path, reference, graph, sample = fixed_shape_export(model, path, ".tflite", "a LiteRT model", img_size)
    report, images = fixed_shape_calibration(reference, sample, precision, calibration)
    path.write_bytes(lower_litert(graph, sample, images))
    run = load_litert(path)
    return fixed_shape_check(reference, path, sample, precision, calibration, report, lambda x: [run(x.numpy())],
                              "LiteRT export")


def litert_module():
    with native_stderr_silenced():  # TensorFlow Lite's and JAX's start-up notes
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        litert_torch = import_extra("litert_torch", "litert", "LiteRT export")
        from litert_torch import _config

        _config.config.show_progress = False  # its per-pass progress lines
    return litert_torch


def lower_litert(graph: nn.Module, sample: torch.Tensor, images: list[torch.Tensor] | None = None) -> bytes:
    """The LiteRT flatbuffer of ``graph`` at ``sample``'s fixed shape, int8 by PT2E calibrated on ``images``
    when given. The one conversion: export and the benchmark use it."""
    litert_torch = litert_module()
    quant_config = None
    with warnings.catch_warnings(), torch.no_grad(), native_stderr_silenced():
        warnings.simplefilter("ignore")
        if images is not None:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig

            program = torch.export.export(graph, (sample,)).module()
            graph = quantize_xnnpack(program, images, float_boundary=True, batch=sample.shape[0])
            # litert-torch reads only the mode (static int8) from its own quantizer's config
            static = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            quant_config = QuantConfig(pt2e_quantizer=static)
        return litert_torch.convert(graph, (sample,), quant_config=quant_config).model_content()


def load_litert(path: str | os.PathLike, threads: int | None = None):
    """A function running a .tflite file in LiteRT's interpreter (XNNPACK on CPU): float32 NCHW batch in
    (numpy, the file's own shape), first output out as float32; int8 inputs and outputs, as other tools
    write them, are quantized and dequantized with the file's own scales."""
    with native_stderr_silenced():  # the interpreter announces its XNNPACK delegate
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    (source,), output = interpreter.get_input_details(), interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        if source["dtype"] != np.float32:
            scale, zero = source["quantization"]
            info = np.iinfo(source["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(source["dtype"])
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(output["index"])
        if output["dtype"] != np.float32:
            scale, zero = output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y

    return run
