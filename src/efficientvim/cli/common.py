"""Arguments, argument checks and model loading shared by the subcommands (nothing here imports torch)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CheckpointError, EfficientViMError
from ..metadata import MAX_SIDE

# the total stride of every EfficientViM (stem 16, two stride-2 downsamples): the smallest input side
MIN_IMG_SIZE = 64


def printable(text: str) -> str:
    """``text`` as it is when every character prints, else as a quoted Python string with its control characters
    escaped (``'a\\nb.jpg'``): a file name holding a newline cannot forge a line of output."""
    return text if text.isprintable() else repr(text)


def _number(kind: type, text: str, low: float, inclusive: bool, what: str):
    try:
        value = kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low or (value == low and not inclusive) or value != value:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def int_at_least(low: int, what: str):
    """An argparse type: an integer of at least ``low``, refused as "must be ``what``" otherwise."""
    return lambda text: _number(int, text, low, True, what)


def positive_int(text: str) -> int:
    return _number(int, text, 1, True, "at least 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, 0, True, "0 or more")


def non_negative_float(text: str) -> float:
    return _number(float, text, 0, True, "0 or more")


def fraction(text: str) -> float:
    value = _number(float, text, 0, True, "between 0 and 1")
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def input_size(text: str) -> int:
    value = _number(int, text, MIN_IMG_SIZE, True, f"at least {MIN_IMG_SIZE} (the network's total stride)")
    if value > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SIDE} (the largest input side supported and "
                                         f"measured, docs/research.md), got {text}")
    return value


def _can_create_in(folder: Path) -> bool:
    # a real probe, not os.access: root passes access checks on read-only folders and file systems
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def writable_file(path: str | Path) -> Path:
    """``path`` if a file can be written there (its folder exists and takes new files), else a one-line error
    before any work is done."""
    path = Path(path)
    if path.is_dir() and path.suffix != ".mlpackage":  # a Core ML package is a folder, replaced as a file is
        raise IsADirectoryError(f"{path} is a folder: give a file name to write")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder {folder} does not exist: create it first")
    if not _can_create_in(folder) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"cannot write {path}: {folder} is not writable; choose another output path")
    return path


def writable_folder(path: str | Path) -> Path:
    """``path`` if it is, or can be created as, a folder that takes new files; else a one-line error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a folder: choose another output folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not _can_create_in(existing):
        raise PermissionError(f"cannot write into {path}: {existing} is not writable; choose another output folder")
    return path


def add_model_args(p: argparse.ArgumentParser, name_option: bool = True) -> None:
    if name_option:
        p.add_argument("--model", metavar="NAME",
                       help="architecture, e.g. efficientvim_m2 (see `efficientvim models`), "
                       "or a folder or hub repo (hf-hub:USER/REPO) written by save_pretrained")
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="weights: the authors' .pth, a timm state dict or a save_weights file (which alone names its model)",
    )


def model_from_args(args: argparse.Namespace):
    """The model named by ``--model`` and/or ``--checkpoint``, in eval mode."""
    from ..registry import create_model, load_model
    from ..weights import Checkpoint

    if args.model is None and args.checkpoint is None:
        raise EfficientViMError("pass a model name, --checkpoint PATH or both (see `efficientvim models`)")
    if args.model is None:
        ckpt = Checkpoint(args.checkpoint)
        if not ckpt.metadata.get("architecture"):
            raise CheckpointError(
                f"checkpoint {args.checkpoint} does not say which model it holds: pass the model name as well"
            )
        return load_model(ckpt).eval()
    return create_model(args.model, checkpoint=args.checkpoint).eval()


def resolve_precision(precision: str, device: str | None = None, runtime: str = "auto") -> str:
    """``precision`` if ``runtime`` takes it (else an error, whatever the CPU) and ``device`` (default: the GPU if
    any, else the CPU) runs it natively; else fp32 with a one-line note on stderr saying why (emulated bf16 would
    be slower than fp32)."""
    from ..deploy import PRECISION_DTYPES
    from ..kernels import native_precision
    from ..runtimes import check_runtime_precision

    check_runtime_precision(runtime, precision)

    device = device or default_device()
    why = native_precision(PRECISION_DTYPES[precision], device)
    if why:
        print(f"note: {why}: running fp32, which is faster here", file=sys.stderr)
        return "fp32"
    return precision


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_runtime(runtime: str, precision: str, device: str | None = None) -> tuple[str, str | None]:
    """(``runtime``, None), or for ``auto`` the fastest installed for ``precision`` on ``device``
    (:func:`efficientvim.runtimes.auto_runtime`) and the line that names it, which the command prints on stderr
    once its inputs are known good (a mistake stays one line)."""
    from ..runtimes import AUTO, auto_runtime

    if runtime != AUTO:
        return runtime, None
    runtime, why = auto_runtime(precision, device or default_device())
    return runtime, f"runtime: {runtime} {precision} ({why}; --runtime chooses another)"


def say(line: str | None) -> None:
    """``line`` on stderr, if there is one."""
    if line:
        print(line, file=sys.stderr)


RUNTIME_CHOICES = ("auto", "eager", "onnxruntime", "openvino")


def add_runtime_args(p: argparse.ArgumentParser, what: str) -> None:
    """--precision and --runtime of the commands that run a fused classifier (predict, eval, embed, demo)."""
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help=f"{what} runs the fused model (efficientvim.fuse) in this precision; bf16 where the device "
                   "has it natively (else fp32, with a note); same top-1 as fp32 on 99.6-100%% of images in our "
                   "measurements")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help="auto (default): the fastest installed for the precision, named on stderr (CPU, fp32: "
                   "onnxruntime, then openvino, then eager; bf16: openvino, then eager; GPU: eager); eager: "
                   "PyTorch (CPU or GPU); onnxruntime ('efficientvim[onnx]', fp32) or openvino "
                   "('efficientvim[openvino]', fp32 or bf16): the fused graph exported once and cached, CPU only")


def inference_for(model, precision: str = "fp32", runtime: str = "auto"):
    """The inference copy of ``model`` a command runs: fused (``efficientvim.fuse``) in ``precision``, in
    PyTorch or a file runtime (``efficientvim.runtimes``); ``auto`` resolved, and named on stderr once built."""
    from ..runtimes import inference_model

    device = next(model.parameters()).device.type
    precision = resolve_precision(precision, device, runtime)
    runtime, line = resolve_runtime(runtime, precision, device)
    inference = inference_model(model, runtime, precision)
    say(line)
    return inference


def has_random_weights(args: argparse.Namespace) -> bool:
    """True when neither a checkpoint nor a weights tag (``efficientvim_m2.e450_in1k``) was given."""
    from ..hub import is_source

    return args.checkpoint is None and "." not in (args.model or "") and not is_source(args.model or "")


def warn_if_random(args: argparse.Namespace) -> None:
    """Say on stderr that the weights are random; called once the inputs are known good, so errors stay one line."""
    if has_random_weights(args):
        message = f"warning: no --checkpoint given, {args.model} has random weights: its outputs mean nothing"
        print(message, file=sys.stderr)
