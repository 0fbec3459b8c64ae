"""The task-agnostic training loop: ``fit`` drives any model, loss and evaluation through epochs.

It owns what every task needs: gradient accumulation, AMP, clipping, the optimiser and lr
schedule, EMA, and crash safety (the files are :mod:`.checkpoints` and :mod:`.metrics`):

* ``last.pt`` is written atomically (temporary file, then rename) after every epoch and when a
  SIGTERM/SIGINT arrives; running the same command again resumes from it, mid-epoch if need be;
* a non-finite loss stops the run before the optimiser step, leaving ``last.pt`` as it was;
* only rank 0 writes; metrics and stop requests are reduced over all processes.

``last.pt`` holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``.
"""


from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TrainingDivergedError
from .checkpoints import LAST, FitState, resume, save_last, saved_epoch
from .distributed import Distributed, all_reduce_sum
from .metrics import MetricsLog, epoch_line, progress


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps, so it can save first."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if _in_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunningStatsWarmup:
    """BatchNorm running statistics that forget their initial values from the first batch on.

    A BatchNorm starts with running mean 0 and variance 1 and moves them towards each batch's
    statistics by ``momentum`` (0.1). EfficientViM's gates start at s = 0.5 and two of a block's
    branches start as zero, so each block scales its residual stream by about 1/16 at
    initialisation: at the end of a stage the true variance is near 1e-5, and the initial 1
    needs over a hundred updates to decay below it. Until then the saved statistics belong to
    no network, and a short run on a small folder evaluates at chance. Here each BatchNorm
    averages all batches seen (momentum 1/n) until 1/n falls to its own momentum, then runs as
    usual; a resumed run continues from its saved batch count.
    """

    def __init__(self, model: nn.Module) -> None:
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                      and m.track_running_stats and m.momentum is not None]
        self.momentum = {m: m.momentum for m in self.norms}
        self.counts: dict[nn.Module, int] = {}
        self.handles: list = []

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        if module not in self.counts:  # read once: the tensor lives on the device
            self.counts[module] = int(module.num_batches_tracked)
        self.counts[module] += 1
        module.momentum = max(self.momentum[module], 1.0 / self.counts[module])

    def __enter__(self) -> RunningStatsWarmup:
        self.handles = [m.register_forward_pre_hook(self._before_forward) for m in self.norms]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        for m, momentum in self.momentum.items():
            m.momentum = momentum


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@dataclass
class Loop:
    """What ``fit`` drives. A task supplies the model, data, loss, evaluation and export; the rest is generic."""

    model: nn.Module  # the training module (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm scheduler stepped per update: step_update(num_updates)
    train_loader: torch.utils.data.DataLoader  # sampled by a ResumableSampler
    loss_fn: Callable[[nn.Module, Any, int], tuple[torch.Tensor, int]]  # (model, batch, epoch) -> (loss, samples)
    evaluate: Callable[[], dict[str, float]]  # metrics of the current weights, reduced over processes
    score: Callable[[dict[str, float]], float]  # higher is better; decides the best epoch
    save_best: Callable[[dict[str, float], int], None]  # export the best weights (rank 0)
    metadata: Callable[[], dict]  # plain data stored in last.pt (architecture, classes, config)
    settings: dict  # what a resumed run must share with this one (check_resume compares them)
    epochs: int
    output: Path
    seed: int = 0
    ema: nn.Module | None = None  # timm ModelEmaV3
    accum_steps: int = 1
    clip_grad: float | None = None
    amp_dtype: torch.dtype | None = None
    metric_format: str = "{:.2f}%"  # how the epoch line prints evaluation metrics other than losses
    metrics_title: str = "accuracy (%)"  # the title of the metrics plot in curves.png
    hidden_metrics: tuple[str, ...] = ()  # logged in metrics.jsonl but not drawn in curves.png
    log: Callable[[str], None] = print


