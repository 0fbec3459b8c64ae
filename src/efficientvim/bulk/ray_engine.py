"""The Ray engine: the same job as a Ray Data pipeline.

paths (``rows_per_part`` per block) -> decoded and preprocessed in CPU tasks by this package's image reader (a
file that cannot be read is a row with its error: Ray's ``read_images`` would fail the whole block) -> the model
in a pool of actors (each loads the model once from the object store; one GPU each where the cluster has them)
-> each block written as one part by the workers themselves, through :mod:`efficientvim.writing` (Ray's
``write_parquet`` writes in place: a killed task leaves a part that cannot be read). A part is named by a hash
of its paths, so a task Ray retries after a worker died rewrites the same part instead of adding rows. Without
``address`` a local Ray instance is started on this machine, bound to 127.0.0.1.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ray.data.datasource import Datasink

from ..errors import EfficientViMError
from .job import Inference, Job, Preprocess
from .output import PART_GLOB, Output, part_path, write_part


def run_ray(job: Job, model, todo: Sequence[str], output: Output, *, runtime: str, precision: str, batch_size: int,
            rows_per_part: int, address: str | None, progress: Callable[[int, int], None]) -> dict:
    import ray

    started = _connect(ray, address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # one bar, ours, with images/s
        context.print_on_execution_start = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = gpus if gpus and runtime == "eager" else max(1, cpus // 2)  # the other half decodes
        share = 1 if cpus >= 2 else 0.5  # a one-CPU cluster: the actor and the decode tasks take half each
        preprocess = Preprocess(model)
        model_ref = ray.put(model.cpu())  # once in the object store; each actor reads it (held here until the end)
        # blocks of at most rows_per_part paths, and enough of them (4 per CPU) for every CPU to have work
        block = min(rows_per_part, max(batch_size, math.ceil(len(todo) / (4 * cpus))))
        items = ray.data.from_items([{"path": p} for p in todo], override_num_blocks=math.ceil(len(todo) / block))
        # decoded in CPU tasks of their own: their memory (a block of pixels) differs from the actors', so Ray
        # does not fuse the two (the actors would then decode too)
        decoded = items.map_batches(_decode, fn_kwargs={"preprocess": preprocess}, batch_format="numpy",
                                    batch_size=None, num_cpus=share, memory=rows_per_part * _pixel_bytes(model))
        rows = decoded.map_batches(
            _Infer, fn_constructor_kwargs={"model": [model_ref], "job": job, "runtime": runtime, "precision": precision,
                                           "batch_size": batch_size, "preprocess": preprocess},
            batch_format="numpy", batch_size=None, num_gpus=1 if gpus and runtime == "eager" else 0, num_cpus=share,
            **actor_pool(ray, actors))  # Ray Data restarts a dead actor and retries its tasks by itself
        before = {p.name for p in output.parts.glob(PART_GLOB)} if output.parts.is_dir() else set()
        output.parts.mkdir(parents=True, exist_ok=True)
        watcher = _Watcher(output.parts, before, progress)
        watcher.start()
        try:
            rows.write_datasink(_PartsSink(output.parts, job.metadata(runtime, precision, "ray")))
        finally:
            watcher.stop()
        return watcher.done
    finally:
        if started:
            ray.shutdown()


def _connect(ray, address: str | None) -> bool:
    """Join ``address`` (a running cluster), or start a local instance on 127.0.0.1; True when started here."""
    import logging

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # its start-up notes are not the user's business
    if address:
        _reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EfficientViMError(f"could not join the Ray cluster at {address} ({' '.join(str(e).split())[:200]}):"
                                    " is it running (ray start --head), and is the address right?") from None
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False, _node_ip_address="127.0.0.1")
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    return True


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse in one line a HOST:PORT nobody answers at (ray.init would retry it for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EfficientViMError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}): start one "
                                "(ray start --head) or check --address / RAY_ADDRESS") from None


def actor_pool(ray, size: int) -> dict:
    """``map_batches`` arguments for a pool of ``size`` actors in this Ray release: ``compute=`` from Ray 2.51
    (``concurrency=`` deprecated there), ``concurrency=`` from 2.9 to 2.50."""
    version = tuple(int(x) for x in ray.__version__.split(".")[:2])
    if version >= (2, 51):
        return {"compute": ray.data.ActorPoolStrategy(size=size)}
    return {"concurrency": size}


def _pixel_bytes(model) -> int:
    """Bytes of one image's pixels as decoded for the model (uint8, resized and cropped)."""
    channels, height, width = model.pretrained_cfg["input_size"]
    return channels * height * width


def _decode(batch: dict, preprocess: Preprocess) -> dict:
    """A block of paths -> resized and cropped uint8 pixels (zeros where unreadable), ok flags and errors ("" for
    none); normalised in the actor."""
    results = [preprocess.pixels(str(p)) for p in batch["path"]]
    shape = next((x.shape for x, _ in results if x is not None), (1, 1, 3))
    inputs = np.stack([x if x is not None else np.zeros(shape, np.uint8) for x, _ in results])
    return {"path": batch["path"], "input": inputs, "ok": np.array([x is not None for x, _ in results]),
            "error": np.array([e or "" for _, e in results], dtype=object)}


class _Infer:
    """One actor: the model loaded once (from the object store), in the runtime and precision asked for."""

    def __init__(self, model, job: Job, runtime: str, precision: str, batch_size: int, preprocess: Preprocess) -> None:
        import ray
        import torch

        model = ray.get(model[0])  # a reference inside a list: passed as is, read here
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        if torch.cuda.is_available() and runtime == "eager":
            model = model.cuda()
        self.device = next(model.parameters()).device
        self.job, self.batch_size, self.preprocess = job, batch_size, preprocess
        self.inference = Inference(model, job, runtime, precision)

    def __call__(self, batch: dict):

        from .job import rows_table

        finish = self.preprocess.finish
        inputs = [finish(x).to(self.device) if ok else None for x, ok in zip(batch["input"], batch["ok"])]
        errors = [e or None for e in batch["error"]]
        return rows_table(self.job, [str(p) for p in batch["path"]], inputs, errors, self.inference, self.batch_size)


class _PartsSink(Datasink):
    """Ray Data datasink: each write task's blocks as one part, named by its paths, written whole."""

    def __init__(self, folder: Path, metadata: dict) -> None:
        self.folder, self.metadata = folder, metadata

    def write(self, blocks, ctx) -> int:
        import pyarrow as pa

        tables = [b for b in blocks if b.num_rows]
        if not tables:
            return 0
        table = pa.concat_tables(tables)
        write_part(part_path(self.folder, table.column("path").to_pylist()), table, self.metadata)
        return table.num_rows


class _Watcher(threading.Thread):
    """Counts the rows and errors of parts as they appear, for the progress bar and the summary."""

    def __init__(self, folder: Path, before: set[str], progress: Callable[[int, int], None]) -> None:
        super().__init__(daemon=True)
        self.folder, self.seen, self.progress = folder, set(before), progress
        self.done = {"rows": 0, "errors": 0}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.poll()

    def poll(self) -> None:
        import pyarrow.parquet as pq

        for part in sorted(self.folder.glob(PART_GLOB)):
            if part.name in self.seen:
                continue
            self.seen.add(part.name)
            errors = pq.read_table(part, columns=["error"]).column("error")
            rows, failed = len(errors), len(errors) - errors.null_count
            self.done["rows"] += rows
            self.done["errors"] += failed
            self.progress(rows, failed)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        self.poll()
