"""A per-user cache of the ONNX graphs the file runtimes run (``--runtime onnxruntime|openvino|auto``).

Tracing a fused model to ONNX takes about a second (M1, 2 threads), a hundred times the 6 ms ONNX Runtime
then needs for one image, so ``predict`` on one photo would pay for the export every time. The traced file
is kept under ``$EFFICIENTVIM_CACHE`` (default ``$XDG_CACHE_HOME/efficientvim``, else ``~/.cache/efficientvim``),
in ``onnx/``, named by a hash of everything the graph depends on: the weights, the model's description, the
size traced at, and the versions of torch and of this package's own source. Files are written whole
(:func:`efficientvim.writing.write_bytes`) and only regular files are read; a cached file a runtime cannot
load is replaced; where the cache cannot be written (read-only home, full disk) the graph traced for the run
is used and dropped, as before the cache. The most recently used :data:`KEEP` files are kept, at most
:data:`KEEP_BYTES` in all (an fp32 M4 graph is 67 MB).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from .errors import DiskFullError
from .writing import write_bytes

CACHE_ENV = "EFFICIENTVIM_CACHE"
KEEP = 8  # cached graphs kept, most recently used first
KEEP_BYTES = 1 << 30
STALE_PART_S = 3600  # a temporary file this old was left by a process killed while writing

T = TypeVar("T")


def cache_dir() -> Path:
    """The folder cached ONNX graphs live in (see the module's docstring)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "efficientvim"
    return Path(root) / "onnx"


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """A hash of this package's source and torch's version: a graph traced by other code is another graph."""
    digest = hashlib.sha256(torch.__version__.encode())
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def model_key(model: nn.Module, size: tuple[int, int]) -> str:
    """The name of ``model``'s graph traced at ``size``: a hash of its weights, description and the code."""
    digest = hashlib.sha256(f"{_code_digest()}\0{size}\0{model!r}\0{model.pretrained_cfg}".encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:  # not there, or no folder to be there in
        return False


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone already, or a folder planted under the name: the write falls back
        path.unlink()


def _touch(path: Path) -> None:
    """Mark ``path`` most recently used, to the nanosecond (file times the kernel sets are milliseconds coarse)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _trim(folder: Path) -> None:
    """Keep the :data:`KEEP` most recently used graphs within :data:`KEEP_BYTES`; remove temporary files left
    by a dead writer."""
    now, graphs = time.time(), []
    for entry in os.scandir(folder):
        info = entry.stat(follow_symlinks=False)
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):  # the writer's, or a dead one's
            if now - info.st_mtime > STALE_PART_S:
                _discard(Path(entry.path))
        elif entry.name.endswith(".onnx"):
            graphs.append((info.st_mtime_ns, info.st_size, entry.path))
    total = 0
    for rank, (_, size, path) in enumerate(sorted(graphs, reverse=True)):
        total += size
        if rank >= KEEP or (rank and total > KEEP_BYTES):  # the newest graph stays, whatever its size
            _discard(Path(path))


def load_cached_onnx(model: nn.Module, size: tuple[int, int], write: Callable[[Path], None],
                     load: Callable[[Path], T]) -> T:
    """``load(path)`` of ``model``'s ONNX graph traced at ``size``: the cached file if there is one that loads,
    else one traced now by ``write(path)`` and cached; traced into a temporary folder where nothing can be
    cached. ``load`` must read the file in full (the cache may replace it later)."""
    try:
        folder: Path | None = cache_dir()
    except RuntimeError:  # no home folder to find (an arbitrary container user, no HOME): nothing is cached
        folder = None
    path = folder / f"{model_key(model, size)}.onnx" if folder else None
    if path and _is_regular(path):
        try:
            result = load(path)
        except Exception:  # noqa: BLE001 - a damaged cached file is traced again, whatever the runtime raised
            _discard(path)
        else:
            _touch(path)
            return result
    elif path and os.path.lexists(path):  # a link or anything else planted under the graph's name is not read
        _discard(path)
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "model.onnx"
        write(traced)
        if path is None:
            return load(traced)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_bytes(path, traced.read_bytes())  # whole or not at all
            _touch(path)
        except (OSError, DiskFullError):  # no cache here: the graph lives as long as this call
            return load(traced)
    _trim(path.parent)
    return load(path)
