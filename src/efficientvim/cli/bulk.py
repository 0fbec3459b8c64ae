"""What ``predict --output`` and ``embed`` share: the bulk options and the run (nothing here imports torch)."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import EfficientViMError
from .common import model_from_args, positive_int, printable, resolve_precision, resolve_runtime, warn_if_random


def add_bulk_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--output", "-o", required=required, metavar="OUT",
                   help="write rows to Parquet: a folder of parts, or one .parquet file; a rerun resumes it")
    p.add_argument("--overwrite", action="store_true", help="start OUT again (it holds rows of another model)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: a Ray Data pipeline ('efficientvim[ray]')")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="the Ray cluster to join (default: RAY_ADDRESS, else a local Ray instance on this machine)")
    p.add_argument("--rows-per-part", type=positive_int, default=1024,
                   help="paths per Parquet part (a killed job loses at most the part in flight; default 1024)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (the summary line stays)")


def run_bulk_command(args: argparse.Namespace, task: str, topk: int = 5) -> int:
    """Run ``task`` over ``args.source`` into ``args.output``; one summary line on stdout."""
    if args.address and args.engine != "ray":
        raise EfficientViMError("--address joins a Ray cluster: add --engine ray")
    from ..errors import import_extra

    if args.engine == "ray":
        import_extra("ray", "ray", "--engine ray")
    import_extra("pyarrow", "parquet", "Writing Parquet")
    from ..bulk import run_bulk, summary_line

    model = model_from_args(args)
    if getattr(args, "img_size", None):
        from ..predict import set_input_size

        set_input_size(model, args.img_size)
    warn_if_random(args)
    precision = resolve_precision(args.precision, None, args.runtime)
    runtime, line = resolve_runtime(args.runtime, precision)
    summary = run_bulk(model, args.source, args.output, task, topk=topk, engine=args.engine, runtime=runtime,
                       announce=line,
                       precision=precision, batch_size=args.batch_size, rows_per_part=args.rows_per_part,
                       threads=args.threads, overwrite=args.overwrite, quiet=args.quiet,
                       address=args.address or os.environ.get("RAY_ADDRESS"),
                       log=lambda line: print(printable(line), file=sys.stderr))
    print(summary_line(task, summary, args.output))
    return 0

