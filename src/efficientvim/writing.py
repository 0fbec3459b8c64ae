"""The one way this package writes a file: whatever a user had at a path survives any failure, and nothing
half-written ever sits at a name that looks valid.

Every write goes to a fresh name in the destination folder, created exclusively (an existing file or a link
planted there is never opened or followed), is flushed to disk, checked where a check exists, and only then
renamed over the target. A full disk is one :class:`DiskFullError` naming the file, the free space and what the
file needed; whatever the failure (a signal included, once the CLI has turned it into an exception), the
temporary name is removed and the earlier file is left as it was.

* :func:`write_bytes` / :func:`write_text` / :func:`write_figure`: contents already in memory (the size is
  checked against the free space before anything is written);
* :func:`replacing`: a file object to stream into (``torch.save``);
* :func:`staging`: a private folder for libraries that write by path, and for files that belong together
  (OpenVINO's .xml and .bin, an export and its metadata, a model folder): what the block leaves in it replaces
  the same names in the destination folder, folders (``.mlpackage``) included;
* :func:`append_line`: a line added to a log (``metrics.jsonl``), a full disk said the same way.

Imports only :mod:`efficientvim.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import DiskFullError, EfficientViMError

_FULL = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 256 * 1024  # bytes left when a writer that failed is taken to have filled the disk
# what libraries that write through their own C++ say when the disk is full (torch's stream writer, protobuf)
_FULL_WORDS = ("no space left", "file write failed", "disk quota")


def size_text(n: int) -> str:
    """A byte count as people read it (``812 KB``, ``1.4 GB``)."""
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_space(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota) is full, in Python's words or a library's."""
    if isinstance(error, OSError) and error.errno in _FULL:
        return True
    return isinstance(error, (OSError, RuntimeError)) and any(w in str(error).lower() for w in _FULL_WORDS)


def disk_full(target: Path, needed: int | None, written: int = 0) -> DiskFullError:
    folder = target.parent
    need = size_text(needed) if needed else f"more than the {size_text(written)} written"
    return DiskFullError(f"{target} was not written: the disk is full ({size_text(free_space(folder))} free in "
                         f"{folder}, the file needs {need}); free some space or write elsewhere"
                         " (an earlier file of that name is unchanged)")


def _folder_of(path: Path) -> Path:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs folders
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, size: int | None = None,
              check: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
    """A binary file object whose contents become ``path`` when the block ends without an error: a fresh file
    beside it (``.NAME.XXXX.tmp``) is written, flushed to disk, passed to ``check`` (which raises to refuse it)
    and renamed over ``path``. ``size``: what the file will need, checked against the free space first."""
    path = Path(path)
    folder = _folder_of(path)
    if size is not None and free_space(folder) < size:
        raise disk_full(path, size)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")  # O_EXCL: a fresh file
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
            except BaseException as e:
                if not is_disk_full(e):
                    raise
                full = True
            else:
                full = False
        if full:  # said once the partial file is gone, so that the free space shown is the real one
            written = tmp.stat().st_size
            tmp.unlink()
            raise disk_full(path, size, written) from None
        if check is not None:
            check(tmp)
        os.chmod(tmp, _mode())  # mkstemp makes 0600; a written file is shared like any other
        os.replace(tmp, path)  # replaces a link at ``path`` itself, never what it points to
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes, check: Callable[[Path], None] | None = None) -> Path:
    """``data`` as the file ``path``, through :func:`replacing`."""
    with replacing(path, size=len(data), check=check) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, check: Callable[[Path], None] | None = None) -> Path:
    """``text`` (UTF-8) as the file ``path``, through :func:`replacing`."""
    return write_bytes(path, text.encode(), check)


def write_figure(fig, path: str | os.PathLike, **savefig: object) -> Path:
    """A matplotlib figure as the file ``path`` (the format from its suffix), through :func:`replacing`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", **savefig)
    return write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def staging(folder: str | os.PathLike, what: str | os.PathLike | None = None) -> Iterator[Path]:
    """A private, empty folder inside ``folder`` (created exclusively, mode 0700) for writers that take a path.
    When the block ends without an error, every file or folder it left there is flushed to disk and moved over
    the same name in ``folder``; on any error all of it is removed and ``folder`` is as it was. ``what`` (the
    main file's path) names the file in a full-disk message. Messages of this package's errors name the
    destination, not the private folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(dir=folder, prefix=".efficientvim-", suffix=".tmp"))
    try:
        try:
            yield private
            entries = sorted(private.iterdir())
            for entry in entries:
                _sync_tree(entry)
        except EfficientViMError as e:
            text = str(e).replace(str(private), str(folder))
            if text == str(e):
                raise
            raise type(e)(text) from None
        except BaseException as e:
            # native writers say a full disk in their own words (OpenVINO: "basic_ios::clear: iostream error"):
            # a library error with no space left in the folder is one too
            native = isinstance(e, (OSError, RuntimeError)) and free_space(private) < NEARLY_FULL
            if not (is_disk_full(e) or native):
                raise
            written = _tree_size(private)
            shutil.rmtree(private, ignore_errors=True)  # first, so that the free space shown is the real one
            raise disk_full(Path(what) if what else folder, None, written) from None
        for entry in entries:
            _move_over(entry, folder / entry.name)
        _sync_folder(folder)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _sync_tree(entry: Path) -> None:
    paths = [entry] if not entry.is_dir() else [p for p in entry.rglob("*") if p.is_file()]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(p, _mode())


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _move_over(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target``; a folder replaces a folder (the old one moved aside first, then
    removed), a file or link at ``target`` is replaced itself (a link is never followed)."""
    if source.is_dir() and stat.S_ISDIR(os.lstat(target).st_mode if os.path.lexists(target) else 0):
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, aside / target.name)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
        return
    if source.is_dir() and os.path.lexists(target):
        os.unlink(target)  # a file or link where the folder goes
    os.replace(source, target)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Add ``line`` (and a newline) to the log ``path``, never through a link planted at its name; a full disk
    is a :class:`DiskFullError` (a line cut short is what readers of such logs must drop)."""
    path = Path(path)
    data = (line + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, _mode())
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(path, len(data)) from None
        if e.errno == errno.ELOOP:
            raise EfficientViMError(f"{path} is a link: a log is never written through a link (it could point "
                                    "anywhere); remove it") from None
        raise
