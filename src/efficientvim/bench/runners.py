"""One model prepared for one runtime (eager, torch.compile, CUDA graph, or a file in ONNX Runtime, OpenVINO,
ExecuTorch or LiteRT); a call runs one synchronised batch and returns its seconds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..export import native_stderr_silenced, write_onnx
from ..registry import create_model
from ..sessions import onnxruntime_session, openvino_request
from .models import (
    CUDA_RUNTIMES,
    FILE_RUNTIMES,
    FIXED_SHAPE_RUNTIMES,
    FUSE_SUFFIX,
    INT8_CALIBRATION_IMAGES,
    PRECISIONS,
    RUNTIMES,
    TIMM_PREFIX,
    BenchmarkError,
    build_model,
    model_family,
    onnx_path,
)


class Runner:
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
            from ..quantize import calibration_images, quantize_onnx

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
        from ..export import load_executorch, load_litert, lower_executorch, lower_litert

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
                from ..quantize import calibration_images

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
        from ..flops import count_flops

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
