"""What the demo page computes, without Gradio: one model, its prediction as ``predict`` makes it, its hidden
states as ``visualize`` draws them, its facts, and the same image in every runtime and precision installed.

A :class:`DemoSession` answers one request at a time (the page queues them). Every answer reads the uploaded
file with the reader the commands use (:func:`efficientvim.images.read_image`), so a file the page accepts is
one ``efficientvim predict`` accepts, with the same message when it is refused.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import nn

from ..images import check_min_side, read_image
from ..predict import class_names, make_transform, min_image_side, top_k
from ..runtimes import INFERENCE_PRECISIONS, INFERENCE_RUNTIMES, inference_model
from ..sessions import RUNTIME_EXTRAS, missing_modules

TOP_K = 5
COMPARE_REPEATS = 10  # timed forward passes per runtime in the comparison (after two untimed ones)


@dataclass
class Prediction:
    """One image's top-k (as ``predict --json`` lists them) and where the time went, in milliseconds."""

    predictions: list[dict]
    image: Image.Image  # the decoded upload, for the hidden-state picture that follows
    read_ms: float  # decoding the file
    preprocess_ms: float  # resize, crop, normalise
    model_ms: float  # the forward pass and the softmax
    notes: list[str] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return self.read_ms + self.preprocess_ms + self.model_ms

    def label(self) -> dict[str, float]:
        """The top-k as ``gr.Label`` takes it: class name -> probability, most likely first."""
        return {p["label"]: p["probability"] for p in self.predictions}


