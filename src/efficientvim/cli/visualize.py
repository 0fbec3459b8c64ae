"""``efficientvim visualize``: one PNG of where each stage's hidden states gather information on an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EfficientViMError
from ..predict import load_image, min_image_side, set_input_size
from ..viz import FIGURE_SIZE_PX, draw, state_report
from .common import add_model_args, has_random_weights, model_from_args, warn_if_random


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "visualize",
        help="draw the HSM-SSD hidden-state maps, MSF fusion weights and top predictions for one image",
    )
    p.add_argument("image", metavar="IMAGE", help="an image file")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="where to write the PNG")
    p.add_argument("--img-size", type=int, metavar="N", help="input size (default: the model's own, e.g. 224)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise EfficientViMError(f"output {out} must end in .png")
    if not Path(args.image).is_file():
        raise FileNotFoundError(f"{args.image} not found: check the path")
    model = model_from_args(args)
    if args.img_size is not None:
        set_input_size(model, args.img_size)
    image = load_image(args.image, min_image_side(model))
    warn_if_random(args)
    report = state_report(model, image)
    note = "random weights (no --checkpoint): the maps show an untrained network" if has_random_weights(args) else ""
    size = model.pretrained_cfg["input_size"][1]
    draw(report, out, title=f"{model.model_name}: hidden states on {Path(args.image).name} ({size}x{size})", note=note)
    print(f"wrote {out} ({FIGURE_SIZE_PX[0]}x{FIGURE_SIZE_PX[1]} px)")
    return 0
