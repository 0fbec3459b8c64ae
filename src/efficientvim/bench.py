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

from __future__ import annotations

import contextlib
import csv
import json
import re
import statistics
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .deploy import PRECISION_DTYPES, fuse
from .errors import EfficientViMError, UnknownModelError
from .export import EXPORT_LAYOUT, native_stderr_silenced, write_onnx
from .kernels import native_precision
from .registry import create_model, list_models, model_config
from .runtimes import onnxruntime_session, openvino_request

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
# Published ImageNet-1k top-1 (%), for the speed-accuracy plot only: EfficientViM's from the registry
# (450-epoch weights), the peers' as quoted in the EfficientViM paper.
PEER_TOP1 = {
    "shvit_s1": 72.8, "shvit_s2": 75.2, "shvit_s3": 77.4, "shvit_s4": 79.4,
    "mobilenetv3_large_100": 75.2, "efficientvit_m2": 70.8, "efficientvit_m4": 74.3, "efficientvit_m5": 77.1,
}  # fmt: skip
PUBLISHED_TOP1 = {**{name: model_config(name)["top1"] for name in list_models("*m?")}, **PEER_TOP1}


class BenchmarkError(EfficientViMError):
    """A benchmark request that cannot run (unknown runtime or model, CUDA without a GPU)."""


@dataclass
class Result:
    """One timed setting of one model."""

    model: str
    runtime: str
    device: str
    precision: str
    threads: int
    batch_size: int
    resolution: int
    median_ms: float  # per call (one batch)
    images_per_s: float
    ms_per_image: float
    peak_memory_mb: float | None  # peak memory of one call above the model's own (None: not measurable)
    repeats: int
    vs_timm: float | None = None  # median time of timm's same variant / this median time
    times_ms: list[float] = field(default_factory=list)
    error: str | None = None
    gflops: float | None = None  # achieved: 2 x multiply-adds x images/s (the GEMM bound is in the run's meta)
    vs_timm_spread: list[float] | None = None  # quartiles of the per-round ratios (a busy machine widens them)


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
    _check_name(name)
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


