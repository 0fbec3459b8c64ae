"""The task-agnostic training loop: ``fit`` drives any model, loss and evaluation through epochs.

It owns what every task needs: gradient accumulation, AMP, clipping, the optimiser and lr
schedule, EMA, progress bars, metrics files, and crash safety:

* ``last.pt`` is written atomically (temporary file, then rename) after every epoch and when a
  SIGTERM/SIGINT arrives; running the same command again resumes from it, mid-epoch if need be;
* a non-finite loss stops the run before the optimiser step, leaving ``last.pt`` as it was;
* only rank 0 writes; metrics and stop requests are reduced over all processes.

``last.pt`` holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import CheckpointError, TrainingDivergedError

LAST = "last.pt"
METRICS = "metrics.jsonl"
# settings that do not change what a run computes: a rerun may change them and still resume
RUN_ONLY_SETTINGS = ("workers", "output")


# ---------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local_rank, dev)


def close_distributed(d: Distributed) -> None:
    """Leave the process group together: every rank waits for the others, then tears its group down, so
    no rank exits while another still talks to it (an abort at exit on multi-node runs otherwise)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def match_grad_strides(model: nn.Module, probe_loss: Callable[[], torch.Tensor]) -> None:
    """Prepare parameters whose gradients come with other strides than theirs, before DDP wraps the model.

    Kernels may return a gradient with any stride on a size-1 axis: a CPU depthwise (C, 1, 3, 3) weight
    gets channels-last strides, a (27, 160, 1) Conv1d weight a stride of 160 on its last axis. The
    memory is the same and autograd accepts it, but DDP lays its gradient buckets out by the
    parameter's strides, compares them exactly and warns ("grad strides do not match bucket view
    strides"). One backward pass of ``probe_loss`` in eval mode (no BatchNorm statistics or random
    numbers used) shows the strides, then the gradients are cleared. Depthwise weights take their
    gradient's channels-last strides (oneDNN's own layout for them); for other weights new strides
    can slow the forward pass, so their mismatch, checked here to be on size-1 axes only, is left to
    DDP's one copy per step and its warning filtered as the false alarm it is.
    """
    was_training = model.training
    model.eval()
    probe_loss().backward()
    model.train(was_training)
    others = False
    for p in model.parameters():
        g = p.grad
        p.grad = None
        if g is None or g.stride() == p.stride() or not _same_layout(g, p):
            continue
        if p.dim() == 4 and p.shape[1] == 1:
            p.data = torch.empty_strided(p.shape, g.stride(), dtype=p.dtype, device=p.device).copy_(p.data)
        else:
            others = True
    if others:
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same memory layout: equal strides on every axis longer than 1, none broadcast (stride 0)."""
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride())) and 0 not in a.stride()


def all_reduce_sum(values: torch.Tensor, d: Distributed) -> torch.Tensor:
    """Sum ``values`` over all processes, returned on the CPU (unchanged in a single process)."""
    if d.enabled:
        values = values.to(d.device, copy=True)  # nccl reduces CUDA tensors only
        dist.all_reduce(values)
    return values.cpu()


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, skipping the batches already trained on.

    The shuffle depends only on (seed, epoch), so the skipped prefix is the same one the
    interrupted run consumed.
    """

    def __init__(self, dataset, d: Distributed, seed: int) -> None:
        super().__init__(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


# ---------------------------------------------------------------- checkpoints and logs


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, flushed to disk, then renamed over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_training_state(path: Path) -> dict:
    """Read a ``last.pt`` without executing code (tensors and plain containers only). The tensors are mapped
    from the file, not read: a look at its settings or position (``check_resume``) costs no full read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated files and foreign pickles raise many types
        raise CheckpointError(
            f"cannot resume: {path} is unreadable ({type(e).__name__}); move it away to start afresh"
        ) from None


def check_resume(output: Path, settings: dict, allow_changes: bool, log: Callable[[str], None]) -> bool:
    """True when ``output`` holds a run to resume. A run saved with other ``settings`` is refused, naming
    each change, unless ``allow_changes`` (then the changes are logged and the run continues)."""
    last = output / LAST
    if not last.exists():
        return False
    saved = load_training_state(last).get("settings")
    if saved is None:  # written before settings were recorded
        return True
    changes = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    changes += [f"{k} {v!r} -> unset" for k, v in saved.items() if k not in settings]
    if changes and not allow_changes:
        raise CheckpointError(
            f"{output} holds a run with other settings ({'; '.join(changes)}): pass --resume to continue it with "
            f"these settings, or choose another --output (or remove {last}) to start afresh"
        )
    if changes:
        log(f"resuming {output} with changed settings: {'; '.join(changes)}")
    return True


class MetricsLog:
    """One JSON line per epoch in metrics.jsonl, TensorBoard scalars and curves.png (rank 0 only)."""

    def __init__(self, output: Path, enabled: bool, keep_epochs: int, metrics_title: str = "accuracy (%)",
                 hidden: tuple[str, ...] = ()) -> None:
        self.path = output / METRICS
        self.metrics_title, self.hidden = metrics_title, hidden
        self.output = output
        self.enabled = enabled
        self.records: list[dict] = []
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            # drop epochs the resumed checkpoint does not include (written after its save)
            with open(self.path) as f:
                self.records = [r for r in map(json.loads, filter(str.strip, f)) if r["epoch"] <= keep_epochs]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.records)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # an optional extra: metrics.jsonl and curves.png carry the same numbers
            print("note: no TensorBoard logs (tensorboard is not installed: pip install "
                  "'efficientvim[tensorboard]')", file=sys.stderr)
            return
        self.writer = SummaryWriter(str(output / "tensorboard"))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()
        plot_curves(self.records, self.output / "curves.png", self.metrics_title, self.hidden)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# the sources of a metric (its name's prefix): one colour each, the same in both panels
SOURCES = {"train": "tab:blue", "val": "tab:orange", "ema": "tab:green"}
LINE_STYLES = ("-", "--", ":", "-.")  # within a panel, one per metric (top-1, top-5 ...)


def plot_curves(records: list[dict], path: Path, metrics_title: str = "accuracy (%)", hidden: tuple[str, ...] = ()
                ) -> dict:
    """Losses on the left, every other evaluation metric (accuracies, mAP, mIoU) on the right, against whole
    epochs; ``hidden`` metrics are left out (top-5 of 5 classes or fewer is always 100%). A metric's colour
    says what it measures (training batches, the model on val, its EMA on val), so a colour means the same in
    both panels; its line style which metric it is. Returns what was drawn: ``lines`` {metric: {panel, color,
    style}} and the epoch ``ticks``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    skip = {"epoch", "lr", "time_s", "img_per_s", *hidden}
    keys = [k for k in records[-1] if k not in skip and isinstance(records[-1][k], int | float)]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    styles: dict[str, dict[str, str]] = {"loss": {}, "metrics": {}}  # per panel: metric -> line style
    drawn = {}
    for key in keys:
        prefix = key.split("_", 1)[0]
        source = prefix if prefix in ("train", "ema") else "val"
        panel = "loss" if key.endswith("loss") else "metrics"
        metric = key.removeprefix(source + "_").removeprefix("val_")
        style = styles[panel].setdefault(metric, LINE_STYLES[len(styles[panel]) % len(LINE_STYLES)])
        ax = ax_loss if panel == "loss" else ax_acc
        ax.plot(epochs, [r.get(key, math.nan) for r in records], marker=".", label=key, color=SOURCES[source],
                linestyle=style)
        drawn[key] = {"panel": panel, "color": SOURCES[source], "style": style}
    for ax, title in ((ax_loss, "loss"), (ax_acc, metrics_title)):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    ticks = [float(t) for t in ax_loss.get_xticks() if epochs[0] <= t <= epochs[-1]]
    plt.close(fig)
    os.replace(tmp, path)
    return {"lines": drawn, "ticks": ticks}


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


# ---------------------------------------------------------------- the loop


@dataclass
class FitState:
    """Where a run stands; saved in last.pt. ``step`` counts batches done in epoch ``epoch``."""

    epoch: int = 0
    step: int = 0
    updates: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0


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
            loop.log(_epoch_line(record, loop.epochs, loop.metric_format))
            if stopping > 0:
                where = f"after epoch {epoch + 1}"
                return _stop(loop, net, scaler, state, metrics, metrics_log, stop, resumed, d, where)
    metrics_log.close()
    return FitResult(state, metrics, resumed=resumed)


def resume(loop: Loop, net: nn.Module, scaler: torch.amp.GradScaler | None) -> tuple[FitState, bool]:
    """Load ``output/last.pt`` into the model, EMA, optimiser and scaler; (its position, True), or a fresh start."""
    last = loop.output / LAST
    if not last.exists():
        return FitState(), False
    saved = load_training_state(last)
    try:
        net.load_state_dict(saved["model"])
        if loop.ema is not None and "model_ema" in saved:
            loop.ema.module.load_state_dict(saved["model_ema"])
        loop.optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"cannot resume from {last}: it belongs to a different model or setup "
            f"({str(e).strip().splitlines()[0][:120]}); use another --output or move it away"
        ) from None
    if scaler is not None and "scaler" in saved:
        scaler.load_state_dict(saved["scaler"])
    state = FitState(**saved["fit_state"])
    where = f"epoch {state.epoch + 1}/{loop.epochs}" + (f", batch {state.step}" if state.step else "")
    if state.epoch >= loop.epochs:
        where = f"the end ({loop.epochs} epochs done)"
    loop.log(f"resumed from {last} at {where}")
    return state, True


