"""Result files: rows appended and flushed as they come, resumable, never clobbered.
Every writer of a run's rows lives in this package: CSV and JSON Lines here
(:class:`ResultWriter`), Parquet part files in :mod:`.parts` (pyarrow, the scale extra,
imported only there); :func:`open_rows` chooses.

Formats: CSV (default) or JSON Lines (``.jsonl``/``.ndjson``), one :class:`Row` per image
with the columns :data:`COLUMNS`: the one prediction-row format of leukoedge. A run that is
interrupted keeps every complete line; ``resume`` drops a torn last line (a SIGKILL
mid-write) and reports which paths are done, so the caller processes each file exactly
once. An existing file is never overwritten unless the caller asks for it.

Files written before the ``logit`` and ``heatmap`` columns (:data:`V1_COLUMNS`), or
before ``drift`` (:data:`V2_COLUMNS`), are resumed as they are: a CSV keeps its header
and gets rows with its own columns, a JSON Lines file gets rows with every key (each line
names its keys).

Paths that are not valid UTF-8 (Linux allows any bytes) are written escaped, reversibly:
a backslash becomes ``\\\\``, and each byte that is not part of valid UTF-8, and each
control character, becomes ``\\xNN``.
:func:`unescape_path` gives the original bytes back.

**Spreadsheet-safe CSV.** A CSV text cell that starts with ``=``, ``+``, ``-``, ``@``, tab
or carriage return is a formula to Excel and LibreOffice, so a file named ``=cmd.bmp``
would become one. In the CSV (never in JSON Lines), the text columns (path, patient,
error, heatmap; never the numbers, so a negative logit stays ``-1.5``) have such a first
character written in the same ``\\xNN`` form (:func:`csv_safe`: ``=cmd.bmp`` ->
``\\x3dcmd.bmp``), which a spreadsheet shows as text. leukoedge's readers (resume,
``evaluate --from-predictions``, ``report``) turn it back (:func:`csv_plain`), so paths
match exactly; :func:`unescape_path` of the cell gives the file's bytes too. This cannot
be mistaken for an older file's text: ``escape_path`` never writes ``\\x3d`` (``=`` is
printable, a backslash is doubled), and tab and CR in paths were already ``\\x09`` and
``\\x0d``. The page's "Download CSV" writes the same.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from ..errors import DataError, OutputExistsError, UsageError

if TYPE_CHECKING:
    from ..patient import PatientSummary
    from .parts import PartWriter

#: The prediction row, in CSV column order. Columns added after the first release come
#: last, so a reader that indexes the old columns keeps working.
COLUMNS = ("path", "patient", "prob_all", "label", "error", "logit", "heatmap", "drift")
#: Decimals of the numeric columns in the CSV text (:meth:`Row.cells`).
DECIMALS = {"prob_all": 6, "logit": 6, "drift": 4}
#: The row of releases before ``logit`` and ``heatmap``.
V1_COLUMNS = COLUMNS[:5]
#: The row of releases before ``drift``.
V2_COLUMNS = COLUMNS[:7]
FORMATS = ("csv", "jsonl")


def escape_path(path: str | os.PathLike[str] | bytes) -> str:
    """Text form of a path: valid UTF-8 kept, other bytes as ``\\xNN``, ``\\`` doubled."""
    raw = os.fsencode(path)
    out: list[str] = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:  # control characters: keep rows on one line
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


#: first characters that make a spreadsheet read a CSV cell as a formula
FORMULA_START = frozenset("=+-@\t\r")
#: the CSV text columns :func:`csv_safe` applies to (never the numeric ones)
TEXT_COLUMNS = ("path", "patient", "error", "heatmap")
_PLAIN_CODES = {f"{ord(c):02x}": c for c in "=+-@"}


def csv_safe(text: str) -> str:
    """A text cell as the CSV holds it: a first character in :data:`FORMULA_START` becomes
    ``\\xNN`` (module docstring), so spreadsheets open the cell as text."""
    if text and text[0] in FORMULA_START:
        return f"\\x{ord(text[0]):02x}{text[1:]}"
    return text


def csv_plain(text: str) -> str:
    """The inverse of :func:`csv_safe` for ``= + - @`` (a leading tab or CR is left as
    ``\\x09``/``\\x0d``: the form paths already have)."""
    if text.startswith("\\x") and text[2:4] in _PLAIN_CODES:
        return _PLAIN_CODES[text[2:4]] + text[4:]
    return text


def csv_plain_row(row: Mapping[str, str | None]) -> dict[str, str | None]:
    """A CSV row read back: :func:`csv_plain` on its text columns."""
    return {k: csv_plain(v) if k in TEXT_COLUMNS and isinstance(v, str) else v
            for k, v in row.items()}


_UNESCAPE_RE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def unescape_path(text: str) -> bytes:
    """Inverse of :func:`escape_path`: the path's original bytes."""
    parts: list[bytes] = []
    pos = 0
    for m in _UNESCAPE_RE.finditer(text):
        parts.append(text[pos:m.start()].encode("utf-8"))
        tok = m.group(1)
        parts.append(b"\\" if tok == "\\" else bytes([int(tok[1:], 16)]))
        pos = m.end()
    parts.append(text[pos:].encode("utf-8"))
    return b"".join(parts)


