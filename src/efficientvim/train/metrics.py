"""What a run reports: one JSON line per epoch in ``metrics.jsonl``, TensorBoard scalars, ``curves.png``, the
progress bar and the epoch and summary lines."""


from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..writing import append_line, disk_full, is_disk_full, write_figure, write_text

if TYPE_CHECKING:  # annotations only: the loop imports this module
    from .loop import FitResult

METRICS = "metrics.jsonl"


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
            self.records = [r for r in read_metrics(self.path) if r["epoch"] <= keep_epochs]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # an optional extra: metrics.jsonl and curves.png carry the same numbers
            print("note: no TensorBoard logs (tensorboard is not installed: pip install "
                  "'efficientvim[tensorboard]')", file=sys.stderr)
            return
        self.writer = SummaryWriter(str(output / "tensorboard"))
        # its writer thread prints a traceback when the disk is full, then the next call raises: that call says it
        self._excepthook = threading.excepthook
        threading.excepthook = self._quiet_full_disk

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        append_line(self.path, json.dumps(record))
        if self.writer is not None:
            try:
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, int | float):
                        self.writer.add_scalar(key, value, record["epoch"])
                self.writer.flush()
            except Exception as e:
                if not is_disk_full(e):
                    raise
                self.close()
                raise disk_full(self.output / "tensorboard" / "events.out.tfevents", None) from None
        plot_curves(self.records, self.output / "curves.png", self.metrics_title, self.hidden)

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except Exception as e:
                if not is_disk_full(e):
                    raise
            finally:
                threading.excepthook = self._excepthook

    def _quiet_full_disk(self, args: threading.ExceptHookArgs) -> None:
        if not (is_disk_full(args.exc_value) and type(args.thread).__module__.startswith("tensorboard")):
            self._excepthook(args)


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``. A line that is not a whole record (an append cut short by a full disk
    or a kill) is dropped with a note naming it: the epochs after it are logged again when the run resumes."""
    records, torn = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
        else:
            torn.append(number)
    if torn:
        print(f"note: {path} line {', '.join(map(str, torn))} is not a whole record (a write cut short): dropped",
              file=sys.stderr)
    return records


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
    write_figure(fig, path, dpi=100)
    ticks = [float(t) for t in ax_loss.get_xticks() if epochs[0] <= t <= epochs[-1]]
    plt.close(fig)
    return {"lines": drawn, "ticks": ticks}


def summary_line(result: FitResult, seconds: float, best: str, weights: Path, last: str = "") -> str:
    """The line every run ends with: ``done in 1m04s: best top-1 98.61% (epoch 13)[, last]; weights in PATH``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    head = "stopped" if result.stopped_by is not None else "done"
    last = f", {last}" if last else ""
    return f"{head} in {minutes}m{secs:02d}s: best {best} (epoch {result.state.best_epoch}){last}; weights in {weights}"


def progress(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    # a pipe or file gets a line every few seconds instead of a redraw per batch
    interval = 0.2 if sys.stderr.isatty() else 5.0
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", mininterval=interval, dynamic_ncols=True,
                leave=False)


def epoch_line(record: dict, epochs: int, metric_format: str = "{:.2f}%") -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"train loss {record['train_loss']:.4f}"]
    for key, value in record.items():
        if key in ("epoch", "train_loss", "lr", "img_per_s", "time_s"):
            continue
        parts.append(f"{key} {value:.4f}" if key.endswith("loss") else f"{key} {metric_format.format(value)}")
    parts.append(f"{record['img_per_s']:.0f} img/s, {record['time_s']:.0f}s")
    return "  ".join(parts)
