"""``efficientvim demo``: the model on a local web page (Gradio, ``pip install 'efficientvim[demo]'``).

- :mod:`.session`: what the page computes, without Gradio (prediction as ``predict`` makes it, hidden states
  as ``visualize`` draws them, facts, the runtime comparison);
- :mod:`.examples`: the pictures offered to click (digits for a digits model, installed photos otherwise);
- :mod:`.app`: the Gradio page and its API endpoint ``/predict``;
- :func:`serve`: start it on a host and port and serve until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from torch import nn

from ..errors import EfficientViMError
from .session import DemoSession

__all__ = ["DemoSession", "serve"]


def serve(model: nn.Module, source: str, runtime: str, precision: str, random_weights: bool, host: str, port: int,
          max_file_size_mb: int, cache: Path, announce: str | None = None) -> int:
    """Serve the page for ``model`` at http://host:port until Ctrl-C (exit code 0); uploads go to Gradio's
    cache, which the caller points at ``cache`` and removes afterwards; ``announce`` (the runtime ``auto``
    chose) is said on stderr once the page is up. Returns the exit code."""
    from .app import CSS, build
    from .examples import examples_for

    session = DemoSession(model, source, runtime, precision, random_weights)
    session.warm_up()
    examples_folder = cache / "examples"
    examples_folder.mkdir()
    app = build(session, examples_for(session.names, examples_folder), log=lambda line: print(line, flush=True))
    try:
        app.launch(server_name=host, server_port=port, max_file_size=f"{max_file_size_mb}mb", quiet=True,
                   prevent_thread_lock=True, show_error=False, css=CSS)
    except OSError as e:
        why = "the port is in use" if "empty port" in str(e) else " ".join(str(e).split())
        raise EfficientViMError(f"cannot serve on {host}:{port}: {why} (another server?): pass another --port"
                                ) from None
    try:
        if announce:
            print(announce, file=sys.stderr, flush=True)
        print(f"efficientvim demo: {model.model_name} ({source}) at {app.local_url} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    finally:
        app.close()
