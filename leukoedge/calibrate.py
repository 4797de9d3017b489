"""Calibration: a temperature fitted by negative log-likelihood, and a threshold chosen for
an operating point, written into a copy of the model's spec (numpy and onnx only).

Temperature scaling (Guo et al., 2017): P(ALL) = sigmoid(logit / T), one scalar fitted on
labelled cells the model was not trained on. The NLL is convex in ``a = 1/T`` (a logistic
regression on the logit with no intercept), so its derivative is increasing and the
minimum is found by bisection on it, to machine precision. Dividing by ``T > 0`` keeps the
order of the cells: the ROC curve, the AUC and what any threshold on the logit labels do
not change; only how far P(ALL) can be trusted does.

The threshold (on P(ALL) at the new temperature; the label rule compares the logit with
``spec.logit_threshold``) is chosen on the same cells:

- ``sensitivity`` S: the *largest* threshold whose sensitivity reaches S (the fewest false
  alarms that still catch S of the ALL cells): the ceil(S x n_ALL)-th highest ALL cell
  stays ALL, every cell below it is HEM.
- ``specificity`` S: the *smallest* threshold whose specificity reaches S: the
  ceil(S x n_HEM)-th lowest HEM cell stays HEM, every cell above it is ALL.
- ``f1`` (default): the threshold of highest weighted F1 (the highest such, among equals).

Every threshold in the gap between the boundary cell and the next distinct logit on the
other side labels the calibration cells alike; the threshold is put in the middle of that
gap, not on the boundary cell's logit, so that rounding (a CSV holds logits to 6 decimals,
float32 vs float64) cannot move the boundary cell to the other side. The probability
threshold is then nudged by single floating-point steps until the spec's own
``logit_threshold`` is at or below that midpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .errors import DataError, ModelError, UsageError, first_line
from .evaluate import CalibrationMetrics, calibration_metrics, metrics
from .output import atomic_write_bytes, escape_path
from .spec import SPEC_KEY, ModelSpec

if TYPE_CHECKING:
    from .data import Item
    from .session import Model

RULES = ("f1", "sensitivity", "specificity")
MIN_CELLS_PER_CLASS = 2


@dataclass(frozen=True)
class Rule:
    """How the threshold is chosen: ``f1``, or a target ``sensitivity``/``specificity``."""

    kind: str = "f1"
    target: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in RULES:
            raise UsageError(f"unknown threshold rule {self.kind!r}")
        if self.kind != "f1" and (self.target is None or not 0.0 < self.target <= 1.0):
            raise UsageError(f"--target-{self.kind} must be in (0, 1], got {self.target}")

    def describe(self) -> str:
        if self.kind == "f1":
            return "best weighted F1"
        return f"{self.kind} >= {self.target:g}"


@dataclass(frozen=True)
class CalibrationFigures:
    """ECE, Brier score and log-loss of P(ALL) (:func:`calibration_metrics` without the
    reliability bins)."""

    ece: float
    brier: float
    log_loss: float
    bins: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Calibration:
    """What :func:`calibrate` found, on the calibration cells."""

    temperature: float
    threshold: float  # on P(ALL) at ``temperature``
    logit_threshold: float
    rule: Rule
    cells: int
    cells_all: int
    cells_hem: int
    patients: list[str]
    before: CalibrationFigures  # calibration_metrics at temperature 1 (without reliability)
    after: CalibrationFigures  # at the fitted temperature
    at_threshold: dict[str, float]  # sensitivity, specificity, weighted F1 at the threshold
    nll_at_1: float
    nll: float

    def as_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "threshold": self.threshold,
                "logit_threshold": self.logit_threshold, "rule": self.rule.describe(),
                "cells": self.cells, "cells_all": self.cells_all, "cells_hem": self.cells_hem,
                "patients": self.patients, "before": self.before.to_json(),
                "after": self.after.to_json(),
                "at_threshold": self.at_threshold}


def _check(logits: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(z) != len(t):
        raise DataError("logits and labels differ in number")
    if not np.all(np.isfinite(z)):
        raise DataError("a logit is not finite; cannot calibrate on it")
    n_all, n_hem = int((t == 1).sum()), int((t == 0).sum())
    if n_all + n_hem != len(t):
        raise DataError("labels must be 0 (HEM) or 1 (ALL)")
    if min(n_all, n_hem) < MIN_CELLS_PER_CLASS:
        raise DataError(f"calibration needs at least {MIN_CELLS_PER_CLASS} labelled cells of "
                        f"each class; got {n_all} ALL and {n_hem} HEM",
                        "calibrate on labelled cells of both classes")
    return z, t


def nll(logits: npt.ArrayLike, y: npt.ArrayLike, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under sigmoid(logit / temperature)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    t = np.asarray(y, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def fit_temperature(logits: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """The temperature that minimises the NLL of ``y`` (1 = ALL) under sigmoid(logit/T)."""
    z, t = _check(logits, y)

    def grad(a: float) -> float:  # d NLL / d a, increasing in a (NLL is convex in a)
        p = 0.5 * (1.0 + np.tanh(0.5 * a * z))  # sigmoid, without overflow
        return float(np.mean((p - t) * z))

    if grad(0.0) >= 0.0:
        raise DataError("the logits do not rank ALL above HEM on these cells (the "
                        "likelihood is highest at an infinite temperature)",
                        "calibrate on cells the model can tell apart, with correct labels")
    hi = 1.0
    separated = float(z[t == 0].max()) < float(z[t == 1].min())
    while separated or grad(hi) < 0.0:
        hi *= 2.0
        if separated or hi > 1e6:
            raise DataError("ALL and HEM are perfectly separated on these cells: any "
                            "temperature towards 0 fits them better",
                            "calibrate on more cells, or on patients the model never saw")
    lo = 0.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if grad(mid) < 0.0:
            lo = mid
        else:
            hi = mid
    return 1.0 / (0.5 * (lo + hi))


def _nudge(spec: ModelSpec, temperature: float, bound: float, positive: bool) -> float:
    """A probability threshold whose ``logit_threshold`` is <= ``bound`` (``positive``:
    the cell at ``bound`` is ALL) and as large as possible, or > ``bound`` and as small as
    possible; computed with the spec's own rule."""
    p = float(spec.with_updates(temperature=temperature).probability([bound])[0])

    def lt(q: float) -> float:
        return spec.with_updates(temperature=temperature, threshold=q).logit_threshold

    for _ in range(10_000):
        if positive and lt(p) > bound:
            p = float(np.nextafter(p, 0.0))
        elif not positive and lt(p) <= bound:
            p = float(np.nextafter(p, 1.0))
        else:
            return p
    raise DataError("cannot place the threshold at this logit (rounding)")  # pragma: no cover


