"""The timing loop: every model of a setting (runtime, precision, resolution, batch) warmed up, then timed
interleaved, one call each per round, so a slow moment of a shared machine hits all of them."""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ..kernels import native_precision
from .models import (
    CUDA_RUNTIMES,
    DEFAULT_MODELS,
    DENSE_FPN_CHANNELS,
    FILE_RUNTIMES,
    PRECISIONS,
    RUNTIME_PRECISIONS,
    RUNTIMES,
    TASKS,
    TIMM_PREFIX,
    BenchmarkError,
    check_name,
    model_family,
    native_resolution,
)
from .results import Result, median_ratio, ratio_spread
from .runners import Runner


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
        check_name(name)
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
                        runners[name] = Runner(name, runtime, device, threads, Path(workdir), task, fpn_channels,
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
