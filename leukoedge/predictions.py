"""Reading predictions files back: classify's rows, or out-of-fold predictions of a
cross-validation (``path, patient, label, fold, logit``), for ``evaluate
--from-predictions``, ``calibrate --from-predictions`` and ``report``.

Which column holds the truth:

- ``true_label`` (or ``truth``) when the file has one;
- ``label`` in a file that is not a leukoedge prediction-row file (no ``prob_all``
  column): there it is the truth, as in ``docs/cv/full/gap-oof.csv``; in classify's rows
  ``label`` is the *prediction* and is never read as the truth;
- else ``--labels FILE``: the C-NMC prelim label file (``Patient_ID,new_names,labels``) or
  any CSV with ``path`` and ``label`` columns (matched by path, then by file name);
- else the path itself: an ``all/`` or ``hem/`` folder or an ``_all``/``_hem`` suffix.

Values ``all``/``hem`` or ``1``/``0`` (1 = ALL). Rows with an ``error`` are kept apart as
error rows. Logits are the model's raw outputs; a file without them carries only
``prob_all``, which cannot be re-calibrated.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Item, fingerprint, label_of, patient_of, read_prelim_labels
from .errors import DataError, UsageError, first_line
from .evaluate import ErrorRow, Scores, scores_of
from .output import csv_plain_row, escape_path, json_lines, unescape_path
from .spec import LABELS, ModelSpec

MAX_FILE_BYTES = 1024 * 1024 * 1024
TRUTH_COLUMNS = ("true_label", "truth")


@dataclass
class PredictionSet:
    """The rows of one predictions file, error rows apart."""

    source: Path
    paths: list[str]  # escaped text form, as written
    patients: list[str | None]
    truth: list[int | None]
    logits: list[float]  # NaN where the row has none
    probs: list[float]  # the file's prob_all, NaN where none
    heatmaps: list[str | None]
    folds: list[str | None]
    drift: list[float | None]
    errors: list[ErrorRow] = field(default_factory=list)
    truth_from: str = ""
    #: the patient of each error row (its ``patient`` column, else from its file name)
    error_patients: list[str | None] = field(default_factory=list)

    @property
    def files(self) -> int:
        return len(self.paths) + len(self.errors)

    @property
    def has_logits(self) -> bool:
        return bool(self.logits) and all(math.isfinite(v) for v in self.logits)

    def scores(self, spec: ModelSpec) -> Scores:
        """Probabilities from the spec's temperature when the rows carry logits."""
        return scores_of(spec, self.paths, self.patients, self.truth,
                         self.logits if self.has_logits else None, self.probs)

    def fingerprint(self) -> str:
        """sha256 of the sorted (path, label) list of the labelled rows (as data.fingerprint)."""
        return fingerprint(Item(Path(p), t) for p, t in zip(self.paths, self.truth)
                           if t is not None)

    def labelled_patients(self) -> list[str]:
        return sorted({p for p, t in zip(self.patients, self.truth) if p and t is not None})

    def file_path(self, i: int, images_root: Path | None = None) -> Path:
        """Where row ``i``'s image lies: its path, relative to ``images_root`` (default:
        the predictions file's folder) unless absolute."""
        p = Path(os.fsdecode(unescape_path(self.paths[i])))
        if p.is_absolute():
            return p
        return (images_root if images_root is not None else self.source.parent) / p


