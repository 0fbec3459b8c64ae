"""``efficientvim export``: write a fused model as ONNX or TorchScript, verified against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import MIN_OPSET, export_onnx, export_torchscript
from ..registry import create_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript (dynamic batch, height, width)",
        description="Fuse a model for inference, export it, and check the file against PyTorch (1e-4).",
    )
    p.add_argument("model", help="model name, e.g. efficientvim_m2 (see `efficientvim models`)")
    p.add_argument("--checkpoint", help="weights file: the authors' .pth, a timm state dict or save_weights output")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--img-size", type=int, help="trace and check at this size (default: the model's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = create_model(args.model, checkpoint=args.checkpoint).eval()
    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"output folder {output.parent} does not exist: create it first")
    if args.format == "onnx":
        error = export_onnx(model, output, opset=args.opset, img_size=args.img_size)
        what = f"ONNX opset {args.opset}"
    else:
        error = export_torchscript(model, output, img_size=args.img_size)
        what = "TorchScript"
    print(f"wrote {output} ({what}, dynamic batch/height/width); max relative error vs PyTorch {error:.1e}")
    return 0