def format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown output format {fmt!r}", f"choose {' or '.join(FORMATS)}")
        return fmt
    return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"


@dataclass
class Row:
    """One image's result. Error rows have ``error`` set and no probability, label or
    logit; others have no ``error``."""

    path: str  # escaped text form (escape_path)
    patient: str | None
    prob_all: float | None  # ModelSpec.probability(logit)
    label: str | None  # "all" or "hem"
    error: str | None
    logit: float | None = None  # the model's raw output for the positive class
    heatmap: str | None = None  # a heatmap file written for this image, if any
    #: how unlike the training cells this image is (leukoedge.drift; 1.0 = the 95th
    #: percentile of the training cells' own scores); None when the model has no statistics
    drift: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON Lines object: every column, ``null`` where empty."""
        return {c: getattr(self, c) for c in COLUMNS}

    def cells(self) -> dict[str, str]:
        """The CSV text of every column (empty where there is no value); text columns
        spreadsheet-safe (:func:`csv_safe`)."""
        return {
            "path": csv_safe(self.path), "patient": csv_safe(self.patient or ""),
            "prob_all": _fixed(self.prob_all, DECIMALS["prob_all"]),
            "label": self.label or "", "error": csv_safe(self.error or ""),
            "logit": _fixed(self.logit, DECIMALS["logit"]),
            "heatmap": csv_safe(self.heatmap or ""),
            "drift": _fixed(self.drift, DECIMALS["drift"]),
        }


def _fixed(x: float | None, decimals: int) -> str:
    return "" if x is None else f"{x:.{decimals}f}"


def check_output_location(out: Path, inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output file inside a folder being read (we never write into inputs)."""
    target = _resolve(out)
    for raw in inputs:
        src = Path(os.fsdecode(raw))
        if src.is_dir():
            root = _resolve(src)
            if target == root or root in target.parents:
                raise UsageError(f"output {out} lies inside the input folder {src}",
                                 "write results elsewhere with --out")
        elif src.exists() and _resolve(src) == target:
            raise UsageError(f"output {out} is one of the input files")


def _resolve(p: Path) -> Path:
    """``Path.resolve``, with a symbolic link loop (RuntimeError before 3.13) as UsageError."""
    try:
        return p.resolve()
    except RuntimeError as exc:
        raise UsageError(f"{escape_path(p)} is a symbolic link loop") from exc
    except OSError as exc:
        raise UsageError(f"cannot resolve {escape_path(p)}: {_why(exc)}") from exc


