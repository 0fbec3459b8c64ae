"""Inference speed of EfficientViM against its timm peers: throughput, latency, memory, plots.

Every figure is the median of repeated timed calls after warm-up, with the device synchronised
around each call on CUDA. Models of one setting (runtime, resolution, batch) are timed
interleaved, one call each in turn, so a slow moment of a shared machine hits all of them;
a ratio against the timm baseline is the ratio of the two medians (so it agrees with the rows' own figures),
with the quartiles of the per-round ratios as its spread. On CUDA, unfused models and their
images are channels-last (NHWC, as the peers time them) and run under autocast in fp16/bf16; the
``cudagraph`` runtime replays each model's kernels from a CUDA graph recorded once per input shape.

Model names: ``efficientvim_m2`` (this package, as trained), ``efficientvim_m2+fuse`` (this
package after :func:`efficientvim.fuse`), ``timm:NAME`` (a timm model created with
``pretrained=False`` and reparameterised for inference with ``timm.utils.model.reparameterize_model``,
e.g. ``timm:efficientvim_m2``, the baseline, or ``timm:shvit_s2``).
"""

from .gemm import gemm_bound
from .models import (
    CUDA_RUNTIMES,
    DEFAULT_MODELS,
    DENSE_DEFAULT_MODELS,
    FUSE_SUFFIX,
    INT8_CALIBRATION_IMAGES,
    PRECISIONS,
    RUNTIME_PRECISIONS,
    RUNTIMES,
    TASKS,
    TIMM_PREFIX,
    BackboneFPN,
    BenchmarkError,
    build_model,
    model_family,
    native_resolution,
    onnx_path,
)
from .plots import plot_resolution_scaling, plot_speed_accuracy
from .results import UNRELIABLE_SPREAD, Result, machine_description, median_ratio, ratio_spread, write_results
from .timing import run_benchmark

__all__ = [
    "CUDA_RUNTIMES", "DEFAULT_MODELS", "DENSE_DEFAULT_MODELS", "FUSE_SUFFIX", "INT8_CALIBRATION_IMAGES",
    "PRECISIONS", "RUNTIMES", "RUNTIME_PRECISIONS", "TASKS", "TIMM_PREFIX", "UNRELIABLE_SPREAD", "BackboneFPN",
    "BenchmarkError", "Result", "build_model", "gemm_bound", "machine_description", "median_ratio", "model_family",
    "native_resolution", "onnx_path", "plot_resolution_scaling", "plot_speed_accuracy", "ratio_spread",
    "run_benchmark", "write_results",
]
