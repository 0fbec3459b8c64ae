"""Export to ONNX and TorchScript, each checked against PyTorch.

Both exports trace the fused inference graph (:func:`efficientvim.fuse`) with dynamic batch,
height and width, then run the written file on a square and a non-square batch and compare it
with the original model before reporting success. Preprocessing (input size, mean, std, crop,
interpolation) and class names (ImageNet's for a 1000-class model without its own, as the command
line shows them) travel inside the file, so :class:`efficientvim.onnx_predictor.OnnxPredictor`
needs nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from timm.models import FeatureInfo
from torch import nn

from .deploy import FusedEfficientViM, FusedEfficientViMFeatures, fuse
from .errors import ExportError, InputSizeError, import_extra
from .predict import class_names

EXPORT_TOLERANCE = 1e-4  # largest accepted max|export - pytorch| / max|pytorch|
# files computing in half precision, float32 in and out: which formats write each (the others say so)
LOW_PRECISION_FORMATS = {"fp16": ("onnx", "torchscript", "openvino", "coreml"), "bf16": ("torchscript",)}
LOW_PRECISION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# largest relative error of the model itself in fp16/bf16 for which a file in that precision is written: beyond
# it the precision does not hold the model's values (default-initialised trunks end in maps of 1e-10, below
# fp16's range), and twice that error would pass any file
LOW_PRECISION_LIMIT = 0.1
MIN_OPSET = 17
EXPORT_LAYOUT = "channels_first"  # ONNX has no strided views: NCHW avoids a transpose around every conv
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


def _metadata(model: nn.Module) -> dict[str, str]:
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg["model_name"] = getattr(model, "model_name", type(model).__name__)
    if getattr(model, "num_classes", 0):
        cfg["label_names"] = class_names(model)
    return {k: json.dumps(cfg.get(k)) for k in METADATA_KEYS}


def _check_sizes(model: nn.Module, img_size: int | None) -> list[tuple[int, int, int]]:
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


def _outputs(y: torch.Tensor | list | tuple) -> list[np.ndarray]:
    return [t.detach().float().cpu().numpy() for t in (y if isinstance(y, (list, tuple)) else [y])]


def _relative(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def _verify(reference: nn.Module, run, sizes: list[tuple[int, int, int]], what: str, precision: str = "fp32"
            ) -> float:
    """Largest relative error of ``run`` (numpy batch -> list of arrays) against ``reference`` in float32.

    The tolerance is ``EXPORT_TOLERANCE`` for a float32 file. A file computing in fp16 or bf16 cannot be
    closer to float32 than the model itself run in that precision, so its tolerance is twice the model's
    own error in it (``reference`` converted with ``.to(dtype)``, on the same images) or ``EXPORT_TOLERANCE``,
    whichever is larger; a model whose own error exceeds ``LOW_PRECISION_LIMIT`` is refused in that precision."""
    worst = own = 0.0
    low = copy.deepcopy(reference).to(LOW_PRECISION_DTYPES[precision]) if precision != "fp32" else None
    g = torch.Generator().manual_seed(0)
    for batch, height, width in sizes:
        x = torch.randn(batch, reference.in_chans, height, width, generator=g)
        with torch.no_grad():
            expected = _outputs(reference(x))
            if low is not None:
                mine = _outputs(low(x.to(LOW_PRECISION_DTYPES[precision])))
                own = max([own] + [_relative(m, e) for m, e in zip(mine, expected)])
        got = run(x)
        if len(got) != len(expected):
            raise ExportError(f"{what} returned {len(got)} outputs, PyTorch {len(expected)}")
        for e, o in zip(expected, got):
            if o.shape != e.shape:
                raise ExportError(f"{what} gave shape {o.shape} for input {tuple(x.shape)}, PyTorch {e.shape}")
            worst = max(worst, _relative(o, e))
    if own > LOW_PRECISION_LIMIT:
        other = "fp32 or bf16" if precision == "fp16" else "fp32"
        raise ExportError(
            f"{what}: the model itself is off by {own:.1e} relative in {precision} (its values leave {precision}'s "
            f"range), so no {precision} file can be checked against it: export it in {other}"
        )
    tolerance = max(EXPORT_TOLERANCE, 2 * own)
    if worst > tolerance:
        why = f"twice the model's own {precision} error" if tolerance > EXPORT_TOLERANCE else "float32"
        raise ExportError(
            f"{what} differs from PyTorch by {worst:.2e} relative (tolerance {tolerance:.0e}: {why}); "
            "the file was written but should not be used"
        )
    return worst


def _prepare(model: nn.Module, precision: str = "fp32") -> tuple[nn.Module, nn.Module]:
    """(reference, graph to trace): a fused model is its own reference. fp16/bf16: the graph computes in
    that dtype and takes and returns float32 (:class:`_FloatInterface`)."""
    if isinstance(model, (FusedEfficientViM, FusedEfficientViMFeatures)):
        reference, graph = model, model
    else:
        reference = copy.deepcopy(model).eval() if model.training else model  # leave the caller's mode alone
        graph = fuse(model, layout=EXPORT_LAYOUT)
    if precision in LOW_PRECISION_DTYPES:
        graph = _FloatInterface(graph, LOW_PRECISION_DTYPES[precision])
    return reference, graph


class _FloatInterface(nn.Module):
    """A fused graph in fp16 or bf16 behind a float32 interface: what a low-precision file holds. The images
    are cast on the way in (the fused model does that itself) and the outputs on the way out, so a user feeds
    and reads float32 as with the float32 file, and the file's runtime computes in the low precision.

    Converted with ``.to(dtype)`` rather than fused in it: the file is for the device that will run it, so
    this machine's lack of native fp16 (which makes ``fuse(dtype=...)`` stay float32) does not apply."""

    def __init__(self, graph: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.graph = copy.deepcopy(graph).to(dtype)
        for name in ("in_chans", "total_stride", "feature_info", "out_indices", "pretrained_cfg", "num_classes"):
            if hasattr(graph, name):
                setattr(self, name, getattr(graph, name))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        y = self.graph(x)
        return [t.float() for t in y] if isinstance(y, (list, tuple)) else y.float()

    def train(self, mode: bool = True) -> _FloatInterface:
        return super().train(False)  # inference-only, like the fused graph inside


def _output_names(graph: nn.Module) -> list[str]:
    info = getattr(graph, "feature_info", None)
    if isinstance(info, FeatureInfo):  # a feature extractor (ours fused or not, or timm's): maps by stride
        return [f"stride{r}" for r in info.reduction()]
    if hasattr(graph, "out_indices"):  # a pyramid over one: its levels in order
        return [f"level{i}" for i in range(len(graph.out_indices))]
    return ["logits"]


def write_onnx(graph: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (224, 224),
               opset: int = MIN_OPSET) -> None:
    """Trace ``graph`` (a model taking NCHW images) to ONNX with dynamic batch, height and width, unchecked.

    The one ONNX writer: :func:`export_onnx` adds metadata and verification on top, the benchmark
    times the file as written. Outputs are ``logits`` or, for a feature extractor, ``stride{r}`` per map.
    """
    names = _output_names(graph)
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch"} if n == "logits" else {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names})
    sample = torch.zeros(1, getattr(graph, "in_chans", 3), *size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is the legacy path
        torch.onnx.export(
            graph, (sample,), str(path), dynamo=False, opset_version=opset, input_names=["images"],
            output_names=names, dynamic_axes=dynamic, do_constant_folding=True,
        )


def export_onnx(
    model: nn.Module, path: str | os.PathLike, opset: int = MIN_OPSET, img_size: int | None = None,
    precision: str = "fp32",
) -> float:
    """Write ``model`` (fused first) as ONNX with dynamic batch, height and width; return the verified error.

    The file is checked with ONNX Runtime against the PyTorch model on a square and a non-square
    batch; :class:`ExportError` if it is off by more than ``EXPORT_TOLERANCE``. ``precision="fp16"``:
    weights and computation in float16 (half the file; for GPUs, ONNX Runtime's CUDA or TensorRT provider),
    float32 images in and logits out; checked in ONNX Runtime's CPU provider to twice the model's own
    fp16 error (see ``_verify``).
    """
    import_extra("onnx", "onnx", "ONNX export")
    ort = import_extra("onnxruntime", "onnx", "Checking an ONNX export")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    _check_precision(precision, "onnx")
    reference, graph = _prepare(model, precision)
    sizes = _check_sizes(reference, img_size)
    path = Path(path)
    write_onnx(graph, path, sizes[0][1:], opset)
    set_onnx_metadata(path, {**_metadata(reference), "precision": json.dumps(precision)})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _verify(reference, lambda x: session.run(None, {"images": x.numpy()}), sizes, f"ONNX export {path}",
                   precision)


def set_onnx_metadata(path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Make ``metadata`` the ONNX file's metadata properties (what OnnxPredictor reads), in place."""
    onnx = import_extra("onnx", "onnx", "ONNX export")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _suffixed(path: str | os.PathLike, suffix: str, what: str) -> Path:
    """``path``, refused with the name to use when it lacks ``suffix``."""
    path = Path(path)
    if path.suffix != suffix:
        raise ExportError(f"{what} is a {suffix} file: name it {path.stem}{suffix}")
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, img_size: int | None = None,
                       precision: str = "fp32") -> float:
    """Write ``model`` (fused first) as a traced TorchScript module; return the verified error.

    The saved file is loaded back and compared with the PyTorch model on a square and a
    non-square batch. Metadata is stored as the extra file ``metadata.json``. ``precision`` fp16 or bf16:
    the module computes in it behind a float32 interface (bf16 for CPUs with AVX512-BF16 or AMX and GPUs,
    fp16 for GPUs), checked to twice the model's own error in that precision.
    """
    _check_precision(precision, "torchscript")
    reference, graph = _prepare(model, precision)
    sizes = _check_sizes(reference, img_size)
    sample = torch.zeros(*sizes[0][:1], reference.in_chans, *sizes[0][1:])
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, checked below instead
        traced = torch.jit.trace(graph, sample, check_trace=False)
        meta = {k: json.loads(v) for k, v in _metadata(reference).items()}
        meta["precision"] = precision
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(meta)})
        loaded = torch.jit.load(str(path))
    return _verify(reference, lambda x: _outputs(loaded(x)), sizes, f"TorchScript export {path}", precision)