def _why(exc: OSError) -> str:
    """The reason of an OSError in words, naming the part of the path at fault."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a part of its folder path is a file, not a folder"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return exc.strerror or str(exc)


def json_lines(text: str, where: str, why: str = "", hint: str | None = None
               ) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON Lines text; a line that is
    not JSON is a DataError: ``{where}: line {n} is not JSON{why}`` (with ``hint``)."""
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where}: line {n} is not JSON{why}", hint) from exc


def _read_rows(path: Path, fmt: str) -> tuple[list[dict[str, Any]], tuple[str, ...] | None]:
    """Complete rows of an existing result file, and a CSV's columns (None: no header yet,
    or JSON Lines); truncates a torn last line in place."""
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):  # torn last line: drop it so the resumed run rewrites it
                fh.truncate(end)
                data = data[:end]
    except OSError as exc:
        raise DataError(f"{escape_path(path)}: cannot resume ({_why(exc)})") from exc
    text = data.decode("utf-8", "replace")
    rows: list[dict[str, Any]] = []
    columns: tuple[str, ...] | None = None
    if fmt == "jsonl":
        for n, obj in json_lines(text, str(path), "; cannot resume this file",
                                 "use --overwrite to start again"):
            if not isinstance(obj, dict) or "path" not in obj:
                raise DataError(f"{path}: line {n} is not a leukoedge row")
            rows.append(obj)
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if text and (reader.fieldnames is None or "path" not in reader.fieldnames):
                raise DataError(f"{path}: not a leukoedge result file (no 'path' column)",
                                "use --overwrite to replace it, or another --out")
            if reader.fieldnames is not None:
                columns = tuple(reader.fieldnames)
                foreign = [c for c in columns if c not in COLUMNS]
                if foreign or len(set(columns)) != len(columns):
                    raise DataError(f"{path}: not a leukoedge result file (columns "
                                    f"{', '.join(columns)[:200]})",
                                    "use --overwrite to replace it, or another --out")
            rows.extend(csv_plain_row(r) for r in reader if r.get("path") is not None)
        except csv.Error as exc:  # e.g. a field over csv's size limit: not our file
            raise DataError(f"{path}: not a leukoedge result file ({exc})",
                            "use --overwrite to replace it, or another --out") from exc
    return rows, columns


_W = TypeVar("_W", bound="ClosingWriter")


