"""``efficientvim demo``: a local web page (Gradio) that classifies an image and shows what the model does."""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..errors import EfficientViMError
from .common import add_model_args, add_runtime_args, int_at_least, printable

HELP = "serve a local web page (Gradio) that classifies uploaded images: top-5, hidden states, facts, runtimes"
DESCRIPTION = (HELP + ". Without --checkpoint or --model it serves the newest runs/*/best.safetensors (what "
               "`efficientvim train` writes). Needs 'efficientvim[demo]'.")
RUNS = Path("runs")


def port(text: str) -> int:
    value = int_at_least(1, "between 1 and 65535")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: the network too)")
    p.add_argument("--port", type=port, default=7860, help="port (default 7860)")
    add_runtime_args(p, "the page")
    p.add_argument("--max-file-size", type=int_at_least(1, "at least 1"), default=25, metavar="MB",
                   help="largest upload accepted, in megabytes (default 25)")


def latest_run_checkpoint(runs: Path = RUNS) -> Path | None:
    """The newest ``runs/*/best.safetensors`` of a classifier (dense runs' are detectors and segmenters)."""
    from safetensors import safe_open

    found = sorted(runs.glob("*/best.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception:  # noqa: BLE001, S112 (a damaged file is not a candidate; --checkpoint says why)
            continue
        if meta.get("architecture") and "task" not in meta:
            return path
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from ..errors import import_extra

    if importlib.util.find_spec("gradio") is None:  # said before the model is loaded
        import_extra("gradio", "demo", "efficientvim demo")
    if args.model is None and args.checkpoint is None:
        found = latest_run_checkpoint()
        if found is None:
            raise EfficientViMError("no model to serve: pass --checkpoint FILE or --model NAME.TAG (e.g. "
                                    "efficientvim_m1.e450_in1k, downloaded once), or run `efficientvim train` "
                                    f"first (the page then serves {RUNS}/*/best.safetensors)")
        print(f"serving {found}, the newest classifier in {RUNS}/ (--checkpoint to choose another)", file=sys.stderr)
        args.checkpoint = str(found)
    if not _loopback(args.host):
        print(f"warning: --host {printable(args.host)} makes the page reachable from the network: anyone who can "
              "reach this machine can upload images to it", file=sys.stderr)
    cache = Path(tempfile.mkdtemp(prefix="efficientvim-demo-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)  # also when a second Ctrl-C cuts the cleanup short
    # every upload and result lands here, removed when serving ends; set before gradio is imported, since some of
    # its modules read the variable once, when they are imported
    settings = {"GRADIO_TEMP_DIR": str(cache), "GRADIO_EXAMPLES_CACHE": str(cache / "examples-cache"),
                "GRADIO_ANALYTICS_ENABLED": "False"}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        return _serve(args, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _serve(args: argparse.Namespace, cache: Path) -> int:
    from ..demo import serve
    from .common import has_random_weights, model_from_args, resolve_precision, resolve_runtime, warn_if_random

    model = model_from_args(args)
    # as predict: a runtime that does not take the precision is refused, one the CPU lacks falls back with a note
    device = next(model.parameters()).device.type
    precision = resolve_precision(args.precision, device, args.runtime)
    warn_if_random(args)  # once the arguments are known good, as predict says it
    runtime, line = resolve_runtime(args.runtime, precision, device)
    random = has_random_weights(args)
    source = "random (no --checkpoint: the outputs mean nothing)" if random else (args.checkpoint or args.model)
    return serve(model, source, runtime, precision, random, host=args.host, port=args.port,
                 max_file_size_mb=args.max_file_size, cache=cache, announce=line)
