"""The ``efficientvim`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to the function that runs it. User mistakes raise :class:`EfficientViMError` (or
``FileNotFoundError``) and are printed as one line with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import EfficientViMError

# subcommand modules, in the order ``efficientvim --help`` lists them
COMMANDS = ("models", "info", "predict", "visualize", "train", "eval", "export", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientvim", description="EfficientViM: models, weights, training, inference and export."
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (EfficientViMError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        print(f"efficientvim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (e.g. `| head`) left: stop quietly, and keep Python from complaining at exit
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (must stay open until exit)
        return 141
    return int(result or 0)