class _Runner:
    """One model prepared for one runtime; ``__call__`` runs one synchronised batch."""

    def __init__(self, name: str, runtime: str, device: str, threads: int, workdir: Path, task: str,
                 fpn_channels: int | None, precision: str = "fp32") -> None:
        self.name, self.task, self.precision = name, task, precision
        # what PyTorch computes in: a file runtime gets the float32 graph and images, and runs its precision
        # itself (int8: quantized on export)
        self.dtype = torch.float32 if runtime in FILE_RUNTIMES else PRECISIONS[precision]
        model = build_model(name, runtime, task, fpn_channels, self.dtype, device)
        # low precision: CUDA autocasts what is not fused in it; CPU converts it (autocast's per-call weight
        # casts would be timed too, which a deployed bf16 model does not pay)
        self.autocast = device.startswith("cuda") and self.dtype != torch.float32 and not name.endswith(FUSE_SUFFIX)
        if not self.autocast and self.dtype != torch.float32:
            model = model.to(self.dtype)
        # CUDA: NHWC maps (cuDNN's fast convolutions in low precision), the GPU protocol of timm and the peers;
        # a fused model holds its maps channels-last itself
        cuda_nhwc = device.startswith("cuda") and not name.endswith(FUSE_SUFFIX)
        self.memory_format = torch.channels_last if cuda_nhwc else torch.contiguous_format
        model = model.to(memory_format=self.memory_format)
        self._macs: dict[int, int | None] = {}
        self.model = model
        self.device = device
        self.run: Callable[[torch.Tensor], object]
        if runtime == "eager":
            self.run = model
        elif runtime == "compile":
            self.run = torch.compile(model, dynamic=False)
        elif runtime == "cudagraph":
            self.run = self._cuda_graph(model)
        elif runtime == "onnxruntime":
            self.run = self._onnx(model, name, threads, workdir)
        elif runtime == "openvino":
            self.run = self._openvino(model, name, threads, workdir)
        elif runtime in FIXED_SHAPE_RUNTIMES:
            self.run = self._fixed_shape(model, name, runtime, threads, workdir)
        else:
            raise BenchmarkError(f"unknown runtime {runtime!r}: choose from {', '.join(RUNTIMES)}")

    def _onnx_file(self, model: nn.Module, name: str, workdir: Path) -> Path:
        """The model as ONNX (int8: quantized), written once per run and shared by the file runtimes."""
        path = onnx_path(name, workdir)
        if self.precision == "int8":
            path = path.with_suffix(".int8.onnx")
        if not path.exists() and self.precision == "int8":
            from .quantize import calibration_images, quantize_onnx

            fp32 = path.with_suffix(".fp32.onnx")
            write_onnx(model.cpu(), fp32)
            quantize_onnx(fp32, path, calibration_images(self.reference(), None, INT8_CALIBRATION_IMAGES))
        elif not path.exists():
            write_onnx(model.cpu(), path)
        return path

    def _onnx(self, model: nn.Module, name: str, threads: int, workdir: Path) -> Callable:
        session = onnxruntime_session(self._onnx_file(model, name, workdir), threads)
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x.numpy()})

    def _openvino(self, model: nn.Module, name: str, threads: int, workdir: Path) -> Callable:
        # OpenVINO picks bf16 by itself on CPUs that have it: the hint says which precision is timed
        request = openvino_request(self._onnx_file(model, name, workdir), threads, self.precision)
        return lambda x: request.infer({0: x.numpy()})

    def _fixed_shape(self, model: nn.Module, name: str, runtime: str, threads: int, workdir: Path) -> Callable:
        """ExecuTorch and LiteRT files have a fixed input shape: one is written (and loaded) per shape timed,
        int8 calibrated on digit images at that shape."""
        from .export import load_executorch, load_litert, lower_executorch, lower_litert

        if runtime == "executorch":
            with native_stderr_silenced():  # it reports its CPU probing and the reset itself
                from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

                _unsafe_reset_threadpool(threads)  # XNNPACK's pool, shared by every program of the process
        model = model.cpu()
        runs: dict[tuple, Callable] = {}

        def prepare(x: torch.Tensor) -> None:
            shape = tuple(x.shape)
            if shape in runs:
                return
            images = None
            if self.precision == "int8":
                from .quantize import calibration_images

                images = calibration_images(self.reference(), None, INT8_CALIBRATION_IMAGES, size=shape[-2:])
            suffix = ".pte" if runtime == "executorch" else ".tflite"
            path = onnx_path(name, workdir).with_suffix(f".{self.precision}.{'x'.join(map(str, shape))}{suffix}")
            if runtime == "executorch":
                path.write_bytes(lower_executorch(model, torch.zeros(shape), images)[0])
                method = load_executorch(path)
                runs[shape] = lambda x: method.execute([x])
            else:
                path.write_bytes(lower_litert(model, torch.zeros(shape), images))
                program = load_litert(path, threads)
                runs[shape] = lambda x: program(x.numpy())

        def run(x: torch.Tensor):
            prepare(x)
            return runs[tuple(x.shape)](x)

        self.prepare = prepare
        return run

    def _cuda_graph(self, model: nn.Module) -> Callable:
        """``model``'s kernels for one input shape recorded in a CUDA graph (after warm-up calls on a side
        stream, as capture requires) and replayed on a static copy of the input."""
        graphs: dict[tuple, tuple] = {}

        def prepare(x: torch.Tensor) -> None:
            shape = tuple(x.shape)
            if shape in graphs:
                return
            static = x.clone()
            with torch.inference_mode(), self._autocast():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        model(static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = model(static)
            graphs[shape] = graph, static, out

        def run(x: torch.Tensor):
            prepare(x)
            graph, static, out = graphs[tuple(x.shape)]
            static.copy_(x)
            graph.replay()
            return out

        self.prepare = prepare
        return run

    def _autocast(self):
        # no weight cache: a CUDA graph cannot record one, and eager calls leave the context (emptying it) anyway
        if self.autocast:
            return torch.autocast("cuda", self.dtype, cache_enabled=False)
        return contextlib.nullcontext()

    def prepare(self, x: torch.Tensor) -> None:
        """One-off work for ``x``'s shape before it is timed (ExecuTorch and LiteRT write a file per shape,
        the cudagraph runtime records a graph)."""

    def macs(self, size: int) -> int | None:
        """Multiply-adds per image at ``size``, counted on the unfused float32 model (the fused one computes
        the same products); None where the counter cannot run the model."""
        from .flops import count_flops

        if self.task != "classification":
            return None
        if size not in self._macs:  # once per size: every batch size timed at it reuses the count
            try:
                self._macs[size] = count_flops(self.reference().to(self.device), size)
            except Exception:  # a peer whose ops the counter does not know: no figure rather than a wrong one
                self._macs[size] = None
        return self._macs[size]

    def reference(self) -> nn.Module:
        if self.name.startswith(TIMM_PREFIX):
            import timm

            return timm.create_model(model_family(self.name), pretrained=False).eval()
        return create_model(model_family(self.name)).eval()

    def input(self, batch: int, size: int) -> torch.Tensor:
        x = torch.randn(batch, 3, size, size, device=self.device).to(memory_format=self.memory_format)
        return x if self.autocast else x.to(self.dtype)

    def __call__(self, x: torch.Tensor) -> float:
        """Seconds for one call, device synchronised."""
        cuda = self.device.startswith("cuda")
        with torch.inference_mode(), self._autocast():
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            self.run(x)
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start

    def peak_memory_mb(self, x: torch.Tensor, runtime: str) -> float | None:
        """Peak memory one call allocates beyond the weights: CUDA allocator peak, or on CPU the
        running sum of tensor allocations and frees recorded by the PyTorch profiler (eager graph,
        steady state: a first, unrecorded call does any one-off work such as packing weights)."""
        if runtime in FILE_RUNTIMES or runtime in CUDA_RUNTIMES:
            return None  # ONNX Runtime and OpenVINO allocate outside PyTorch's view; a CUDA graph in its own pool
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            self(x)
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        with torch.inference_mode():
            self.model(x)  # steady state: one-off work of a first call (packing weights) is not counted
            with native_stderr_silenced(), torch.profiler.profile(profile_memory=True) as prof:
                self.model(x)
        events = sorted((e for e in prof.events() if e.cpu_parent is None), key=lambda e: e.time_range.start)
        running = peak = 0
        for e in events:
            running += e.cpu_memory_usage
            peak = max(peak, running)
        return peak / 2**20


def median_ratio(base: Sequence[float], times: Sequence[float]) -> float:
    """How many times faster ``times`` runs than ``base``: the ratio of their medians, the same ratio the two
    rows' img/s give. (The median of per-round ratios could point the other way on a noisy machine.)"""
    return statistics.median(base) / statistics.median(times)


def ratio_spread(base: Sequence[float], times: Sequence[float]) -> list[float]:
    """Lower and upper quartiles of the per-round ratios base / times (rounds timed interleaved)."""
    ratios = [b / t for b, t in zip(base, times)]
    if len(ratios) < 2:
        return [ratios[0], ratios[0]]
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return [q1, q3]


# a spread (upper - lower quartile) above this share of the ratio makes it unreliable: the machine was busy
UNRELIABLE_SPREAD = 0.25


def run_benchmark(
    models: Sequence[str] = DEFAULT_MODELS,
    runtimes: Sequence[str] = ("eager",),
    resolutions: Sequence[int | str] = ("native",),
    batch_sizes: Sequence[int] = (32, 1),
    threads: int = 2,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    progress: bool = True,
    task: str = "classification",
    fpn_channels: int | None = DENSE_FPN_CHANNELS,
    precisions: Sequence[str] | None = None,
) -> list[Result]:
    """Time every model in every (precision, runtime, resolution, batch size) setting; see the module docstring.

    ``resolutions`` may hold ``"native"``: each model at its training resolution (M4: 256), or for the
    ``dense`` task at 512. ``task`` is ``classification`` (the classifier) or ``dense`` (trunk levels and
    an FPN of ``fpn_channels``; None: no neck). ``precisions`` (``PRECISIONS``; default fp32 on CPU, fp16
    on CUDA): fused models are fused in that dtype, the others converted to it (CPU) or autocast (CUDA);
    a precision the device has no native support for is reported as failed, not timed slowly. On CPU
    with ``threads`` threads.
    """
    from tqdm.auto import tqdm

    if task not in TASKS:
        raise BenchmarkError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda asked for, but PyTorch sees no GPU: use --device cpu")
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise BenchmarkError(f"unknown runtime {bad[0]!r}: choose from {', '.join(RUNTIMES)}")
    if device.startswith("cuda") and set(runtimes) & set(FILE_RUNTIMES):
        raise BenchmarkError(f"the {', '.join(FILE_RUNTIMES)} runtimes are benchmarked on CPU only: drop them "
                             "or use --device cpu")
    if not device.startswith("cuda") and set(runtimes) & set(CUDA_RUNTIMES):
        raise BenchmarkError(f"the {', '.join(CUDA_RUNTIMES)} runtime needs a GPU: use --device cuda or drop it")
    precisions = list(precisions or (["fp16"] if device.startswith("cuda") else ["fp32"]))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise BenchmarkError(f"unknown precision {bad[0]!r}: choose from {', '.join(PRECISIONS)}")
    for name in models:
        _check_name(name)
    torch.set_num_threads(threads)
    settings = [(p, rt, res, bs) for p in precisions for rt in runtimes for res in resolutions for bs in batch_sizes]
    bar = tqdm(total=len(settings) * len(models) * (warmup + repeats), disable=not progress, desc="bench")
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as workdir:
        for precision in precisions:
            why = native_precision(PRECISIONS[precision], device)
            for runtime in runtimes:
                runners = {}
                for name in models:
                    try:
                        if precision not in RUNTIME_PRECISIONS[runtime]:
                            raise BenchmarkError(f"the {runtime} runtime is timed in "
                                                 f"{', '.join(RUNTIME_PRECISIONS[runtime])}, not {precision}")
                        if why:
                            raise BenchmarkError(f"{why}: {precision} would run emulated, slower than fp32")
                        runners[name] = _Runner(name, runtime, device, threads, Path(workdir), task, fpn_channels,
                                                precision)  # fmt: skip
                    except Exception as e:  # one peer failing to build or export must not end the run
                        results.append(_failed(name, runtime, device, precision, threads, e))
                for res in resolutions:
                    for batch in batch_sizes:
                        bar.set_postfix_str(f"{precision} {runtime} {res} b{batch}")
                        results += _time_setting(runners, runtime, res, batch, device, precision, threads, warmup,
                                                 repeats, bar)  # fmt: skip
    bar.close()
    return results


def gemm_bound(precision: str, device: str = "cpu", threads: int = 2, size: int | None = None, repeats: int = 5
               ) -> float:
    """GFLOP/s of one large square matrix product in ``precision``, the ceiling a GEMM-bound model can reach:
    on CPU the faster of PyTorch's matmul and oneDNN's (the two libraries the fused path chooses between).
    ``size``: 2048 on CPU, 8192 on CUDA (a GPU needs the larger product to fill)."""
    from .kernels import MKLDNN_PACKED, PackedWeights, onednn_linear

    size = size or (8192 if device.startswith("cuda") else 2048)
    torch.set_num_threads(threads)
    a = torch.randn(size, size, device=device).to(PRECISIONS[precision])
    products = [lambda: a @ a]
    if device == "cpu" and MKLDNN_PACKED:
        packed = PackedWeights()
        products.append(lambda: onednn_linear(a, a, None, packed))
    best = 0.0
    for product in products:
        times = []
        for i in range(repeats + 2):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            product()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:  # two untimed calls first
                times.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / statistics.median(times) / 1e9)
    return best


