"""``efficientvim embed``: the MSF head's pooled features of every image of SOURCE, as Parquet."""

from __future__ import annotations

import argparse

from .bulk import add_bulk_args, run_bulk_command
from .common import add_model_args, add_runtime_args, input_size, positive_int

HELP = "write the embedding of every image of a folder, listing or glob to Parquet (resumable)"
DESCRIPTION = (
    "Rows of path, embedding (float32, model.num_features long: the MSF head's pooled features, "
    "forward_head(forward_features(x), pre_logits=True) with the model's own preprocessing) and error. "
    "A rerun with the same command resumes; a finished OUT is left as it is."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE",
                   help="a folder (recursive), a .txt/.csv/.parquet listing of paths or URIs, or a quoted glob")
    add_model_args(p)
    add_bulk_args(p, required=True)
    p.add_argument("--img-size", type=input_size, metavar="N", help="input size (default: the model's own)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--threads", type=positive_int, help="image decoding threads (local engine; default up to 4)")
    add_runtime_args(p, "embed")


def run(args: argparse.Namespace) -> int:
    return run_bulk_command(args, "embed")
