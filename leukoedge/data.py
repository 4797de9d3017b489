"""Finding images and their labels and patients in C-NMC layouts and plain folders.

Recognised, as they are:

- C-NMC / TCIA: ``C-NMC_training_data/fold_{0,1,2}/{all,hem}/UID_<p>_<i>_<c>_{all,hem}.bmp``
- Kaggle mirror: ``C-NMC_Leukemia/training_data/fold_*/{all,hem}/...`` and
  ``validation_data/C-NMC_test_prelim_phase_data/<n>.bmp`` with
  ``C-NMC_test_prelim_phase_data_labels.csv`` (``Patient_ID,new_names,labels``) found beside
  the images or given with ``--labels``;
- any folder of images: labels from the nearest ``all/`` or ``hem/`` folder, else from an
  ``_all`` / ``_hem`` name suffix, else unknown.

Patient ids: ``UID_<p>`` (ALL) and ``UID_H<p>`` (HEM; ``h`` normalised to ``H``) are kept
distinct: ALL patient 13 is ``UID_13`` and HEM patient H13 is ``UID_H13``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, NoImagesError, first_line
from .spec import LABELS

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".dib", ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".gif", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
PRELIM_LABELS_NAME = "C-NMC_test_prelim_phase_data_labels.csv"
MAX_LABEL_FILE_BYTES = 64 * 1024 * 1024

_PATIENT_RE = re.compile(r"^UID_(H?)(\d+)(?:_|\.|$)", re.IGNORECASE)
_SUFFIX_RE = re.compile(r"_(all|hem)$", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One image to classify: its path, and its label and patient when known."""

    path: Path
    label: int | None = None  # 1 = ALL, 0 = HEM
    patient: str | None = None

    @property
    def label_name(self) -> str | None:
        return None if self.label is None else LABELS[self.label]


def patient_of(name: str) -> str | None:
    """Patient id from a C-NMC file name: ``UID_13_...`` -> ``UID_13``, ``UID_h3_...`` ->
    ``UID_H3``; ``None`` when the name does not follow the pattern."""
    m = _PATIENT_RE.match(name)
    if not m:
        return None
    return f"UID_{'H' if m.group(1) else ''}{int(m.group(2))}"


def label_of(path: Path) -> int | None:
    """Label from the nearest ``all``/``hem`` folder, else the file name's suffix."""
    for part in reversed(path.parent.parts):
        low = part.lower()
        if low in LABELS:
            return LABELS.index(low)
    m = _SUFFIX_RE.search(path.stem)
    if m:
        return LABELS.index(m.group(1).lower())
    return None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """Image files under ``paths`` (files or folders), recursively, in a stable order.

    Folders are walked in sorted order; symbolic links to folders are followed once
    (a link loop is walked once, not forever). A path given explicitly is yielded as is,
    whatever its extension; inside folders only image extensions (any case) count.
    A path that does not exist raises :class:`DataError`.
    """
    seen_dirs: set[tuple[int, int]] = set()
    for raw in paths:
        p = Path(os.fsdecode(raw))
        if not os.path.lexists(p):
            raise DataError(f"{p}: no such file or folder", "check the path")
        if p.is_dir():
            yield from _walk(p, seen_dirs)
        else:
            yield p