def _best_f1_cut(z: np.ndarray, t: np.ndarray) -> float:
    """The logit threshold of highest weighted F1 (midway between distinct logits)."""
    order = np.argsort(-z, kind="mergesort")
    zs, ts = z[order], t[order]
    p_total, n_total = float(ts.sum()), float(len(ts) - ts.sum())
    last = np.flatnonzero(np.r_[zs[1:] != zs[:-1], True])  # last index of each tie group
    k = np.r_[0, last + 1].astype(np.float64)  # cells labelled ALL at each cut
    tp = np.r_[0.0, np.cumsum(ts)[last]]
    fp = k - tp
    fn = p_total - tp
    tn = n_total - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_all = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        f1_hem = np.where(tn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
    wf1 = (p_total * f1_all + n_total * f1_hem) / (p_total + n_total)
    j = int(np.argmax(wf1))  # first maximum: the highest threshold among equals
    if j == 0:
        return float(zs[0]) + 1.0  # nobody ALL
    lowest_in = float(zs[last[j - 1]])
    nxt = last[j - 1] + 1
    if nxt >= len(zs):
        return lowest_in - 1.0  # everybody ALL
    return 0.5 * (lowest_in + float(zs[nxt]))


def choose_threshold(spec: ModelSpec, logits: npt.ArrayLike, y: npt.ArrayLike,
                     temperature: float, rule: Rule) -> float:
    """The probability threshold (at ``temperature``) that ``rule`` picks on these cells."""
    z, t = _check(logits, y)
    if rule.kind == "sensitivity":
        pos = np.sort(z[t == 1])[::-1]
        k = max(1, math.ceil(float(rule.target or 0) * len(pos) - 1e-9))
        boundary = float(pos[k - 1])  # the lowest ALL cell that must stay ALL
        lower = z[z < boundary]
        cut = 0.5 * (boundary + float(lower.max())) if len(lower) else boundary - 1.0
    elif rule.kind == "specificity":
        neg = np.sort(z[t == 0])
        k = max(1, math.ceil(float(rule.target or 0) * len(neg) - 1e-9))
        boundary = float(neg[k - 1])  # the highest HEM cell that must stay HEM
        higher = z[z > boundary]
        cut = 0.5 * (boundary + float(higher.min())) if len(higher) else boundary + 1.0
    else:
        cut = _best_f1_cut(z, t)
    return _nudge(spec, temperature, cut, positive=True)


def _summary(cal: CalibrationMetrics) -> CalibrationFigures:
    return CalibrationFigures(cal.ece, cal.brier, cal.log_loss, cal.bins)


def calibrate(spec: ModelSpec, logits: npt.ArrayLike, y: npt.ArrayLike,
              patients: list[str], rule: Rule) -> Calibration:
    """Fit the temperature, then choose the threshold, on these labelled cells."""
    z, t = _check(logits, y)
    temp = fit_temperature(z, t)
    thr = choose_threshold(spec, z, t, temp, rule)
    new = spec.with_updates(temperature=temp, threshold=thr)
    pred = (z >= new.logit_threshold).astype(np.int64)
    m = metrics(t.astype(np.int64).tolist(), pred.tolist())
    raw = spec.with_updates(temperature=1.0)
    return Calibration(
        temperature=temp, threshold=thr, logit_threshold=new.logit_threshold, rule=rule,
        cells=len(z), cells_all=int(t.sum()), cells_hem=int(len(t) - t.sum()),
        patients=patients,
        before=_summary(calibration_metrics(t, raw.probability(z), z)),
        after=_summary(calibration_metrics(t, new.probability(z), z / temp)),
        at_threshold={"sensitivity_all": m.sensitivity_all,
                      "specificity_all": m.specificity_all,
                      "weighted_f1": m.weighted_f1},
        nll_at_1=nll(z, t, 1.0), nll=nll(z, t, temp))


def calibrated_spec(spec: ModelSpec, cal: Calibration, data_fingerprint: str,
                    source: str) -> ModelSpec:
    """``spec`` with the temperature, threshold and how they were chosen."""
    method = "temperature scaling (NLL) + " + (
        "threshold of best weighted F1" if cal.rule.kind == "f1"
        else f"largest threshold reaching the target {cal.rule.kind}"
        if cal.rule.kind == "sensitivity"
        else f"smallest threshold reaching the target {cal.rule.kind}")
    calibration: dict[str, Any] = {
        "method": method,
        "target": cal.rule.describe(),
        "data_fingerprint": data_fingerprint,
        "patients": list(cal.patients),
        "source": source,
        "cells": cal.cells,
        "nll_before": cal.nll_at_1,
        "nll_after": cal.nll,
        "ece_before": cal.before.ece,
        "ece_after": cal.after.ece,
        "at_threshold": dict(cal.at_threshold),
    }
    return spec.with_updates(temperature=cal.temperature, threshold=cal.threshold,
                             calibration=calibration)


def write_model(src: Path, dst: Path, spec: ModelSpec) -> None:
    """Copy the ONNX graph of ``src`` to ``dst`` with ``spec`` as its spec, atomically."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(src), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{escape_path(src)}: not an ONNX model ({first_line(exc)})") from exc
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ModelError(f"{escape_path(src)}: its weights are in external data files",
                         "calibrate a model saved as one file")
    keep = [p for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=SPEC_KEY, value=spec.to_json())
    atomic_write_bytes(dst, proto.SerializeToString())


# -- the cells to calibrate on, and the patient rule (calibrate's library side) -------------

@dataclass(frozen=True)
class Cells:
    """The labelled cells to calibrate on: logits, truth (1 = ALL), their patients, the
    data's fingerprint and a description for the spec; ``left_out``: images that could not
    be read."""

    logits: np.ndarray
    truth: np.ndarray
    patients: list[str]
    fingerprint: str
    source: str
    left_out: int = 0


def cells_from_predictions(path: Path, labels: Path | None = None,
                           folds: str | None = None) -> Cells:
    """The labelled rows of a predictions file (``folds``: ``--folds`` as given), which
    must all carry a logit."""
    from .predictions import parse_folds, read_predictions

    ps = read_predictions(path, labels, parse_folds(folds))
    if not ps.has_logits:
        raise DataError(f"{path}: the rows carry no logit for every cell",
                        "classify with this release (it writes the logit column)")
    keep = [i for i, t in enumerate(ps.truth) if t is not None]
    return Cells(
        logits=np.asarray([ps.logits[i] for i in keep]),
        truth=np.asarray([ps.truth[i] for i in keep], dtype=np.int64),
        patients=sorted({p for i in keep if (p := ps.patients[i])}),
        fingerprint=ps.fingerprint(),
        source=f"predictions {path.name}" + (f" folds {folds}" if folds else ""))


def labelled_images(data: Sequence[Path], labels: Path | None = None) -> list[Item]:
    """The labelled images under ``data`` (DataError when there is none)."""
    from .data import collect

    items = [it for it in collect(list(data), labels) if it.label is not None]
    if not items:
        raise DataError("no labelled image to calibrate on",
                        "put them under all/ and hem/ folders, or pass --labels")
    return items


def cells_from_images(model: Model, items: Sequence[Item], data: Sequence[Path],
                      batch_size: int = 32, workers: int | None = None,
                      progress: Callable[[int], None] | None = None) -> Cells:
    """The model's logits of ``items`` (:func:`labelled_images` of ``data``); ``progress``
    hears how many images each batch finished."""
    from .classify import predict_stream
    from .data import fingerprint

    preds = list(predict_stream(model, items, batch_size, workers,
                                on_batch=lambda b: progress(len(b)) if progress else None))
    ok = [p for p in preds if p.row.error is None and p.row.logit is not None]
    return Cells(
        logits=np.asarray([p.row.logit for p in ok], dtype=np.float64),
        truth=np.asarray([p.item.label for p in ok], dtype=np.int64),
        patients=sorted({p.item.patient for p in ok if p.item.patient}),
        fingerprint=fingerprint(p.item for p in ok),
        source="images " + ", ".join(str(d) for d in data)[:200],
        left_out=len(preds) - len(ok))


def training_patients_warning(patients: Sequence[str], trained_on: Iterable[object],
                              from_predictions: bool) -> str | None:
    """Calibrating on the model's own training patients makes the temperature too low:
    the line that says so, or None."""
    trained = sorted(set(patients) & set(trained_on))
    if not trained:
        return None
    shown = f"{', '.join(trained[:8])}{', ...' if len(trained) > 8 else ''}"
    why = ("if these logits are this model's (not out-of-fold), they are over-confident "
           "and the temperature will be too low" if from_predictions else
           "their logits are over-confident, so the temperature will be too low")
    return (f"calibrating on {len(trained)} patients the model was trained on ({shown}): "
            f"{why}")


def with_patient_rule(spec: ModelSpec, path: Path) -> ModelSpec:
    """``spec`` with the rule of ``path`` (the JSON scripts/patient_rule.py writes, or a
    bare rule object) under ``extensions["leukoedge.patient"]``."""
    import json

    from .errors import SpecError
    from .patient import EXTENSION_KEY, parse

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"--patient-rule {path}: not readable JSON") from exc
    if isinstance(raw, dict) and isinstance(raw.get("rule"), dict):
        raw = raw["rule"]  # scripts/patient_rule.py's output
    try:
        rule = parse(raw)
    except SpecError as exc:
        raise DataError(f"--patient-rule {path}: {exc.message}") from exc
    return spec.with_updates(extensions={**spec.extensions, EXTENSION_KEY: rule.to_json()})


@dataclass(frozen=True)
class Written:
    """A calibrated model written and read back: the spec written, and what was fitted
    (None when only a patient rule was put in)."""

    spec: ModelSpec
    fitted: Calibration | None


def write_calibrated(model_path: Path, spec: ModelSpec, out: Path, cells: Cells | None,
                     rule: Rule = Rule(), patient_rule: Path | None = None) -> Written:
    """Fit on ``cells`` (None: only ``patient_rule`` goes in), write the model with the new
    spec to ``out`` and read it back (verified against its graph)."""
    from .session import SessionConfig, load_model

    fitted = None
    new = spec
    if cells is not None:
        fitted = calibrate(spec, cells.logits, cells.truth, cells.patients, rule)
        new = calibrated_spec(spec, fitted, cells.fingerprint, cells.source)
    if patient_rule is not None:
        new = with_patient_rule(new, patient_rule)
    write_model(model_path, out, new)
    load_model(out, SessionConfig(provider="cpu", threads=1))  # reads back, verified
    return Written(new, fitted)