class ClosingWriter:
    """``with`` for a writer: ``close()`` on leaving; a :class:`DataError` from closing is
    raised only when no other error is on its way (the first one is the one kept)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.close()
        except DataError:
            if exc_type is None:  # else keep the error already on its way (the first one)
                raise


class ResultWriter(ClosingWriter):
    """Appends rows and flushes after each batch; ``done`` holds paths already written.

    ``columns`` are the CSV columns written: :data:`COLUMNS`, or a resumed file's own.
    """

    def __init__(self, path: Path, fmt: str | None = None, *, resume: bool = False,
                 overwrite: bool = False) -> None:
        if resume and overwrite:
            raise UsageError("--resume and --overwrite contradict each other",
                             "pick one")
        self.path = path
        self.fmt = format_for(path, fmt)
        self.done: set[str] = set()
        self.previous_rows: list[dict[str, Any]] = []
        self.columns: tuple[str, ...] = COLUMNS
        exists = path.exists()
        if exists and path.is_dir():
            raise UsageError(f"output {path} is a folder", "name a file with --out")
        if exists and not (resume or overwrite):
            raise OutputExistsError(
                f"output {path} already exists",
                "add --resume to finish it, --overwrite to replace it, or choose --out")
        if exists and resume:
            self.previous_rows, columns = _read_rows(path, self.fmt)
            self.columns = columns or COLUMNS
            self.done = {str(r["path"]) for r in self.previous_rows}
        mode = "a" if (exists and resume) else "w"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] = open(path, mode, encoding="utf-8", newline="")
        except OSError as exc:
            raise UsageError(f"cannot write {escape_path(path)}: {_why(exc)}",
                             "choose another --out") from exc
        self._csv = csv.writer(self._fh, lineterminator="\n") if self.fmt == "csv" else None
        if mode == "w" or (self.fmt == "csv" and path.stat().st_size == 0):
            if self._csv is not None:
                try:
                    self._write(lambda: self._csv.writerow(self.columns))  # type: ignore[union-attr]
                except DataError:
                    self._discard()
                    raise

    def write(self, rows: Iterable[Row]) -> None:
        rows = list(rows)

        def put() -> None:
            for r in rows:
                if self._csv is not None:
                    cells = r.cells()
                    self._csv.writerow([cells[c] for c in self.columns])
                else:
                    self._fh.write(json.dumps(r.as_dict(), ensure_ascii=False) + "\n")

        self._write(put)
        self.done.update(r.path for r in rows)

    def _write(self, put: Callable[[], object]) -> None:
        """Run ``put`` and flush; a full disk or lost mount is one DataError, not a trace."""
        try:
            put()
            self._fh.flush()
        except OSError as exc:
            raise DataError(f"cannot write to {escape_path(self.path)}: {_why(exc)}",
                            "free some space, then rerun with --resume") from exc

    def close(self) -> None:
        """Flush, fsync and close; a failed flush is a DataError, and the file is closed
        whatever happens."""
        if self._fh.closed:
            return
        try:
            self._write(lambda: None)
            try:
                os.fsync(self._fh.fileno())
            except OSError:
                pass
        finally:
            self._discard()

    def _discard(self) -> None:
        try:
            self._fh.close()
        except OSError:  # the buffer could not be written: already reported
            pass


def refuse_existing(path: Path, allowed: bool, hint: str = "add --overwrite or choose "
                    "another --out", what: str = "") -> None:
    """OutputExistsError when ``path`` exists and replacing it is not ``allowed`` (the one
    "exists and no --overwrite" check)."""
    if path.exists() and not allowed:
        raise OutputExistsError(f"{what}{path} already exists", hint)


def write_patients(path: Path, rows: Iterable[PatientSummary]) -> None:
    """``--patients-out``: the per-patient summaries as CSV, or JSON Lines for
    .jsonl/.ndjson/.json; written whole."""
    import io
    import json

    from ..patient import COLUMNS

    if format_for(path, None) == "jsonl":
        text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            cells = r.cells_text()
            w.writerow([cells[c] for c in COLUMNS])
        text = buf.getvalue()
    atomic_write_text(path, text)


def open_rows(out_file: Path, fmt: str | None, resume: bool = False,
              overwrite: bool = False) -> ResultWriter | PartWriter:
    """The writer of a run's rows: CSV/JSON Lines into one file (:class:`ResultWriter`), or
    Parquet part files into a folder (``fmt`` parquet: the scale extra)."""
    if fmt == "parquet":
        from .parts import PartWriter

        return PartWriter(out_file, resume=resume, overwrite=overwrite)
    return ResultWriter(out_file, fmt, resume=resume, overwrite=overwrite)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new one, never half.

    Any failure (no such folder, permission, full disk, ``path`` is a folder) is a
    :class:`DataError`; no temporary file is left behind.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: object) -> None:
    """``data`` as indented JSON, written atomically (a results file: bench --json-out)."""
    import json

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_write_bytes(path: Path, data: bytes, hint: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write_text`); ``hint``
    goes with the :class:`DataError` of a failed write."""
    with atomic_path(path, hint=hint) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@contextmanager
def atomic_path(path: Path, what: str = "", hint: str | None = None) -> Iterator[Path]:
    """The one atomic write of leukoedge: yields a temporary path in ``path``'s folder for
    the caller to write (with ``open``, ``torch.save``, ``onnx.save``, ``Image.save``...);
    on a normal exit it is fsynced and renamed onto ``path``, so readers see the old file or
    the new one, never half. On any exception the temporary file is removed and nothing
    changes at ``path``; an ``OSError`` becomes a :class:`DataError` naming ``path``
    ("cannot write [what ]PATH: why", with ``hint``).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        named = f"{what} {escape_path(path)}" if what else escape_path(path)
        raise DataError(f"cannot write {named}: {_why(exc)}", hint) from exc
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
