"""Arguments and model loading shared by the commands that run a model on images."""

from __future__ import annotations

import argparse
import sys

from torch import nn

from ..errors import CheckpointError, EfficientViMError
from ..registry import create_model, load_model
from ..weights import Checkpoint


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help="architecture, e.g. efficientvim_m2 (see `efficientvim models`)")
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights: the authors' .pth, a timm state dict or a save_weights file (which alone names its model)",
    )


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """The model named by ``--model`` and/or ``--checkpoint``, in eval mode."""
    if args.model is None and args.checkpoint is None:
        raise EfficientViMError("pass --model NAME, --checkpoint PATH or both (see `efficientvim models`)")
    if args.model is None:
        ckpt = Checkpoint(args.checkpoint)
        if not ckpt.metadata.get("architecture"):
            raise CheckpointError(
                f"checkpoint {args.checkpoint} does not say which model it holds: pass --model NAME as well"
            )
        return load_model(ckpt).eval()
    return create_model(args.model, checkpoint=args.checkpoint).eval()


def has_random_weights(args: argparse.Namespace) -> bool:
    """True when neither a checkpoint nor a weights tag (``efficientvim_m2.e450_in1k``) was given."""
    return args.checkpoint is None and "." not in (args.model or "")


def warn_if_random(args: argparse.Namespace) -> None:
    """Say on stderr that the weights are random; called once the inputs are known good, so errors stay one line."""
    if has_random_weights(args):
        message = f"warning: no --checkpoint given, {args.model} has random weights: its outputs mean nothing"
        print(message, file=sys.stderr)
