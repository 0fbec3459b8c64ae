"""What a bulk job reads: SOURCE as a list of paths or URIs, and the bytes behind each.

SOURCE is a folder (searched recursively for the formats :mod:`efficientvim.images` reads), a listing (a text
file with one path or URI per line, a CSV whose ``path`` column (else first column) holds them, or a Parquet
file with a ``path`` column), or a glob. Paths in a listing are taken as written (a relative path from the
current folder); URIs (``file://``, ``s3://``, ``gs://`` ...) are read through fsspec where it is installed,
else pyarrow's file systems, with the user's own credentials. A path listed twice is kept once.
"""

from __future__ import annotations

import csv
import glob
import io
from pathlib import Path

from ..errors import DataError
from ..images import is_image_name

LISTING_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")


def is_uri(path: str) -> bool:
    return "://" in path


def list_source(source: str) -> tuple[list[str], int]:
    """(every path or URI of ``source``, once, in order; how many repeated entries were dropped)."""
    path = Path(source)
    if is_uri(source):
        items = _listing(source) if source.lower().endswith(LISTING_SUFFIXES) else [source]
    elif path.is_dir():
        items = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_name(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not items:
            raise DataError(f"folder {source} holds no image files (JPEG, PNG, WebP, TIFF, BMP, GIF or PPM)")
    elif path.is_file() and path.suffix.lower() in LISTING_SUFFIXES:
        items = _listing(source)
    elif path.is_file():
        items = [source]
    elif glob.has_magic(source):
        items = sorted(p for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not items:
            raise DataError(f"no files match {source}")
    else:
        raise DataError(f"{source} not found: pass a folder, a file listing paths (.txt, .csv, .parquet) or a glob")
    unique = list(dict.fromkeys(items))
    return unique, len(items) - len(unique)


def _listing(source: str) -> list[str]:
    """The paths a listing file names (text: one per line; CSV: its ``path`` column, else the first; Parquet:
    its ``path`` column)."""
    suffix = Path(source.split("?")[0]).suffix.lower()
    data = read_bytes(source)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        if "path" not in table.column_names:
            raise DataError(f"{source} has no 'path' column (columns: {', '.join(table.column_names[:8])})")
        items = [p for p in table.column("path").to_pylist() if p]
    elif suffix == ".csv":
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
        column = rows[0].index("path") if rows and "path" in rows[0] else 0
        start = 1 if rows and "path" in rows[0] else 0
        items = [r[column].strip() for r in rows[start:] if len(r) > column and r[column].strip()]
    else:
        items = [line.strip() for line in data.decode("utf-8-sig").splitlines()]
        items = [line for line in items if line and not line.startswith("#")]
    if not items:
        raise DataError(f"{source} lists no paths")
    return items


def read_bytes(path: str) -> bytes:
    """The bytes of a local path or a URI (fsspec, else pyarrow's file systems)."""
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    try:
        import fsspec
    except ImportError:
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        with filesystem.open_input_stream(inner) as f:
            return f.read()
    with fsspec.open(path, "rb") as f:
        return f.read()

