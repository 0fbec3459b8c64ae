"""``efficientvim predict``: top-k classes of image files, folders or globs."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import EfficientViMError
from .bulk import add_bulk_args, run_bulk_command
from .common import (
    add_model_args,
    add_runtime_args,
    inference_for,
    input_size,
    model_from_args,
    positive_int,
    printable,
    warn_if_random,
)

HELP = "classify images (files, folders, globs) and print the top-k classes, or write them to Parquet (--output)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders (searched recursively) or globs")
    add_model_args(p)
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--img-size", type=input_size, metavar="N", help="input size (default: the model's own, e.g. 224)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--json", action="store_true", help="print one JSON array with an entry per image")
    add_runtime_args(p, "predict")
    p.add_argument("--full-resolution", action="store_true",
                   help="classify each image at its own size, no resize or crop, one image per batch (large "
                   "images: satellite, medical, scans; HSM-SSD's cost grows linearly with the pixels)")
    p.add_argument("--threads", type=positive_int,
                   help="image decoding threads (default: up to 4, one per core)")
    add_bulk_args(p, required=False)


def run(args: argparse.Namespace) -> int:
    if args.output is not None:  # bulk: Parquet rows, resumable, errors as rows
        wrong = [o for o, v in (("--json", args.json), ("--full-resolution", args.full_resolution)) if v]
        if wrong or len(args.images) != 1:
            extra = f" and not {', '.join(wrong)}" if wrong else ""
            raise EfficientViMError(f"--output takes one SOURCE (a folder, listing or glob){extra}")
        args.source = args.images[0]
        return run_bulk_command(args, "predict", args.topk)
    bulk_only = [o for o, v in (("--overwrite", args.overwrite), ("--engine", args.engine != "local"),
                                ("--address", args.address), ("--quiet", args.quiet)) if v]
    if bulk_only:
        raise EfficientViMError(f"{', '.join(bulk_only)} applies with --output (bulk prediction to Parquet)")
    from ..predict import check_images, classify_files, expand_inputs, set_input_size

    skipped: list = []
    paths = expand_inputs(args.images, skipped)
    if args.img_size is not None and args.full_resolution:
        raise EfficientViMError("--img-size and --full-resolution exclude each other: choose one")
    model = model_from_args(args)
    if args.img_size is not None:
        set_input_size(model, args.img_size)
    check_images(model, paths, full_resolution=args.full_resolution)
    warn_if_random(args)
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        print(f"note: skipped {len(skipped)} files that are not images of the formats read: "
              f"{', '.join(printable(str(p)) for p in skipped[:3])}{more}", file=sys.stderr)
    runner = inference_for(model, args.precision, args.runtime)
    results = classify_files(runner, paths, args.topk, args.batch_size, args.threads, args.full_resolution)
    if args.json:
        print(json.dumps(list(results), indent=2))
        return 0
    for result in results:
        print(printable(result["image"]))  # a name holding a newline would forge a line of results
        for p in result["predictions"]:
            print(f"  {p['rank']:>2}  {100 * p['probability']:6.2f}%  {printable(p['label'])}")
    return 0
