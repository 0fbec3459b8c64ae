"""``efficientvim export``: write a fused model in a deployment format, verified against PyTorch where its runtime
is on the machine."""

from __future__ import annotations

import argparse
import sys

from ..errors import EfficientViMError
from .common import MIN_IMG_SIZE, input_size, int_at_least, model_from_args, writable_file

FORMATS = ("onnx", "torchscript", "openvino", "executorch", "litert", "coreml")
MIN_OPSET = 17  # as efficientvim.export.MIN_OPSET (not imported: keeps --help light; a test checks they agree)


HELP = "export a model to ONNX, TorchScript, OpenVINO, ExecuTorch, LiteRT or Core ML"
DESCRIPTION = (
    "Fuse a model for inference, export it, and check the file against PyTorch (1e-4). A file written by "
    "training or save_weights names its own architecture: --checkpoint alone is enough."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="model name, e.g. efficientvim_m2 (see `efficientvim models`); "
                   "optional with a --checkpoint that names its architecture")
    p.add_argument("--checkpoint", help="weights file: the authors' .pth, a timm state dict or save_weights output")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="openvino: IR .xml + .bin through the verified ONNX export ('efficientvim[openvino]'); "
                   "executorch: a .pte with the XNNPACK delegate, batch 1 at a fixed size "
                   "('efficientvim[executorch]'); litert: a .tflite for LiteRT, batch 1 at a fixed size "
                   "('efficientvim[litert]'); "
                   "coreml: an .mlpackage, batch 1 at a fixed size, checked on macOS only ('efficientvim[coreml]')")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument("--opset", type=int_at_least(MIN_OPSET, f"{MIN_OPSET} or newer"), default=MIN_OPSET,
                   help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--img-size", type=input_size, help=f"trace and check at this size (>= {MIN_IMG_SIZE}; "
                   "default: the model's)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default="fp32",
                   help="int8 (onnx, openvino, executorch, litert): static quantization calibrated on --calibration, "
                   "top-1 agreement with fp32 on held-out images reported; fp16 (onnx, torchscript: computes in "
                   "float16, float32 in and out, for GPUs; openvino: weights stored as fp16; coreml: its compute "
                   "precision); bf16 (torchscript); fp16/bf16 checked to twice the model's own error in them")
    p.add_argument("--calibration", metavar="DIR",
                   help="int8: a folder of typical images (searched recursively; a few hundred are used); "
                   "default: the digits training split bundled with scikit-learn")


# efficientvim.export.LOW_PRECISION_FORMATS, written out so the command line parses without torch (tested to agree)
LOW_PRECISION_FORMATS = {"fp16": ("onnx", "torchscript", "openvino", "coreml"), "bf16": ("torchscript",)}


def run(args: argparse.Namespace) -> int:
    output = writable_file(args.output)
    low = LOW_PRECISION_FORMATS
    if args.precision in low and args.format not in low[args.precision]:
        hint = " (OpenVINO takes the fp32 file and runs bf16 itself on CPUs that have it)" \
            if args.precision == "bf16" else ""
        raise EfficientViMError(f"--precision {args.precision} is written as {', '.join(low[args.precision])}, "
                                f"not {args.format}: use one of those or --precision fp32{hint}")
    if args.precision == "int8" and args.format in ("torchscript", "coreml"):
        raise EfficientViMError("--precision int8 is written as ONNX (ONNX Runtime's QDQ format), OpenVINO, "
                                "ExecuTorch or LiteRT: use --format onnx, openvino, executorch or litert")
    if args.calibration is not None and args.precision != "int8":
        raise EfficientViMError("--calibration applies to --precision int8 only")
    model = model_from_args(args)
    from ..export import FORMATS

    report = FORMATS[args.format].write(model, output, args.precision, args.calibration, args.img_size, args.opset)
    print(f"wrote {output} ({report['what']}); {_checked(report)}")
    for note in report.get("notes", ()):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _checked(report: dict) -> str:
    """What the check of the written file found, in words."""
    if report.get("verified") is False:
        return f"converted but not checked: {report['runtime']} predicts on macOS only"
    if "error" in report:
        return f"max relative error vs PyTorch in {report['runtime']} {report['error']:.1e}"
    if "checked_images" not in report:  # Core ML fp16, on macOS: the check's random images
        return f"top-1 agrees with PyTorch on {report['top1_agreement']:.0f}% of the check images ({report['runtime']})"
    images = f"{report['top1_agreement']:.1f}% of {report['checked_images']} " + (
        "held-out images" if report["held_out"] else "calibration images (the folder is too small to hold any out)")
    calibrated = f"calibrated on {report['calibration_images']} images; " if "calibration_images" in report else ""
    return f"{calibrated}top-1 agrees with fp32 PyTorch on {images} ({report['runtime']})"
