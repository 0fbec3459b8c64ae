"""``efficientvim eval``: top-1, top-5 and loss of a checkpoint on a validation split; with ``--task``,
COCO mAP of a detector or mIoU of a segmenter written by ``efficientvim train --task``."""

from __future__ import annotations

import argparse

from .common import add_runtime_args, input_size, non_negative_int, positive_int, resolve_precision
from .train import DENSE_TASKS

HELP = "top-1/top-5/loss of a checkpoint on an ImageFolder (default: digits val); mAP or mIoU with --task"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the authors' .pth, a timm state dict, or our weights/last.pt; "
                   "with --task detection|segmentation: the best.safetensors or last.pt its training wrote")
    p.add_argument("--task", choices=("classification", *DENSE_TASKS), default="classification",
                   help="what the checkpoint does (default classification)")
    p.add_argument("--model", help="model name, needed when the file does not name its architecture")
    p.add_argument("--data", help="folder with val/<class>/... (or class folders directly); default: digits val. "
                   "Detection: val/ and annotations/instances_val.json; segmentation: val/images and val/masks")
    p.add_argument("--val-ann", help="detection: the COCO instances JSON of the val images")
    p.add_argument("--dataset", default="", help="a timm create_dataset name read from --data")
    p.add_argument("--img-size", type=input_size, help="evaluation resolution (default: the checkpoint's)")
    p.add_argument("--batch-size", type=positive_int, help="default 64 (dense tasks: 16)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data loading processes (default 2)")
    p.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    add_runtime_args(p, "classification")
    p.add_argument("--strict-data", action="store_true", help="stop at the first unreadable image")


def run(args: argparse.Namespace) -> int:
    from ..errors import EfficientViMError

    if args.task != "classification":
        wrong = [o for o, v in (("--model", args.model), ("--dataset", args.dataset), ("--img-size", args.img_size),
                                ("--amp", args.amp), ("--strict-data", args.strict_data),
                                ("--precision", args.precision != "fp32"),
                                ("--runtime", args.runtime not in ("auto", "eager"))) if v]
        if wrong:
            raise EfficientViMError(f"{', '.join(wrong)} applies to classification only, not --task {args.task}")
        from ..train.dense import evaluate_dense_checkpoint, metric_line

        m = evaluate_dense_checkpoint(args.checkpoint, args.task, args.data, args.val_ann, args.batch_size or 16,
                                      args.workers)
        print(f"{args.task} on {m['images']} images: {metric_line(args.task, m)}")
        return 0
    if args.val_ann:
        raise EfficientViMError("--val-ann applies to --task detection only")
    from ..train import evaluate_checkpoint
    from .common import resolve_runtime, say

    if args.amp and args.runtime == "auto":
        args.runtime = "eager"  # autocast is PyTorch's
    precision = resolve_precision(args.precision, runtime=args.runtime)
    runtime, line = resolve_runtime(args.runtime, precision)
    m = evaluate_checkpoint(args.checkpoint, args.model, args.data, args.dataset, args.img_size,
                            args.batch_size or 64, args.workers, args.amp, args.strict_data, precision, runtime)
    say(line)
    left_out = ""
    if m["unreadable"]:
        names = ", ".join(m["unreadable_files"][:5]) + (", ..." if m["unreadable"] > 5 else "")
        left_out = f" ({m['unreadable']} unreadable left out: {names})"
    print(f"{m['model']} at {m['img_size']}px on {m['images']} images{left_out}: "
          f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}")
    return 0