def _check_precision(precision: str, fmt: str) -> None:
    if precision != "fp32" and fmt not in LOW_PRECISION_FORMATS.get(precision, ()):
        formats = ", ".join(LOW_PRECISION_FORMATS.get(precision, ())) or "none of the formats"
        raise ExportError(f"{fmt} export in {precision}: written for {formats}")


def export_openvino(
    model: nn.Module, path: str | os.PathLike, precision: str = "fp32", calibration: str | os.PathLike | None = None,
    img_size: int | None = None, opset: int = MIN_OPSET, weight_bits: int = 7,
) -> dict:
    """Write ``model`` as OpenVINO IR (``path`` .xml and its .bin) with dynamic batch, height and width.

    Converted from this package's ONNX export (verified first; int8: the QDQ model of
    :func:`efficientvim.quantize.export_onnx_int8`, which OpenVINO runs as int8), weights kept as exported
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
    path = _suffixed(path, ".xml", "an OpenVINO model (its weights in a .bin beside it)")
    if precision != "int8":
        _check_precision(precision, "openvino")
    reference, _ = _prepare(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        if precision == "int8":
            from .quantize import export_onnx_int8

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
        from .quantize import CALIBRATION_IMAGES, held_out_images, top1_agreement

        images, fresh = held_out_images(reference, calibration, CALIBRATION_IMAGES)
        agreement = top1_agreement(reference, lambda b: compiled(b)[compiled.outputs[0]], images)
        return {**report, "checked_images": len(images), "held_out": fresh, "top1_agreement": agreement}
    sizes = _check_sizes(reference, img_size)
    error = _verify(reference, lambda x: [compiled(x.numpy())[o] for o in compiled.outputs], sizes,
                    f"OpenVINO export {path}", "fp16" if precision == "fp16" else "fp32")
    return {"error": error}


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
    path, reference, graph, sample = _fixed_shape_export(model, path, ".pte", "an ExecuTorch program", img_size)
    report, images = _fixed_shape_calibration(reference, sample, precision, calibration)
    program, outside = lower_executorch(graph, sample, images)
    path.write_bytes(program)
    report["outside_xnnpack"] = outside
    method = load_executorch(path)
    return _fixed_shape_check(reference, path, sample, precision, calibration, report,
                              lambda x: _outputs(method.execute([x])), "ExecuTorch export")


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
    path, reference, graph, sample = _fixed_shape_export(model, path, ".tflite", "a LiteRT model", img_size)
    report, images = _fixed_shape_calibration(reference, sample, precision, calibration)
    path.write_bytes(lower_litert(graph, sample, images))
    run = load_litert(path)
    return _fixed_shape_check(reference, path, sample, precision, calibration, report, lambda x: [run(x.numpy())],
                              "LiteRT export")


def _fixed_shape_calibration(reference: nn.Module, sample: torch.Tensor, precision: str,
                             calibration: str | os.PathLike | None) -> tuple[dict, list[torch.Tensor] | None]:
    """(report, calibration images at ``sample``'s size for int8, else None)."""
    if precision != "int8":
        return {}, None
    from .quantize import CALIBRATION_IMAGES, calibration_images

    images = calibration_images(reference, calibration, CALIBRATION_IMAGES, size=tuple(sample.shape[-2:]))
    return {"calibration_images": len(images)}, images


def _fixed_shape_check(reference: nn.Module, path: Path, sample: torch.Tensor, precision: str,
                       calibration: str | os.PathLike | None, report: dict, run, what: str) -> dict:
    """Write the metadata beside ``path`` as .json and check ``run`` (batch-1 tensor -> list of arrays): fp32
    against PyTorch (``error``), int8 by top-1 agreement with fp32 PyTorch on held-out images."""
    meta = {k: json.loads(v) for k, v in _metadata(reference).items()}
    meta.update(input_shape=list(sample.shape), precision=precision)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    size = tuple(sample.shape[-2:])
    if precision == "int8":
        from .quantize import CALIBRATION_IMAGES, held_out_images, top1_agreement

        def batch_run(batch: np.ndarray) -> np.ndarray:  # the file takes one image at a time
            return np.concatenate([run(torch.from_numpy(x[None]))[0] for x in batch])

        check, fresh = held_out_images(reference, calibration, CALIBRATION_IMAGES, size)
        return {**report, "checked_images": len(check), "held_out": fresh,
                "top1_agreement": top1_agreement(reference, batch_run, check)}
    sizes = [(1, *size), (1, *size)]
    return {**report, "error": _verify(reference, run, sizes, f"{what} {path}")}


def _fixed_shape_export(model: nn.Module, path: str | os.PathLike, suffix: str, what: str, img_size: int | None
                        ) -> tuple[Path, nn.Module, nn.Module, torch.Tensor]:
    """(path, reference, graph, batch-1 sample at the export size) for the formats with a fixed input shape;
    a path without ``suffix`` is refused, naming the one to use."""
    path = _suffixed(path, suffix, what)
    reference, graph = _prepare(model)
    _, height, width = _check_sizes(reference, img_size)[0]
    return path, reference, graph, torch.zeros(1, reference.in_chans, height, width)


def _executorch_modules():
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
    partitioner, lower, _ = _executorch_modules()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, (sample,))
        if images is not None:
            program = torch.export.export(_pt2e_int8(program.module(), images), (sample,))
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
    _, _, runtime = _executorch_modules()
    with native_stderr_silenced():  # the runtime's CPU probing prints to stderr on every machine
        return runtime.get().load_program(str(path)).load_method("forward")


