"""A benchmark's rows: the record of one timed setting, ratios against timm with their spread, the CSV/JSON
files and the machine they were measured on."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..writing import write_text


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


def write_results(results: Sequence[Result], out_dir: str | Path, meta: dict) -> dict[str, Path]:
    """Write ``results.csv`` and ``results.json`` (with run metadata); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in results]
    csv_path, json_path = out_dir / "results.csv", out_dir / "results.json"
    table = io.StringIO(newline="")
    columns = [c for c in rows[0] if c != "times_ms"] if rows else []
    writer = csv.DictWriter(table, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(csv_path, table.getvalue())
    write_text(json_path, json.dumps({"meta": meta, "results": rows}, indent=1))
    return {"csv": csv_path, "json": json_path}


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