def save_last(loop: Loop, net: nn.Module, scaler: torch.amp.GradScaler | None, state: FitState, d: Distributed) -> None:
    """Write ``output/last.pt`` (rank 0): weights, EMA, optimiser, scaler, position, metadata and settings."""
    if not d.is_main:
        return
    blob = {"model": net.state_dict(), "optimizer": loop.optimizer.state_dict(), "fit_state": asdict(state)}
    if loop.ema is not None:
        blob["model_ema"] = loop.ema.module.state_dict()
    if scaler is not None:
        blob["scaler"] = scaler.state_dict()
    blob["metadata"] = loop.metadata()
    blob["settings"] = loop.settings
    atomic_save(blob, loop.output / LAST)


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
    bar = _progress(batches, state.step, f"epoch {epoch + 1}/{loop.epochs}", d.is_main)
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
    kept = (f"{last} (after epoch {_saved_epoch(last)}) is the last good checkpoint" if last.exists()
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


def summary_line(result: FitResult, seconds: float, best: str, weights: Path, last: str = "") -> str:
    """The line every run ends with: ``done in 1m04s: best top-1 98.61% (epoch 13)[, last]; weights in PATH``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    head = "stopped" if result.stopped_by is not None else "done"
    last = f", {last}" if last else ""
    return f"{head} in {minutes}m{secs:02d}s: best {best} (epoch {result.state.best_epoch}){last}; weights in {weights}"


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


def _saved_epoch(path: Path) -> int:
    try:
        return int(load_training_state(path)["fit_state"]["epoch"])
    except (CheckpointError, KeyError):
        return 0


def _progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # a pipe or file gets a line every few seconds instead of a redraw per batch
    interval = 0.2 if sys.stderr.isatty() else 5.0
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", mininterval=interval, dynamic_ncols=True,
                leave=False)


def _epoch_line(record: dict, epochs: int, metric_format: str = "{:.2f}%") -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train_loss']:.4f}"]
    for key, value in record.items():
        if key in ("epoch", "train_loss", "lr", "img_per_s", "time_s"):
            continue
        parts.append(f"{key} {value:.4f}" if key.endswith("loss") else f"{key} {metric_format.format(value)}")
    parts.append(f"{record['img_per_s']:.0f} img/s, {record['time_s']:.0f}s")
    return "  ".join(parts)