def _check_name(name: str) -> None:
    import timm

    known = timm.is_model(model_family(name)) if name.startswith(TIMM_PREFIX) else model_family(name) in list_models()
    if not known:
        raise UnknownModelError(
            f"unknown benchmark model {name!r}: use an efficientvim name (optionally +fuse) or timm:NAME"
        )


def _failed(name: str, runtime: str, device: str, precision: str, threads: int, e: Exception) -> Result:
    message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return Result(name, runtime, device, precision, threads, 0, 0, float("nan"), float("nan"), float("nan"), None,
                  0, error=message)  # fmt: skip


def _time_setting(runners, runtime, res, batch, device, precision, threads, warmup, repeats, bar) -> list[Result]:
    inputs, times, failed = {}, {}, {}
    for name, runner in runners.items():
        size = native_resolution(name, runner.task) if res == "native" else int(res)
        inputs[name] = runner.input(batch, size)
        try:
            runner.prepare(inputs[name])  # one-off work for this shape (an ExecuTorch program), untimed
            for _ in range(warmup):
                runner(inputs[name])
                bar.update()
            times[name] = []
        except Exception as e:
            failed[name] = e
            bar.update(warmup + repeats)
    for _ in range(repeats):  # interleaved: one call of each model per round
        for name in times:
            times[name].append(runners[name](inputs[name]))
            bar.update()
    results = []
    for name, runner in runners.items():
        size = inputs[name].shape[-1]
        if name in failed:
            r = _failed(name, runtime, device, precision, threads, failed[name])
            r.batch_size, r.resolution = batch, size
            results.append(r)
            continue
        median = statistics.median(times[name])
        base = TIMM_PREFIX + model_family(name)
        compared = base in times and base != name
        vs_timm = median_ratio(times[base], times[name]) if compared else None
        macs = runner.macs(size)
        results.append(Result(
            name, runtime, device, precision, threads, batch, size, median * 1e3, batch / median,
            median * 1e3 / batch, runner.peak_memory_mb(inputs[name], runtime), repeats, vs_timm,
            [t * 1e3 for t in times[name]], gflops=2 * macs * batch / median / 1e9 if macs else None,
            vs_timm_spread=ratio_spread(times[base], times[name]) if compared else None,
        ))  # fmt: skip
    return results


