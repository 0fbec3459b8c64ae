"""The local engine: one process, images decoded by a pool of threads ahead of the model, a part written every
``rows_per_part`` paths. Stopped by Ctrl-C or SIGTERM, it writes the rows it has finished before it exits;
killed, it loses at most the part in flight."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from .job import Inference, Job, Preprocess, rows_table
from .output import Output


def run_local(job: Job, model, todo: Sequence[str], output: Output, *, runtime: str, precision: str,
              batch_size: int, rows_per_part: int, threads: int, progress: Callable[[int, int], None]) -> dict:
    """Do ``todo`` into ``output``; ``progress(rows, errors)`` after each batch. Returns rows and errors done."""
    import pyarrow as pa

    preprocess = Preprocess(model)
    inference = Inference(model, job, runtime, precision)
    metadata = job.metadata(runtime, precision, "local")
    done = {"rows": 0, "errors": 0}
    finished: list = []  # tables of the part being gathered

    def write() -> None:
        if finished:
            output.write_part(pa.concat_tables(finished), metadata)
            finished.clear()

    def decode(chunk: Sequence[str]) -> list:
        return [preprocess(p) for p in chunk]

    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(threads) as pool:
        ahead = [pool.submit(decode, c) for c in chunks[: threads + 1]]  # batches decoded while the model runs
        try:
            for i, chunk in enumerate(chunks):
                decoded = ahead[i].result()
                if i + threads + 1 < len(chunks):
                    ahead.append(pool.submit(decode, chunks[i + threads + 1]))
                errors = [e for _, e in decoded]
                finished.append(rows_table(job, chunk, [x for x, _ in decoded], errors, inference, batch_size))
                failed = sum(e is not None for e in errors)
                done["rows"] += len(chunk)
                done["errors"] += failed
                progress(len(chunk), failed)
                if sum(t.num_rows for t in finished) >= rows_per_part:
                    write()
        finally:  # Ctrl-C, SIGTERM or an error: the rows finished so far are kept
            for later in ahead:
                later.cancel()
            write()
    return done


def timed_progress(total: int, desc: str, quiet: bool):
    """(progress callback, close() -> (seconds, rows)): a bar with images/s on stderr, or nothing when quiet."""
    import sys

    from tqdm import tqdm

    start = time.monotonic()
    bar = None if quiet else tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr,
                                  mininterval=0.5 if sys.stderr.isatty() else 5.0)
    count = [0, 0]

    def update(rows: int, errors: int) -> None:
        count[0] += rows
        count[1] += errors
        if bar is not None:
            bar.update(rows)
            if errors or count[1]:
                bar.set_postfix(errors=count[1], refresh=False)

    def close() -> tuple[float, int]:
        if bar is not None:
            bar.close()
        return time.monotonic() - start, count[0]

    return update, close