def _walk(root: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = root.stat()
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return
    seen.add(key)
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
    except OSError:
        return
    for e in entries:
        path = root / e.name
        try:
            is_dir = e.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(path, seen)
        elif is_image_name(e.name):
            yield path


def read_prelim_labels(csv_path: str | os.PathLike[str]) -> dict[str, tuple[int, str | None]]:
    """The prelim-test label file: numbered name -> (label, patient).

    Columns ``Patient_ID,new_names,labels``: ``Patient_ID`` is the original file name
    (``UID_57_29_1_all.bmp``), ``new_names`` the numbered name (``1.bmp``), label 1 = ALL.
    Rows are also keyed by the original name, so either naming works.
    """
    p = Path(os.fsdecode(csv_path))
    try:
        if not p.is_file():  # a FIFO would block the read forever
            raise DataError(f"{p}: label file not found or not a regular file")
        if p.stat().st_size > MAX_LABEL_FILE_BYTES:
            raise DataError(f"{p}: label file is larger than {MAX_LABEL_FILE_BYTES} bytes")
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read label file ({first_line(exc)})") from exc
    try:
        return _parse_prelim_labels(p, text)
    except csv.Error as exc:  # e.g. a field over csv's size limit
        raise DataError(f"{p}: label file is not valid CSV ({first_line(exc)})") from exc


def _parse_prelim_labels(p: Path, text: str) -> dict[str, tuple[int, str | None]]:
    rows = csv.DictReader(io.StringIO(text, newline=""))
    need = {"Patient_ID", "new_names", "labels"}
    if rows.fieldnames is None or not need <= set(rows.fieldnames):
        raise DataError(f"{p}: label file needs the columns {', '.join(sorted(need))}",
                        "use the official C-NMC_test_prelim_phase_data_labels.csv")
    out: dict[str, tuple[int, str | None]] = {}
    for row in rows:
        n = rows.line_num
        lab = (row.get("labels") or "").strip()
        if lab not in ("0", "1"):
            raise DataError(f"{p}: line {n}: label must be 0 or 1, got {lab!r}")
        original = (row.get("Patient_ID") or "").strip()
        new = (row.get("new_names") or "").strip()
        value = (int(lab), patient_of(original))
        if new:
            out[new] = value
        if original:
            out[original] = value
    if not out:
        raise DataError(f"{p}: label file has no rows")
    return out


def find_label_file(paths: Sequence[str | os.PathLike[str]]) -> Path | None:
    """A prelim-test label file sitting in a given folder or beside it (Kaggle layout)."""
    for raw in paths:
        p = Path(os.fsdecode(raw))
        for d in (p, p.parent):
            cand = d / PRELIM_LABELS_NAME
            if cand.is_file():
                return cand
    return None


def discover(
    paths: Sequence[str | os.PathLike[str]],
    labels_file: str | os.PathLike[str] | None = None,
    auto_labels: bool = True,
) -> Iterator[Item]:
    """Images under ``paths`` with labels and patients, streamed in a stable order."""
    table: dict[str, tuple[int, str | None]] | None = None
    if labels_file is not None:
        table = read_prelim_labels(labels_file)
    elif auto_labels:
        found = find_label_file(paths)
        if found is not None:
            table = read_prelim_labels(found)
    for path in iter_image_paths(paths):
        name = path.name
        label = label_of(path)
        patient = patient_of(name)
        if table is not None and name in table:
            t_label, t_patient = table[name]
            label = t_label
            patient = t_patient or patient
        yield Item(path, label, patient)


def collect(
    paths: Sequence[str | os.PathLike[str]],
    labels_file: str | os.PathLike[str] | None = None,
) -> list[Item]:
    """``discover`` into a list; raises :class:`NoImagesError` when nothing is found."""
    items = list(discover(paths, labels_file))
    if not items:
        shown = ", ".join(os.fsdecode(p) for p in paths)
        exts = ", ".join(sorted(IMAGE_EXTENSIONS)[:6])
        raise NoImagesError(f"no image found in {shown}",
                            f"expected files ending in {exts}, ... (any case)")
    return items


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (model files, weights files)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(items: Iterable[Item], root: Path | None = None) -> str:
    """sha256 of the sorted (relative path, label) list: names the training data."""
    h = hashlib.sha256()
    lines = []
    for it in items:
        p = it.path
        if root is not None:
            try:
                p = p.relative_to(root)
            except ValueError:
                pass
        lines.append(f"{os.fsencode(p).decode('utf-8', 'backslashreplace')}\t{it.label}")
    for line in sorted(lines):
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def fold_of(path: Path) -> str | None:
    """The C-NMC fold folder (``fold_0`` ...) a path lies in, if any."""
    for part in reversed(path.parts):
        if re.fullmatch(r"fold_\d+", part, re.IGNORECASE):
            return part.lower()
    return None


def split_by_patient(
    items: Sequence[Item], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Item], list[Item]]:
    """Split so that no patient sits on both sides, stratified by class.

    Patients are shuffled with ``seed`` within each class and the first ones go to
    validation until about ``val_fraction`` of that class's images are there; each class
    keeps at least one patient for training. Items without a patient id count as their own
    patient (by path), which is a split by image for them.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[int | None, dict[str, list[Item]]] = {}
    for it in items:
        pid = it.patient or f"path:{it.path}"
        by_class.setdefault(it.label, {}).setdefault(pid, []).append(it)
    val_patients: set[str] = set()
    for _label, patients in sorted(by_class.items(), key=lambda kv: str(kv[0])):
        names = sorted(patients)
        order = [names[i] for i in rng.permutation(len(names))]
        total = sum(len(patients[n]) for n in names)
        taken = 0
        for n in order[:-1] if len(order) > 1 else []:
            if taken >= val_fraction * total:
                break
            val_patients.add(n)
            taken += len(patients[n])
    train = [it for it in items if (it.patient or f"path:{it.path}") not in val_patients]
    val = [it for it in items if (it.patient or f"path:{it.path}") in val_patients]
    return train, val


def sample_cells_dir() -> Path:
    """The real C-NMC cells shipped with the package (see its README for attribution)."""
    from importlib.resources import files

    return Path(str(files("leukoedge") / "sample_cells"))