def _on_model_thread(method):
    """Run ``method`` on the session's one model thread: the web server calls from whichever worker thread is
    free, and each new thread starts its own OpenMP team and caches (on the 2-core development VM, M1's
    forward pass at 224 took 10 ms on a thread that kept it and 15-20 ms from changing threads)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return self._thread.submit(method, self, *args, **kwargs).result()

    return wrapper


def read_upload(path: str | os.PathLike, name: str, min_side: int) -> tuple[Image.Image, list[str]]:
    """The uploaded file as RGB (``read_image``: told by content, size-checked before decoding, EXIF upright,
    shorter side at least ``min_side``) and notes on what was read of it (an animated file's first frame);
    ``name`` is what messages call it."""
    image = check_min_side(read_image(path, name=name), name, min_side)
    with Image.open(path) as im:  # a known, readable format by now: only its frame count is asked
        frames = im.n_frames if getattr(im, "is_animated", False) else 1
    notes = [f"{name} is animated ({frames} frames): its first frame was classified"] if frames > 1 else []
    return image, notes


class DemoSession:
    """``model`` (an EfficientViM classifier, eval mode) served as ``predict`` would run it: fused, in
    ``runtime`` and ``precision`` (:func:`efficientvim.runtimes.inference_model`). ``source`` says where its
    weights came from; ``random_weights`` that it has none."""

    def __init__(self, model: nn.Module, source: str, runtime: str = "eager", precision: str = "fp32",
                 random_weights: bool = False) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="efficientvim-demo-model")
        self.model = model.eval()
        self.source, self.runtime, self.precision = source, runtime, precision
        self.random_weights = random_weights
        self.runner = self._thread.submit(inference_model, model, runtime, precision).result()
        self.names = class_names(model)
        self.transform = make_transform(model)
        self.min_side = min_image_side(model)
        self.requests = 0
        self.first_ms: float | None = None  # the first request's time after start-up
        self._runners: dict[tuple[str, str], nn.Module] = {(runtime, precision): self.runner}

    def read(self, path: str | os.PathLike, name: str) -> tuple[Image.Image, list[str]]:
        return read_upload(path, name, self.min_side)

    @_on_model_thread
    @torch.no_grad()
    def warm_up(self) -> None:
        """One untimed forward pass: the first of a process pays for allocations and kernel choices."""
        self.runner(torch.zeros(1, *self.model.pretrained_cfg["input_size"]))

    @_on_model_thread
    @torch.no_grad()
    def predict(self, path: str | os.PathLike, name: str, k: int = TOP_K) -> Prediction:
        """The top-``k`` of the image file at ``path``, exactly as ``efficientvim predict --json`` gives them
        with the same ``--runtime`` and ``--precision``."""
        start = time.perf_counter()
        image, notes = self.read(path, name)
        read = time.perf_counter()
        x = self.transform(image).unsqueeze(0)
        prepared = time.perf_counter()
        predictions = top_k(self.runner(x), k, self.names)[0]
        done = time.perf_counter()
        p = Prediction(predictions, image, 1e3 * (read - start), 1e3 * (prepared - read), 1e3 * (done - prepared),
                       notes)
        self.requests += 1
        if self.first_ms is None:
            self.first_ms = p.total_ms
        return p

    @_on_model_thread
    @torch.no_grad()
    def hidden_states(self, image: Image.Image, name: str) -> Image.Image:
        """The picture ``efficientvim visualize`` writes, of a decoded image (``Prediction.image``), as pixels."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        from ..viz import render, state_report

        report = state_report(self.model, image)
        width, height = self.model.pretrained_cfg["input_size"][1:][::-1]
        canvas = FigureCanvasAgg(render(report, title=f"{self.model.model_name}: hidden states on {name} "
                                        f"({width}x{height})", note="random weights: the maps show an untrained "
                                        "network" if self.random_weights else ""))
        canvas.draw()
        return Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")

    def facts(self) -> list[tuple[str, str]]:
        """The model's facts as (what, value) rows: architecture, size, cost, input, classes, weights, runtime."""
        from ..bench.results import machine_description
        from ..flops import count_flops

        cfg = self.model.pretrained_cfg
        size = cfg["input_size"][1]
        params = sum(p.numel() for p in self.model.parameters())
        names = ", ".join(self.names[:10]) + (f", ... ({len(self.names)} in all)" if len(self.names) > 10 else "")
        return [
            ("architecture", self.model.model_name),
            ("parameters", f"{params:,} ({params / 1e6:.2f} M)"),
            ("multiply-adds", f"{count_flops(self.model, size) / 1e6:,.1f} M per image at {size}x{size}"),
            ("input", f"{size}x{size} RGB, {cfg.get('interpolation', 'bicubic')} resize, crop {cfg['crop_pct']:g}"),
            ("classes", f"{self.model.num_classes}: {names}"),
            ("weights", self.source),
            ("runtime", f"{self.runtime} {self.precision} on {machine_description('cpu')}, "
                        f"{torch.get_num_threads()} threads"),
        ]

    def _runner(self, runtime: str, precision: str) -> nn.Module:
        if (runtime, precision) not in self._runners:
            self._runners[runtime, precision] = inference_model(self.model, runtime, precision)
        return self._runners[runtime, precision]

    @_on_model_thread
    @torch.no_grad()
    def compare(self, path: str | os.PathLike, name: str, repeats: int = COMPARE_REPEATS) -> list[dict]:
        """The image in every runtime and precision (:data:`INFERENCE_RUNTIMES`): each one's top-k and the
        median time of ``repeats`` forward passes, or why it was not run (not installed, not native here)."""
        from ..deploy import PRECISION_DTYPES
        from ..kernels import native_precision

        image, _ = self.read(path, name)
        x = self.transform(image).unsqueeze(0)
        rows = []
        for runtime in INFERENCE_RUNTIMES:
            for precision in INFERENCE_PRECISIONS[runtime]:
                row = dict(runtime=runtime, precision=precision, predictions=[], ms=None, note="")
                rows.append(row)
                if missing_modules(runtime):
                    row["note"] = f"not installed: pip install 'efficientvim[{RUNTIME_EXTRAS[runtime][1]}]'"
                    continue
                why = native_precision(PRECISION_DTYPES[precision], "cpu")
                if why:
                    row["note"] = f"skipped: {why} (it would be slower than fp32)"
                    continue
                runner = self._runner(runtime, precision)
                times = []
                for i in range(repeats + 2):
                    start = time.perf_counter()
                    logits = runner(x)
                    if i >= 2:
                        times.append(1e3 * (time.perf_counter() - start))
                row["predictions"] = top_k(logits, TOP_K, self.names)[0]
                row["ms"] = statistics.median(times)
        return rows
