"""``efficientvim export``: write a fused model as ONNX or TorchScript, verified against PyTorch."""

from __future__ import annotations

import argparse

from .common import MIN_IMG_SIZE, input_size, int_at_least, model_from_args, writable_file

MIN_OPSET = 17  # as efficientvim.export.MIN_OPSET (not imported: keeps --help light; a test checks they agree)


HELP = "export a model to ONNX or TorchScript (dynamic batch, height, width)"
DESCRIPTION = (
    "Fuse a model for inference, export it, and check the file against PyTorch (1e-4). A file written by "
    "training or save_weights names its own architecture: --checkpoint alone is enough."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model name, e.g. efficientvim_m2 (see `efficientvim models`); "
                   "optional with a --checkpoint that names its architecture")
    p.add_argument("--checkpoint", help="weights file: the authors' .pth, a timm state dict or save_weights output")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--opset", type=int_at_least(MIN_OPSET, f"{MIN_OPSET} or newer"), default=MIN_OPSET,
                   help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--img-size", type=input_size, help=f"trace and check at this size (>= {MIN_IMG_SIZE}; "
                   "default: the model's)")


def run(args: argparse.Namespace) -> int:
    output = writable_file(args.output)
    model = model_from_args(args)
    from ..export import export_onnx, export_torchscript

    if args.format == "onnx":
        error = export_onnx(model, output, opset=args.opset, img_size=args.img_size)
        what = f"ONNX opset {args.opset}"
    else:
        error = export_torchscript(model, output, img_size=args.img_size)
        what = "TorchScript"
    print(f"wrote {output} ({what}, dynamic batch/height/width); max relative error vs PyTorch {error:.1e}")
    return 0