def write_results(results: Sequence[Result], out_dir: str | Path, meta: dict) -> dict[str, Path]:
    """Write ``results.csv`` and ``results.json`` (with run metadata); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    with open(csv_path, "w", newline="") as f:
        columns = [c for c in rows[0] if c != "times_ms"] if rows else []
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    return {"csv": csv_path, "json": json_path}


def _family_label(name: str) -> str:
    """``efficientvim_m2+fuse`` -> ``efficientvim fused``, ``timm:shvit_s2`` -> ``shvit (timm)``."""
    family = re.sub(r"_[a-z]?\d+(_\d+)?$", "", model_family(name))
    return _label(name.replace(model_family(name), family))


def _label(name: str) -> str:
    if name.startswith(TIMM_PREFIX):
        return name.removeprefix(TIMM_PREFIX) + " (timm)"
    return name.replace(FUSE_SUFFIX, " fused")


def plot_speed_accuracy(results: Sequence[Result], path: str | Path, title: str) -> Path | None:
    """Published top-1 against measured throughput at the largest batch; our models as a connected front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None and model_family(r.model) in PUBLISHED_TOP1]
    if not ok:
        return None
    batch = max(r.batch_size for r in ok)
    ok = [r for r in ok if r.batch_size == batch]
    fig, ax = plt.subplots(figsize=(7, 5))
    groups: dict[str, list[Result]] = {}
    for r in ok:
        groups.setdefault(f"{_family_label(r.model)} {r.runtime}", []).append(r)
    for key, rs in sorted(groups.items()):
        rs.sort(key=lambda r: PUBLISHED_TOP1[model_family(r.model)])
        xs = [r.images_per_s for r in rs]
        ys = [PUBLISHED_TOP1[model_family(r.model)] for r in rs]
        ours = not rs[0].model.startswith(TIMM_PREFIX)
        ax.plot(xs, ys, "o-" if ours or len(rs) > 1 else "o", lw=2.5 if ours else 1, label=key, zorder=3 if ours else 2)
        for r, x, y in zip(rs, xs, ys):
            ax.annotate(model_family(r.model).split("_")[-1], (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel(f"throughput (images/s, batch {batch})")
    ax.set_ylabel("published ImageNet-1k top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_resolution_scaling(results: Sequence[Result], path: str | Path, title: str) -> Path | None:
    """Time per image against pixels per image (log-log), one line per model and runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None]
    lines: dict[tuple[str, str, int], list[Result]] = {}
    for r in ok:
        lines.setdefault((r.model, r.runtime, r.batch_size), []).append(r)
    lines = {k: sorted(v, key=lambda r: r.resolution) for k, v in lines.items() if len({r.resolution for r in v}) > 1}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for (model, runtime, batch), rs in sorted(lines.items()):
        pixels = [r.resolution**2 for r in rs]
        ax.plot(pixels, [r.ms_per_image for r in rs], "o-", lw=2.5 if not model.startswith(TIMM_PREFIX) else 1,
                label=f"{_label(model)} {runtime} b{batch}")  # fmt: skip
    first = min(lines.values(), key=lambda rs: rs[0].ms_per_image)
    p0, t0 = first[0].resolution ** 2, first[0].ms_per_image
    p1 = max(r.resolution for rs in lines.values() for r in rs) ** 2
    ax.plot([p0, p1], [t0, t0 * p1 / p0], "k:", lw=1, label="linear in pixels")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("ms per image")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def machine_description(device: str) -> str:
    """CPU model (or GPU name), for the record next to every figure."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()
