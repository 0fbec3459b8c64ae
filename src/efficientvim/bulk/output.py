"""Where a bulk job's rows go: a folder of Parquet parts, or one Parquet file, resumable.

OUT a folder: each part ``part-<hash>.parquet`` holds the rows of a run of paths, named by a hash of them (a
part written twice, by a retried task, replaces itself), written whole through :mod:`efficientvim.writing` (a
temporary name, then a rename: a stopped job never leaves a part that cannot be read). OUT ``*.parquet``: the
parts gather in ``OUT.parts/`` and are joined into OUT once every path is done. A rerun reads the paths the
parts hold and does the others only; every part records its job (model, weights hash, preprocessing, top-k),
and a rerun with another job is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import EfficientViMError
from ..writing import replacing, write_bytes
from .job import METADATA_KEY, Job

PART_GLOB = "part-*.parquet"


class OutputMismatchError(EfficientViMError):
    """An output that holds rows of another job (model, weights, preprocessing or top-k)."""


class Output:
    """The parts folder of OUT, what it already holds, and the writing of new parts."""

    def __init__(self, out: str | Path, job: Job, overwrite: bool = False) -> None:
        self.out = Path(out)
        self.single = self.out.suffix == ".parquet"
        self.parts = self.out.with_name(self.out.name + ".parts") if self.single else self.out
        self.job = job
        if self.out.exists() and self.single == self.out.is_dir():
            kind = "a folder" if self.out.is_dir() else "a file"
            raise EfficientViMError(f"{self.out} is {kind}: name a folder for parts, or a .parquet file")
        if overwrite:
            self._clear()
        self.done: set[str] = set()
        for path in self.existing():
            table = pq.read_table(path, columns=["path"])
            self._check_job(path, pq.read_schema(path).metadata or {})
            self.done.update(table.column("path").to_pylist())

    def existing(self) -> list[Path]:
        found = sorted(self.parts.glob(PART_GLOB)) if self.parts.is_dir() else []
        return found + ([self.out] if self.single and self.out.is_file() else [])

    def _clear(self) -> None:
        if self.single and self.out.is_file():
            self.out.unlink()
        for part in sorted(self.parts.glob(PART_GLOB)) if self.parts.is_dir() else []:
            part.unlink()

    def _check_job(self, path: Path, metadata: dict) -> None:
        try:
            recorded = json.loads(metadata[METADATA_KEY])
        except (KeyError, ValueError):
            raise OutputMismatchError(f"{path} was not written by an efficientvim bulk job: choose another output "
                                      "(or --overwrite to replace its parts)") from None
        changes = self.job.differences(recorded)
        if changes:
            raise OutputMismatchError(f"{self.out} holds {recorded.get('task')} rows of another job "
                                      f"({'; '.join(changes)}): choose another output, or --overwrite to start again")

    def write_part(self, table: pa.Table, metadata: dict[bytes, bytes]) -> Path:
        """``table`` as a new part (whole or not at all), its job in the schema metadata."""
        return write_part(part_path(self.parts, table.column("path").to_pylist()), table, metadata)

    def finish(self) -> int:
        """Join the parts into OUT when it is one file (the parts folder then removed); the number of rows."""
        parts = self.existing()
        if not self.single or parts == [self.out]:  # a folder, or one file with nothing new: left as it is
            return sum(pq.read_metadata(p).num_rows for p in parts)
        if not parts:
            return 0
        schema = pq.read_schema(parts[-1])  # the job as its newest part records it
        rows = 0
        with replacing(self.out) as f, pq.ParquetWriter(f, schema) as writer:
            for part in parts:  # one part in memory at a time
                table = pq.read_table(part).replace_schema_metadata(schema.metadata)
                writer.write_table(table)
                rows += table.num_rows
        shutil.rmtree(self.parts, ignore_errors=True)
        return rows


def part_path(folder: Path, paths: Sequence[str]) -> Path:
    """A part's file: named by a hash of the paths it holds (the same rows, written again, replace themselves)."""
    return folder / f"part-{hashlib.sha1(chr(10).join(paths).encode()).hexdigest()[:16]}.parquet"


def write_part(path: Path, table: pa.Table, metadata: dict[bytes, bytes]) -> Path:
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), buffer)
    return write_bytes(path, buffer.getvalue())
