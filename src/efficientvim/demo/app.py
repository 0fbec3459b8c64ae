"""The Gradio page of ``efficientvim demo``: one image in; its top-5, its hidden states, the model's facts and
the time it took; a second tab runs the same image in every runtime and precision installed.

The image component hands its functions the uploaded file as it arrived (``preprocess=False``: Gradio's own
decoding is skipped), so the package's reader decides what an image is and says why one is refused. The
prediction is the API endpoint ``/predict`` (one image in, the ``gr.Label`` top-5 out); what the page shows
next to it (timing, maps) follows as a private step, so a client gets exactly ``predict --json``'s numbers.
"""

from __future__ import annotations

import functools
import html
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from ..errors import EfficientViMError, import_extra
from .session import COMPARE_REPEATS, TOP_K, DemoSession, Prediction

gr = import_extra("gradio", "demo", "efficientvim demo")

# a small upload (the digits' 8x8 pixels) drawn large and sharp rather than as a dot
CSS = "#image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
DELETE_CACHE = (600, 3600)  # every 10 minutes, Gradio removes the uploads and results older than an hour
SESSIONS_KEPT = 256  # the latest prediction of this many browser sessions, for the timing the page shows next


def _readable(fn: Callable) -> Callable:
    """``fn`` with every failure as a ``gr.Error`` of one readable line: the package's own message for a bad
    image, the exception's words (and a traceback on the server's stderr only) for anything else."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (EfficientViMError, OSError) as e:
            raise gr.Error(_as_text(str(e)), print_exception=False) from None
        except Exception as e:  # noqa: BLE001 (the page gets a sentence, the server log the traceback)
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(_as_text(f"the server could not answer: {type(e).__name__}: {e}"),
                           print_exception=False) from None

    return wrapper


def _as_text(message: str) -> str:
    """One line, with ``<`` and ``&`` escaped: Gradio renders an error's message as HTML, and a message may
    hold the name of the user's file."""
    return html.escape(" ".join(message.split()), quote=False)


def _upload(payload) -> tuple[str, str] | None:
    """(path in Gradio's cache, the name the user's file had) of an image component's raw value."""
    if not payload:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise EfficientViMError("the upload arrived without a file: upload it again")
    return path, payload.get("orig_name") or Path(path).name


def timing_text(p: Prediction, first_ms: float | None, runtime: str) -> str:
    first = "" if first_ms is None else f"; the first request after start-up took {first_ms:.1f} ms"
    line = (f"**{p.total_ms:.1f} ms** on this machine ({runtime}): read {p.read_ms:.1f} ms, preprocess "
            f"{p.preprocess_ms:.1f} ms, model {p.model_ms:.1f} ms{first}")
    return "\n\n".join([line] + [f"note: {n}" for n in p.notes])


def facts_markdown(session: DemoSession) -> str:
    rows = "\n".join(f"| {what} | {value.replace('|', '/')} |" for what, value in session.facts())
    return f"| model | |\n|---|---|\n{rows}"


def compare_rows(rows: list[dict], baseline: tuple[str, str]) -> list[list]:
    """The comparison as table rows: runtime, precision, top-1, its probability, top-5, median ms, speed."""
    base = next((r["ms"] for r in rows if (r["runtime"], r["precision"]) == baseline and r["ms"]), None)
    table = []
    for r in rows:
        if r["ms"] is None:
            table.append([r["runtime"], r["precision"], "", "", r["note"], "", ""])
            continue
        top = r["predictions"]
        five = ", ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in top)
        speed = f"{base / r['ms']:.2f}x" if base else ""
        table.append([r["runtime"], r["precision"], top[0]["label"], f"{100 * top[0]['probability']:.2f}%", five,
                      f"{r['ms']:.2f}", speed])
    return table


COMPARE_HEADERS = ["runtime", "precision", "top-1", "probability", "top-5 (or why not run)", "model ms (median)",
                   "speed (vs the page's)"]


