"""The ``efficientvim`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``HELP`` (and optionally ``DESCRIPTION``), ``add_arguments(parser)``
and ``run(args)``. Parsing imports neither torch nor timm (``--help`` and
argument errors answer at once); a subcommand imports what it needs when it runs. User mistakes
(argument errors, :class:`EfficientViMError`, missing or unwritable files) are printed as one line
with exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from ..errors import EfficientViMError

# subcommand modules, in the order ``efficientvim --help`` lists them
COMMANDS = ("models", "info", "predict", "embed", "visualize", "demo", "train", "eval", "export", "bench")


class Parser(argparse.ArgumentParser):
    """argparse with argument errors as one line on stderr (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="efficientvim", description="EfficientViM: models, weights, training, inference and export.")
    parser.add_argument("--version", action="version", version=f"efficientvim {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        # each subcommand module: HELP (and DESCRIPTION), add_arguments(parser), run(args)
        module = importlib.import_module(f".{name}", __name__)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and argument errors (already printed)
        return e.code if isinstance(e.code, int) else 2
    # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: files being written are removed, earlier ones kept
    previous = {sig: _on_signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = args.func(args)
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (EfficientViMError, OSError) as e:
        if args.debug or not _is_user_mistake(e):
            raise
        print(f"efficientvim {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader (e.g. `| head`) left: stop quietly, and keep Python from complaining at exit
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (must stay open until exit)
        return 141
    finally:
        for sig, handler in previous.items():
            _on_signal(sig, handler)
    return int(result or 0)


class Terminated(BaseException):
    """SIGTERM arrived: raised where the program was, so every ``finally`` and ``with`` runs."""


def _on_signal(signum: int, handler):
    """Install ``handler`` for ``signum`` and return the one it replaces (None off the main thread, where Python
    takes no signal handlers: ``main`` called from a thread keeps the process's own)."""
    if handler is None:
        return None
    try:
        return signal.signal(signum, handler)
    except ValueError:
        return None


def _interrupt(signum, frame):
    """SIGTERM raises :class:`Terminated`, SIGINT ``KeyboardInterrupt``, where the program was, except inside an
    import: a native module's initialisation (onnx's, for one) calls back into Python from C++ that cannot pass
    an exception on and aborts the process instead. There the signal is delivered again 50 ms later, until the
    import has finished."""
    if _importing(frame):
        retry = threading.Timer(0.05, os.kill, (os.getpid(), signum))
        retry.daemon = True
        retry.start()
        return
    raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt


def _importing(frame) -> bool:
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib.") or name.endswith(("importlib/_bootstrap.py",
                                                                   "importlib/_bootstrap_external.py")):
            return True
        frame = frame.f_back
    return False


def _is_user_mistake(e: BaseException) -> bool:
    # wrong, unreadable or unwritable paths; a full disk; not other operating-system failures
    return isinstance(e, EfficientViMError | FileNotFoundError | IsADirectoryError | NotADirectoryError |
                      PermissionError | FileExistsError) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EROFS)


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line. An error raised in a DataLoader worker arrives wrapped in the
    worker's traceback; its own message is the last line."""
    text = str(e).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    if isinstance(e, OSError) and e.filename is not None and not isinstance(e, EfficientViMError):
        text = f"{e.strerror or text}: {e.filename}"
    return " ".join(text.split())