def _pt2e_int8(graph: nn.Module, images: list[torch.Tensor], float_boundary: bool = False) -> nn.Module:
    """PyTorch 2 export quantization of an exported graph with XNNPACK's quantizer (per-channel symmetric
    int8), calibrated image by image. ``float_boundary`` (LiteRT): the graph's input and output and every
    softmax output stay float32 and the weights stay as quantize/dequantize pairs, as litert-torch takes them
    (it folds a quantized input or output into the file's signature, and its int8 softmax has a fixed
    1/256 step)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if float_boundary:
        softmax = (torch.ops.aten.softmax.int, torch.ops.aten._softmax.default)

        def quantized(node) -> bool:
            args = [a for a in node.args if isinstance(a, torch.fx.Node)]
            return not (any(a.op == "placeholder" for a in args)  # the images (weights are attributes)
                        or any(u.op == "output" for u in node.users)
                        or any(a.target in softmax for a in args))

        quantizer.set_filter_function(quantized)
    prepared = prepare_pt2e(graph, quantizer)
    for image in images:
        prepared(image[None])
    return convert_pt2e(prepared, fold_quantize=not float_boundary)


def _litert_module():
    with native_stderr_silenced():  # TensorFlow Lite's and JAX's start-up notes
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        litert_torch = import_extra("litert_torch", "litert", "LiteRT export")
        from litert_torch import _config

        _config.config.show_progress = False  # its per-pass progress lines
    return litert_torch


def lower_litert(graph: nn.Module, sample: torch.Tensor, images: list[torch.Tensor] | None = None) -> bytes:
    """The LiteRT flatbuffer of ``graph`` at ``sample``'s fixed shape, int8 by PT2E calibrated on ``images``
    when given. The one conversion: export and the benchmark use it."""
    litert_torch = _litert_module()
    quant_config = None
    with warnings.catch_warnings(), torch.no_grad(), native_stderr_silenced():
        warnings.simplefilter("ignore")
        if images is not None:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig

            program = torch.export.export(graph, (sample,)).module()
            graph = _pt2e_int8(program, images, float_boundary=True)
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
    path, reference, graph, sample = _fixed_shape_export(model, path, ".mlpackage", "a Core ML ML Program", img_size)
    height, width = sample.shape[-2:]
    compute = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}[precision]
    with warnings.catch_warnings(), torch.no_grad(), native_stderr_silenced():  # its progress bars
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, (sample,)).run_decompositions({})
        converted = ct.convert(program, inputs=[ct.TensorType(name="images", shape=sample.shape)],
                               compute_precision=compute, minimum_deployment_target=ct.target.iOS17)
    for key, value in {**_metadata(reference), "precision": json.dumps(precision)}.items():
        converted.user_defined_metadata[key] = value
    if path.is_dir():  # an earlier package of that name: replaced, as a file would be
        import shutil

        shutil.rmtree(path)
    converted.save(str(path))
    if platform.system() != "Darwin":
        return {"verified": False}
    output = converted.get_spec().description.output[0].name
    sizes = [(1, height, width), (1, height, width)]
    def run(x: torch.Tensor) -> list[np.ndarray]:
        return [np.asarray(converted.predict({"images": x.numpy()})[output])]

    if precision == "fp16":  # fp16 keeps 11 bits: checked by top-1 class, not to float32 rounding
        return {"verified": True, "top1_agreement": _agreement(reference, run, sizes)}
    return {"verified": True, "error": _verify(reference, run, sizes, f"Core ML export {path}")}


def _agreement(reference: nn.Module, run, sizes: list[tuple[int, int, int]]) -> float:
    g = torch.Generator().manual_seed(0)
    same = total = 0
    for batch, height, width in sizes:
        x = torch.randn(batch, reference.in_chans, height, width, generator=g)
        with torch.no_grad():
            same += int((reference(x).argmax(1).numpy() == run(x)[0].argmax(1)).sum())
        total += batch
    return 100.0 * same / total