class DemoApp:
    """The page's functions around one :class:`DemoSession` (one request at a time: the queue's limit is 1)."""

    def __init__(self, session: DemoSession, log: Callable[[str], None] = print) -> None:
        self.session, self.log = session, log
        self._latest: OrderedDict[str, tuple[str, Prediction]] = OrderedDict()  # session -> (file, prediction)
        self._lock = threading.Lock()

    def predict(self, payload, request: gr.Request) -> dict[str, float] | None:
        upload = _upload(payload)
        key = getattr(request, "session_hash", None) or ""
        with self._lock:
            self._latest.pop(key, None)  # a failed prediction leaves nothing for the details to show
        if upload is None:
            return None
        p = self.session.predict(*upload)
        with self._lock:
            self._latest[key] = (upload[0], p)
            self._latest.move_to_end(key)
            while len(self._latest) > SESSIONS_KEPT:
                self._latest.popitem(last=False)
        top = p.predictions[0]
        self.log(f"request {self.session.requests}: {upload[1]!r} -> {top['label']} "
                 f"({100 * top['probability']:.1f}%) in {p.total_ms:.1f} ms")
        return p.label()

    def details(self, payload, request: gr.Request):
        """The timing of the session's latest prediction and the hidden-state picture of its image."""
        upload = _upload(payload)
        if upload is None:
            return "", None
        with self._lock:
            path, p = self._latest.get(getattr(request, "session_hash", None) or "", (None, None))
        if p is None or path != upload[0]:  # this image's prediction failed: the error said why
            return "", None
        for note in p.notes:
            gr.Warning(note)
        first = self.session.first_ms if self.session.requests > 1 else None
        runtime = f"{self.session.runtime} {self.session.precision}"
        return timing_text(p, first, runtime), self.session.hidden_states(p.image, upload[1])

    def compare(self, payload) -> list[list]:
        upload = _upload(payload)
        if upload is None:
            raise EfficientViMError("upload an image (or click an example) first")
        rows = self.session.compare(*upload)
        return compare_rows(rows, (self.session.runtime, self.session.precision))


def build(session: DemoSession, examples: list[Path], log: Callable[[str], None] = print):
    """The page as a ``gr.Blocks`` (not launched)."""
    demo = DemoApp(session, log)
    title = f"efficientvim: {session.model.model_name}"

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=DELETE_CACHE) as app:
        gr.Markdown(f"# {title}\nEfficientViM (CVPR 2025): an HSM-SSD vision backbone. Weights: {session.source}. "
                    "Drop or paste an image, or click an example.")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="image", height=320,
                                     elem_id="image")
                    if examples:
                        gr.Examples([[str(p)] for p in examples], inputs=image, label="examples")
                with gr.Column():
                    label = gr.Label(num_top_classes=TOP_K, label=f"top {TOP_K}", elem_id="top")
                    timing = gr.Markdown(elem_id="timing")
                    gr.Markdown(facts_markdown(session))
            gr.Markdown("**Hidden states**: where each stage's states read the image (as `efficientvim visualize` "
                        "draws them)")
            maps = gr.Image(show_label=False, type="pil", format="png", interactive=False, height=640,
                            elem_id="maps")
        with gr.Tab("Runtimes"):
            gr.Markdown("The image of the Predict tab in every runtime and precision installed: the fused graph "
                        "exported on the fly for ONNX Runtime and OpenVINO (the first comparison exports it: seconds), "
                        "bf16 where "
                        f"this CPU has it natively; each timed as the median of {COMPARE_REPEATS} forward passes "
                        "(batch 1).")
            run = gr.Button("compare on this image", elem_id="compare")
            table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, elem_id="table")
        image.change(_readable(demo.predict), image, label, api_name="predict", preprocess=False).then(
            _readable(demo.details), image, [timing, maps], preprocess=False, api_visibility="private")
        run.click(_readable(demo.compare), image, table, api_name="compare", preprocess=False)
    app.queue(default_concurrency_limit=1)
    return app
