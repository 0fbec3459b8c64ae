"""``efficientvim models``: list the registered architectures and downloadable weights."""

from __future__ import annotations

import argparse

HELP = "list model names (and weights tags with --pretrained)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. '*m2*'")
    p.add_argument("--pretrained", action="store_true", help="list timm's published weights tags")


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownModelError
    from ..registry import list_models, model_config

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        what = "weights tags" if args.pretrained else "models"
        raise UnknownModelError(f"no {what} match {args.pattern!r}: `efficientvim models` lists them all")
    for name in names:
        cfg = model_config(name)
        print(f"{name:34s} res {cfg['img_size']}  published top-1 {cfg['top1']:.1f}")
    return 0