@dataclass
class FitResult:
    state: FitState
    last_metrics: dict[str, float]
    stopped_by: int | None = None  # the signal that stopped the run early
    resumed: bool = False


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def seed_all(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(loop: Loop, d: Distributed) -> FitResult:
    """Train ``loop.model`` for ``loop.epochs`` epochs, resuming from ``output/last.pt`` when present."""
    net = unwrap(loop.model)
    if d.is_main:
        loop.output.mkdir(parents=True, exist_ok=True)
    scaler = torch.amp.GradScaler("cuda") if loop.amp_dtype == torch.float16 and d.device.type == "cuda" else None
    state, resumed = resume(loop, net, scaler)
    loop.scheduler.step_update(state.updates)
    metrics_log = MetricsLog(loop.output, d.is_main, keep_epochs=state.epoch, metrics_title=loop.metrics_title,
                             hidden=loop.hidden_metrics)
    metrics: dict[str, float] = {}
    with StopRequest() as stop, RunningStatsWarmup(net):
        for epoch in range(state.epoch, loop.epochs):
            t0 = time.time()
            totals = train_one_epoch(loop, net, scaler, state, epoch, stop, d)
            if totals is None:  # a stop request, honoured after the optimiser step
                return _stop(loop, net, scaler, state, metrics, metrics_log, stop, resumed, d,
                             f"at epoch {epoch + 1}, batch {state.step}")
            train_time = time.time() - t0
            metrics = loop.evaluate()
            state.epoch, state.step = epoch + 1, 0
            score = loop.score(metrics)
            if score > state.best_score:
                state.best_score, state.best_epoch = score, epoch + 1
                if d.is_main:
                    loop.save_best(metrics, epoch + 1)
            # sums over all processes, with the stop flag: every process stops after the same epoch
            loss_sum, loss_n, seen, stopping = all_reduce_sum(
                torch.tensor([*totals, float(stop.signum is not None)]), d).tolist()
            record = {"epoch": epoch + 1, "train_loss": round(loss_sum / max(loss_n, 1), 5),
                      **{k: round(v, 5) for k, v in metrics.items()}, "lr": loop.optimizer.param_groups[0]["lr"],
                      "img_per_s": round(seen / max(train_time, 1e-9), 1), "time_s": round(time.time() - t0, 1)}
            metrics_log.log(record)
            save_last(loop, net, scaler, state, d)
            loop.log(epoch_line(record, loop.epochs, loop.metric_format))
            if stopping > 0:
                where = f"after epoch {epoch + 1}"
                return _stop(loop, net, scaler, state, metrics, metrics_log, stop, resumed, d, where)
    metrics_log.close()
    return FitResult(state, metrics, resumed=resumed)


def train_one_epoch(
    loop: Loop, net: nn.Module, scaler: torch.amp.GradScaler | None, state: FitState, epoch: int,
    stop: StopRequest, d: Distributed,
) -> tuple[float, float, float] | None:
    """One epoch from batch ``state.step`` on: (loss sum, loss count, images) of this process, or None when
    a stop request ended it early (after an optimiser step; ``state.step`` says where)."""
    model, loader = loop.model, loop.train_loader
    seed_all(loop.seed + 1000 * epoch + d.rank)
    loader.sampler.set_epoch(epoch)
    loader.sampler.start = state.step * loader.batch_size
    batches = state.step + len(loader)
    model.train()
    t0, seen, loss_sum, loss_n = time.time(), 0, 0.0, 0
    bar = progress(batches, state.step, f"epoch {epoch + 1}/{loop.epochs}", d.is_main)
    try:
        for i, batch in enumerate(loader, start=state.step):
            boundary = (i + 1) % loop.accum_steps == 0 or i + 1 == batches
            # DDP all-reduces gradients only on the micro-batch that ends an accumulation window
            sync = contextlib.nullcontext() if boundary or not d.enabled else model.no_sync()
            with sync:
                with torch.autocast(d.device.type, loop.amp_dtype or torch.float32, loop.amp_dtype is not None):
                    loss, n = loop.loss_fn(model, batch, epoch)
                (scaler.scale(loss / loop.accum_steps) if scaler else loss / loop.accum_steps).backward()
            # the one host sync per micro-batch: the finiteness check must precede the optimiser step
            loss_value = loss.detach().float().item()
            flags = torch.tensor([float(not math.isfinite(loss_value)), float(stop.signum is not None)])
            flags = all_reduce_sum(flags, d)
            if flags[0] > 0:
                loop.optimizer.zero_grad(set_to_none=True)
                raise _diverged(loop.output / LAST, loss_value, epoch, i)
            loss_sum, loss_n, seen = loss_sum + loss_value * n, loss_n + n, seen + n
            if boundary:
                _optimizer_step(loop, net, scaler)
                state.updates += 1
                loop.scheduler.step_update(state.updates)
                if loop.ema is not None:
                    loop.ema.update(net, step=state.updates)
                state.step = i + 1
            if bar is not None:
                rate = seen * d.world_size / max(time.time() - t0, 1e-9)
                lr = loop.optimizer.param_groups[0]["lr"]
                bar.set_postfix_str(f"loss {loss_sum / loss_n:.4f} lr {lr:.2e} {rate:.0f} img/s", refresh=False)
                bar.update(1)
            if flags[1] > 0 and boundary:
                return None
    finally:
        if bar is not None:
            bar.close()  # before any message, so an error's one line does not land on the bar
    return loss_sum, float(loss_n), float(seen)


def _diverged(last: Path, loss_value: float, epoch: int, i: int) -> TrainingDivergedError:
    kept = (f"{last} (after epoch {saved_epoch(last)}) is the last good checkpoint" if last.exists()
            else "no checkpoint was written yet")
    return TrainingDivergedError(
        f"loss became {loss_value} at epoch {epoch + 1}, batch {i + 1}: stopped without saving; {kept}. Lower the "
        "learning rate (--lr) or turn off --amp, then run the same command to resume"
    )


def _stop(loop: Loop, net: nn.Module, scaler, state: FitState, metrics: dict, metrics_log: MetricsLog,
          stop: StopRequest, resumed: bool, d: Distributed, where: str) -> FitResult:
    """Save ``last.pt`` on a stop request and say how to resume."""
    save_last(loop, net, scaler, state, d)
    signum = stop.signum or signal.SIGTERM
    loop.log(f"{signal.Signals(signum).name}: saved {loop.output / LAST} {where}; run the same command to resume")
    metrics_log.close()
    return FitResult(state, metrics, stopped_by=signum, resumed=resumed)


def _optimizer_step(loop: Loop, net: nn.Module, scaler: torch.amp.GradScaler | None) -> None:
    from timm.utils import dispatch_clip_grad

    if loop.clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(loop.optimizer)
        dispatch_clip_grad(net.parameters(), loop.clip_grad, mode="norm")
    if scaler is not None:
        scaler.step(loop.optimizer)
        scaler.update()
    else:
        loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
