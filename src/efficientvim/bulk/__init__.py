"""Bulk inference to Parquet: ``predict`` and ``embed`` over a folder, a listing or a glob, on this machine or a Ray
cluster, resumable, every path exactly once (see :mod:`.job` for the rows, :mod:`.output` for the parts).

    from efficientvim.bulk import run_bulk
    summary = run_bulk(model, "photos/", "embeddings/", task="embed")
    pandas.read_parquet("embeddings/")   # path, embedding, error
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..errors import EfficientViMError
from .job import Job
from .local import run_local, timed_progress
from .output import Output
from .sources import list_source

ENGINES = ("local", "ray")


def run_bulk(model: nn.Module, source: str, out: str | os.PathLike, task: str = "predict", *, topk: int = 5,
             engine: str = "local", runtime: str = "eager", precision: str = "fp32", batch_size: int = 32,
             rows_per_part: int = 1024, threads: int | None = None, overwrite: bool = False, quiet: bool = False,
             address: str | None = None, log=print, announce: str | None = None) -> dict:
    """Run ``task`` (predict or embed) over ``source`` into ``out`` (a folder of parts or a ``.parquet`` file) and
    return the summary: ``listed``, ``done`` (rows written now), ``errors``, ``skipped`` (already in ``out``),
    ``seconds``, ``images_per_s``, ``rows`` (in ``out``), ``repeated`` (entries listed twice, kept once).
    ``announce``: a line ``log`` says once there is work to do (the runtime ``auto`` chose)."""
    if engine not in ENGINES:
        raise EfficientViMError(f"unknown engine {engine!r}: local or ray")
    paths, repeated = list_source(source)
    job = Job.of(model, task, topk)
    output = Output(out, job, overwrite)
    todo = [p for p in paths if p not in output.done]
    summary = {"listed": len(paths), "repeated": repeated, "skipped": len(paths) - len(todo), "done": 0,
               "errors": 0, "seconds": 0.0, "images_per_s": 0.0}
    if repeated:
        log(f"note: {repeated} entries of {source} are repeats: each path is done once")
    if not todo:
        summary["rows"] = output.finish()
        log(f"nothing to do: all {len(paths)} paths of {source} are in {out}")
        return summary
    if announce:
        log(announce)
    progress, close = timed_progress(len(todo), task, quiet)
    try:
        if engine == "local":
            from ..predict import decode_threads

            done = run_local(job, model, todo, output, runtime=runtime, precision=precision, batch_size=batch_size,
                             rows_per_part=rows_per_part, threads=threads or decode_threads(), progress=progress)
        else:
            from .ray_engine import run_ray

            done = run_ray(job, model, todo, output, runtime=runtime, precision=precision, batch_size=batch_size,
                           rows_per_part=rows_per_part, address=address, progress=progress)
    finally:
        seconds, _ = close()
    summary.update(done=done["rows"], errors=done["errors"], seconds=seconds,
                   images_per_s=done["rows"] / seconds if seconds else 0.0)
    summary["rows"] = output.finish()
    return summary


def summary_line(task: str, summary: dict, out: str | Path) -> str:
    """The one line a bulk job ends with."""
    return (f"{task}: {summary['done']} images done ({summary['errors']} errors), {summary['skipped']} skipped "
            f"(already in {out}), {summary['images_per_s']:.1f} images/s; {summary['rows']} rows in {out}")
