"""``efficientvim eval``: top-1, top-5 and loss of a checkpoint on a validation split."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5/loss of a checkpoint on an ImageFolder (default: digits val)")
    p.add_argument("--checkpoint", required=True, help="the authors' .pth, a timm state dict, or our weights/last.pt")
    p.add_argument("--model", help="model name, needed when the file does not name its architecture")
    p.add_argument("--data", help="folder with val/<class>/... (or class folders directly); default: digits val")
    p.add_argument("--dataset", default="", help="a timm create_dataset name read from --data")
    p.add_argument("--img-size", type=int, help="evaluation resolution (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--strict-data", action="store_true", help="stop at the first unreadable image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint

    m = evaluate_checkpoint(args.checkpoint, args.model, args.data, args.dataset, args.img_size, args.batch_size,
                            args.workers, args.amp, args.strict_data)
    print(f"{m['model']} at {m['img_size']}px on {m['images']} images: "
          f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}")
    return 0
