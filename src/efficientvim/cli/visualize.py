"""``efficientvim visualize``: one PNG of where each stage's hidden states gather information on an image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EfficientViMError
from .common import add_model_args, has_random_weights, input_size, model_from_args, warn_if_random, writable_file

HELP = "draw the HSM-SSD hidden-state maps, MSF fusion weights and top predictions for one image"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", help="an image file")
    add_model_args(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="where to write the PNG")
    p.add_argument("--img-size", type=input_size, metavar="N", help="input size (default: the model's own, e.g. 224)")
    p.add_argument("--full-resolution", action="store_true",
                   help="run on the image at its own size (no resize or crop): the maps of a large image")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise EfficientViMError(f"output {out} must end in .png")
    writable_file(out)
    from ..images import load_image
    from ..predict import min_image_side, set_input_size
    from ..viz import FIGURE_SIZE_PX, crowded_stages, draw, state_report

    if args.img_size is not None and args.full_resolution:
        raise EfficientViMError("--img-size and --full-resolution exclude each other: choose one")
    load_image(args.image)  # a wrong path or a broken file is reported before the model is built
    model = model_from_args(args)
    if args.img_size is not None:
        set_input_size(model, args.img_size)
    image = load_image(args.image, model.total_stride if args.full_resolution else min_image_side(model))
    warn_if_random(args)
    report = state_report(model, image, full_resolution=args.full_resolution)
    note = "random weights (no --checkpoint): the maps show an untrained network" if has_random_weights(args) else ""
    height, width = (image.height, image.width) if args.full_resolution else model.pretrained_cfg["input_size"][1:]
    draw(report, out, title=f"{model.model_name}: hidden states on {Path(args.image).name} ({width}x{height})",
         note=note)
    print(f"wrote {out} ({FIGURE_SIZE_PX[0]}x{FIGURE_SIZE_PX[1]} px)")
    crowded = crowded_stages(report)
    if crowded:
        print(f"note: at {width}x{height} the maps of {', '.join(crowded)} have too few tokens to differ and are not "
              "drawn: a larger --img-size (or --full-resolution on a large image) gives them room; the model then "
              "sees a size other than its own", file=sys.stderr)
    return 0
