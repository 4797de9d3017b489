"""``--out DIR --format parquet``: rows as Parquet part files, for runs too large for one
text file.

The folder holds ``part-00000.parquet``, ``part-00001.parquet``, ... with the columns
:data:`leukoedge.output.COLUMNS`, in input order across parts. A part is written whole
(temporary name, fsync, rename) once it holds ``part_rows`` rows, and at the end of the
run or when it is interrupted: a part is there complete or not at all. The done-list of
``--resume`` is the union of the paths in the parts present; rows of a part that never
reached the disk (SIGKILL) are simply classified again. Needs pyarrow (the ``scale``
extra), imported only here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import DataError, MissingExtraError, OutputExistsError, UsageError
from . import COLUMNS, ClosingWriter, Row, atomic_write_bytes, escape_path

PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
DEFAULT_PART_ROWS = 100_000


def import_pyarrow() -> tuple[ModuleType, ModuleType]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingExtraError("--format parquet needs pyarrow, which is not installed",
                                "pip install 'leukoedge[scale]'") from exc
    return pa, pq


def float_columns() -> set[str]:
    """Columns of :class:`Row` that hold numbers (the rest are text)."""
    return {c for c in COLUMNS if "float" in str(Row.__annotations__.get(c, ""))}


def part_number(path: Path) -> int | None:
    """The number of a part file (``part-00007.parquet``: 7), None for any other file."""
    m = PART_RE.match(path.name)
    return int(m.group(1)) if m else None


def parts_in(folder: Path) -> list[Path]:
    """The part files in ``folder``, in part-number order."""
    if not folder.is_dir():
        return []
    numbered = [(n, p) for p in folder.iterdir() if (n := part_number(p)) is not None]
    return [p for _, p in sorted(numbered, key=lambda t: t[0])]


class PartWriter(ClosingWriter):
    """The :class:`~leukoedge.output.ResultWriter` interface (``done``, ``previous_rows``,
    ``write``, ``close``) over a folder of Parquet parts."""

    def __init__(self, folder: Path, *, resume: bool = False, overwrite: bool = False,
                 part_rows: int = DEFAULT_PART_ROWS) -> None:
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other", "pick one")
        self.pa, self.pq = import_pyarrow()
        self.path = folder
        self.part_rows = max(1, part_rows)
        self.done: set[str] = set()
        self.previous_rows: list[dict[str, Any]] = []
        self.columns = COLUMNS
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"output {escape_path(folder)} is a file; --format parquet "
                             "writes a folder of part files", "name a folder with --out")
        existing = parts_in(folder)
        if existing and not (resume or overwrite):
            raise OutputExistsError(
                f"output {escape_path(folder)} already holds part files",
                "add --resume to finish it, --overwrite to replace it, or choose --out")
        if existing and overwrite:
            for p in existing:
                p.unlink()
            existing = []
        for p in existing:
            try:
                table = self.pq.read_table(p, columns=["path", "patient", "drift"])
            except (OSError, ValueError, self.pa.ArrowException) as exc:
                raise DataError(f"{escape_path(p)}: not a readable part file ({exc})",
                                "use --overwrite to start again") from exc
            rows = table.to_pylist()
            self.previous_rows.extend(rows)
            self.done.update(str(r["path"]) for r in rows)
        self._next = 1 + max((n for p in existing if (n := part_number(p)) is not None),
                             default=-1)
        self._rows: list[Row] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {escape_path(folder)}: {exc.strerror}",
                             "choose another --out") from exc
        self._closed = False

    def write(self, rows: Iterable[Row]) -> None:
        rows = list(rows)
        self._rows.extend(rows)
        self.done.update(r.path for r in rows)
        while len(self._rows) >= self.part_rows:
            self._flush(self._rows[: self.part_rows])
            del self._rows[: self.part_rows]

    def _flush(self, rows: list[Row]) -> None:
        pa = self.pa
        floats = float_columns()
        schema = pa.schema([(c, pa.float64() if c in floats else pa.string())
                            for c in COLUMNS])
        table = pa.Table.from_pylist([r.as_dict() for r in rows], schema=schema)
        final = self.path / f"part-{self._next:05d}.parquet"
        sink = pa.BufferOutputStream()  # a part is at most part_rows rows: a few MB
        self.pq.write_table(table, sink)
        atomic_write_bytes(final, sink.getvalue().to_pybytes(),
                           "free some space, then rerun with --resume")
        self._next += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._rows:
            rows, self._rows = self._rows, []
            self._flush(rows)
