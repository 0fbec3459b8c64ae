"""The models a benchmark compares, by name: ours as trained (``efficientvim_m2``), fused (``+fuse``), and timm's
(``timm:NAME``, reparameterised), as classifiers or, for the dense protocol, trunk and FPN."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..deploy import EXPORT_LAYOUT, PRECISION_DTYPES, fuse
from ..errors import EfficientViMError, UnknownModelError
from ..registry import create_model, list_models, model_config

RUNTIMES = ("eager", "compile", "cudagraph", "onnxruntime", "openvino", "executorch", "litert")
# precision name -> dtype. CPU: fused models fused in that dtype, the others converted with .to(dtype);
# CUDA: fused models fused in it, the others under torch.autocast
PRECISIONS = {**PRECISION_DTYPES, "int8": torch.int8}
# the precisions each runtime is timed in; int8: ONNX Runtime's static QDQ quantization (efficientvim.quantize)
# for onnxruntime and openvino, PyTorch 2 export quantization with XNNPACK's quantizer for executorch and litert
RUNTIME_PRECISIONS = {"eager": ("fp32", "bf16", "fp16"), "compile": ("fp32", "bf16", "fp16"),
                      "cudagraph": ("fp32", "bf16", "fp16"),
                      "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8"),
                      "executorch": ("fp32", "int8"), "litert": ("fp32", "int8")}
# time an exported file (the fused NCHW graph), not PyTorch
FILE_RUNTIMES = ("onnxruntime", "openvino", "executorch", "litert")
# of those, the ones whose files have one fixed input shape: a file is written per shape timed
FIXED_SHAPE_RUNTIMES = ("executorch", "litert")
# the eager model's kernels recorded once per input shape in a CUDA graph and replayed (no per-kernel launch cost)
CUDA_RUNTIMES = ("cudagraph",)
INT8_CALIBRATION_IMAGES = 32  # digit images for the int8 ranges: the calibration set does not change the speed

# classification: the classifier; dense: the trunk's pyramid levels and an FPN, the paper's dense-prediction
# latency protocol (512 x 512, batch 32)
TASKS = ("classification", "dense")


DENSE_RESOLUTION = 512


DENSE_LEVELS = dict(stem_strides=(8,), out_indices=(0, 1, 2))  # strides 8-64: the stem's stride-8 map and the stages'


DENSE_FPN_CHANNELS = 256


FUSE_SUFFIX = "+fuse"


TIMM_PREFIX = "timm:"


TIMM_PEERS = (
    "shvit_s1", "shvit_s2", "shvit_s3", "shvit_s4",
    "efficientvit_m0", "efficientvit_m1", "efficientvit_m2", "efficientvit_m3", "efficientvit_m4", "efficientvit_m5",
    "mobilenetv3_large_100", "mobilenetv4_conv_small", "repvit_m0_9", "fastvit_t8",
)  # fmt: skip


DENSE_DEFAULT_MODELS = tuple(f"efficientvim_m{i}{FUSE_SUFFIX}" for i in range(1, 5))


DEFAULT_MODELS = (
    *(f"efficientvim_m{i}{FUSE_SUFFIX}" for i in range(1, 5)),
    *(f"{TIMM_PREFIX}efficientvim_m{i}" for i in range(1, 5)),
    *(TIMM_PREFIX + p for p in TIMM_PEERS),
)


class BenchmarkError(EfficientViMError):
    """A benchmark request that cannot run (unknown runtime or model, CUDA without a GPU)."""


def model_family(name: str) -> str:
    """``timm:shvit_s2`` -> ``shvit_s2``; ``efficientvim_m2+fuse`` -> ``efficientvim_m2``."""
    return name.removeprefix(TIMM_PREFIX).removesuffix(FUSE_SUFFIX)


def onnx_path(name: str, workdir: Path) -> Path:
    """Where a benchmark model's ONNX file goes in ``workdir``."""
    return workdir / (name.replace(":", "_").replace("+", "_") + ".onnx")


def native_resolution(name: str, task: str = "classification") -> int:
    """The resolution a model is timed at by default: its training resolution (M4: 256); dense: 512."""
    if task == "dense":
        return DENSE_RESOLUTION
    if name.startswith(TIMM_PREFIX):
        import timm

        return timm.get_pretrained_cfg(model_family(name)).input_size[-1]
    return model_config(model_family(name))["img_size"]


class BackboneFPN(nn.Module):
    """A feature extractor's maps through a torchvision FPN: what the dense task times, for our trunks
    and timm's alike. Returns the pyramid's maps as a list."""

    def __init__(self, body: nn.Module, channels: Sequence[int], out_channels: int | None) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        self.body = body
        self.fpn = FeaturePyramidNetwork(list(channels), out_channels) if out_channels else None
        self.out_indices = tuple(range(len(channels)))  # one output per level (the ONNX writer names them)
        self.in_chans = 3

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)
        if self.fpn is None:
            return list(maps)
        return list(self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps))).values())


def build_model(
    name: str, runtime: str = "eager", task: str = "classification", fpn_channels: int | None = DENSE_FPN_CHANNELS,
    dtype: torch.dtype = torch.float32, device: str = "cpu",
) -> nn.Module:
    """An eval-mode model on ``device`` for a benchmark name, weights random (speed does not depend on them);
    for the dense task the trunk's levels ``DENSE_LEVELS`` (timm: all its feature levels) and an FPN.
    ``dtype``: a fused model is fused in it (on ``device``, whose native precisions decide); the caller
    converts or autocasts the others."""
    check_name(name)
    dense = dict(features_only=True, **DENSE_LEVELS) if task == "dense" else {}
    if name.startswith(TIMM_PREFIX):
        import timm
        from timm.utils.model import reparameterize_model

        model = timm.create_model(model_family(name), pretrained=False, features_only=task == "dense")
        model = reparameterize_model(model.eval())
    else:
        model = create_model(model_family(name), **dense).eval().to(device)
        if name.endswith(FUSE_SUFFIX):
            model = fuse(model, layout=EXPORT_LAYOUT if runtime in FILE_RUNTIMES else "channels_last", dtype=dtype)
    if task == "dense":
        model = BackboneFPN(model, model.feature_info.channels(), fpn_channels).eval()
    return model.to(device)


def check_name(name: str) -> None:
    import timm

    known = timm.is_model(model_family(name)) if name.startswith(TIMM_PREFIX) else model_family(name) in list_models()
    if not known:
        raise UnknownModelError(
            f"unknown benchmark model {name!r}: use an efficientvim name (optionally +fuse) or timm:NAME"
        )