def _truth_value(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    text = str(raw).strip().lower()
    if text == "":
        return None
    if text in LABELS:
        return LABELS.index(text)
    if text in ("0", "1"):
        return int(text)
    raise DataError(f"{where}: label {str(raw)[:40]!r} is neither all/hem nor 1/0")


def _float(raw: Any, where: str, column: str) -> float:
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return math.nan
    if isinstance(raw, bool):
        raise DataError(f"{where}: {column} must be a number")
    try:
        v = float(raw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {column} {str(raw)[:40]!r} is not a number") from exc
    if not math.isfinite(v):
        raise DataError(f"{where}: {column} is not finite")
    return v


def _read_text(path: Path) -> str:
    try:
        if not path.is_file():
            raise DataError(f"{escape_path(path)}: predictions file not found or not a "
                            "regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DataError(f"{escape_path(path)}: larger than {MAX_FILE_BYTES} bytes")
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{escape_path(path)}: cannot read ({first_line(exc)})") from exc


def _records(path: Path, text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows as dicts and the column names (JSON Lines: the union of keys)."""
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows: list[dict[str, Any]] = []
        for n, obj in json_lines(text, escape_path(path)):
            if not isinstance(obj, dict):
                raise DataError(f"{escape_path(path)}: line {n} is not a JSON object")
            rows.append(obj)
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        return rows, cols
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        cols = list(reader.fieldnames or [])
        return [csv_plain_row(r) for r in reader], cols  # classify's spreadsheet-safe cells
    except csv.Error as exc:
        raise DataError(f"{escape_path(path)}: not valid CSV ({first_line(exc)})") from exc


def read_label_table(path: Path) -> dict[str, int]:
    """Truth by path and by file name, from the C-NMC prelim label file or a CSV with
    ``path`` and ``label`` (or ``true_label``) columns."""
    text = _read_text(path)
    head = text.splitlines()[0] if text else ""
    if "new_names" in head and "Patient_ID" in head:
        return {k: v[0] for k, v in read_prelim_labels(path).items()}
    rows, cols = _records(path, text)
    col = next((c for c in (*TRUTH_COLUMNS, "label") if c in cols), None)
    if "path" not in cols or col is None:
        raise DataError(f"{escape_path(path)}: a label file needs the columns path and "
                        "label, or is the C-NMC prelim label file",
                        "e.g. docs/cv/full/gap-oof.csv, or "
                        "C-NMC_test_prelim_phase_data_labels.csv")
    out: dict[str, int] = {}
    for n, r in enumerate(rows, start=2):
        t = _truth_value(r.get(col), f"{escape_path(path)}: row {n}")
        p = str(r.get("path") or "")
        if t is None or not p:
            continue
        out[p] = t
        out.setdefault(os.path.basename(p), t)
    if not out:
        raise DataError(f"{escape_path(path)}: label file has no labelled rows")
    return out


def parse_folds(folds: str | None) -> list[str] | None:
    """``--folds 0,1,2`` -> ``["0", "1", "2"]``; None when not given."""
    if folds is None:
        return None
    parts = [f.strip() for f in folds.split(",") if f.strip()]
    if not parts:
        raise UsageError("--folds names no fold", "e.g. --folds 0,1,2")
    return parts


def read_predictions(path: Path, labels_file: Path | None = None,
                     folds: Sequence[str] | None = None) -> PredictionSet:
    """Read a predictions file (see the module's docstring); ``folds`` keeps only the rows
    whose ``fold`` column is one of them."""
    text = _read_text(path)
    rows, cols = _records(path, text)
    where = escape_path(path)
    if "path" not in cols:
        raise DataError(f"{where}: not a predictions file (no 'path' column)",
                        "give classify's output or a file with path and logit columns")
    if folds:
        if "fold" not in cols:
            raise UsageError(f"--folds needs a 'fold' column, and {where} has none")
        keep = {str(f).strip() for f in folds}
        rows = [r for r in rows if str(r.get("fold", "")).strip() in keep]
        if not rows:
            raise DataError(f"{where}: no row has fold {', '.join(sorted(keep))}")
    truth_col = next((c for c in TRUTH_COLUMNS if c in cols), None)
    if truth_col is None and "label" in cols and "prob_all" not in cols:
        truth_col = "label"
    table = read_label_table(labels_file) if labels_file is not None else None
    truth_from = (f"column {truth_col}" if truth_col else
                  f"{labels_file}" if table is not None else "the paths")
    ps = PredictionSet(path, [], [], [], [], [], [], [], [], truth_from=truth_from)
    for n, r in enumerate(rows, start=2):
        here = f"{where}: row {n}"
        p = str(r.get("path") or "")
        if not p:
            raise DataError(f"{here} has no path")
        err = r.get("error")
        if err:
            ps.errors.append(ErrorRow(path=p, error=str(err)))
            ps.error_patients.append(str(r.get("patient") or "")
                                     or patient_of(os.path.basename(p)))
            continue
        if truth_col is not None:
            t = _truth_value(r.get(truth_col), here)
        elif table is not None:
            t = table.get(p, table.get(os.path.basename(p)))
        else:
            t = label_of(Path(os.fsdecode(unescape_path(p))))
        patient = str(r.get("patient") or "") or patient_of(os.path.basename(p))
        ps.paths.append(p)
        ps.patients.append(patient)
        ps.truth.append(t)
        ps.logits.append(_float(r.get("logit"), here, "logit"))
        ps.probs.append(_float(r.get("prob_all"), here, "prob_all"))
        ps.heatmaps.append(str(r.get("heatmap") or "") or None)
        ps.folds.append(None if r.get("fold") in (None, "") else str(r.get("fold")))
        d = _float(r.get("drift"), here, "drift") if "drift" in cols else math.nan
        ps.drift.append(None if math.isnan(d) else d)
    if not ps.paths and not ps.errors:
        raise DataError(f"{where}: no rows")
    if ps.paths and not ps.has_logits and all(math.isnan(v) for v in ps.probs):
        raise DataError(f"{where}: the rows carry neither logit nor prob_all")
    if not ps.has_logits and any(math.isnan(v) for v in ps.probs):
        raise DataError(f"{where}: some rows have neither logit nor prob_all")
    return ps
