"""Metrics for ALL vs HEM, numpy only, and the evaluation report (:func:`build_report`).

Positive class = ALL (label 1). Weighted F1 (the ISBI 2019 challenge metric) is the mean of
the per-class F1 scores weighted by each class's support. ROC AUC is the Mann-Whitney
statistic with ties counted half. Error rows are counted apart and never enter a metric.
Calibration: expected calibration error of P(ALL) over 15 equal-width bins, Brier score,
log-loss. Intervals: a patient-level bootstrap stratified by class
(:func:`bootstrap_intervals`). Reports are built from :class:`Scores` (:func:`report_of`),
whether the cells came from running a model or from a predictions file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import numpy.typing as npt

from .spec import LABELS

if TYPE_CHECKING:
    from typing import NotRequired  # Python 3.11; only an annotation here (3.10 runs)

    from .classify import Prediction
    from .data import Item
    from .drift import DriftSummary
    from .patient import PatientMetrics, PatientView
    from .predictions import PredictionSet
    from .session import Model
    from .spec import ModelSpec


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """2x2 matrix ``m[true, pred]`` with 0 = HEM, 1 = ALL."""
    m = np.zeros((2, 2), dtype=np.int64)
    np.add.at(m, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return m


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall, F1 and support of one class."""

    precision: float
    recall: float
    f1: float
    support: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Confusion:
    """The 2x2 matrix ``matrix[true][pred]`` in ``labels`` order."""

    labels: list[str]
    matrix: list[list[int]]
    rows: str = "true"
    columns: str = "predicted"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def per_class(m: np.ndarray) -> dict[str, ClassScores]:
    out: dict[str, ClassScores] = {}
    for c, name in enumerate(LABELS):
        tp = m[c, c]
        fp = m[:, c].sum() - tp
        fn = m[c, :].sum() - tp
        p = _div(tp, tp + fp)
        r = _div(tp, tp + fn)
        f = _div(2 * p * r, p + r)
        out[name] = ClassScores(p, r, f, int(m[c, :].sum()))
    return out


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s``, ties sharing their average rank."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg = ends - (counts - 1) / 2.0
    return np.asarray(avg[inverse.reshape(-1)], dtype=np.float64)


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class Metrics:
    """The image-level metrics of :func:`metrics` (ALL = positive)."""

    n: int
    accuracy: float
    balanced_accuracy: float
    weighted_f1: float
    macro_f1: float
    sensitivity_all: float
    specificity_all: float
    roc_auc: float | None
    per_class: dict[str, ClassScores]
    confusion: Confusion
    majority_rate: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    def __getitem__(self, name: str) -> Any:
        """``m["weighted_f1"]`` for callers that still index by name (the training
        plugin); new code reads attributes, which mypy checks."""
        return self.to_json()[name]


def metrics(y_true: npt.ArrayLike, y_pred: npt.ArrayLike,
            prob_all: npt.ArrayLike | None = None) -> Metrics:
    """All image-level metrics for ALL (1) vs HEM (0)."""
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    m = confusion(yt, yp)
    pc = per_class(m)
    n = int(m.sum())
    support = np.array([pc[c].support for c in LABELS], dtype=np.float64)
    f1s = np.array([pc[c].f1 for c in LABELS])
    present = support > 0
    return Metrics(
        n=n,
        accuracy=_div(np.trace(m), n),
        balanced_accuracy=float(np.mean([pc[c].recall for c, k in
                                         zip(LABELS, present) if k])) if n else 0.0,
        weighted_f1=float((f1s * support).sum() / support.sum()) if n else 0.0,
        macro_f1=float(f1s[present].mean()) if n else 0.0,
        sensitivity_all=pc["all"].recall,
        specificity_all=pc["hem"].recall,
        roc_auc=None if prob_all is None else roc_auc(yt, np.asarray(prob_all)),
        per_class=pc,
        confusion=Confusion(list(LABELS), m.tolist()),
        majority_rate=float(max(support) / n) if n else 0.0,
    )


#: Equal-width bins of the expected calibration error and the reliability diagram.
ECE_BINS = 15
#: Patient-level bootstrap defaults (evaluate --resamples/--seed).
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Reliability:
    """Equal-width bins of P(ALL): edges, cells, mean P(ALL), fraction ALL per bin."""

    bins: int
    edges: list[float]
    count: list[int]
    mean_prob: list[float | None]
    frac_all: list[float | None]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationMetrics:
    """How trustworthy P(ALL) is (:func:`calibration_metrics`); ``uncalibrated``: the same
    at temperature 1, when the report's temperature is not 1 and the logits are known."""

    ece: float
    brier: float
    log_loss: float
    bins: int
    reliability: Reliability
    uncalibrated: CalibrationMetrics | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"ece": self.ece, "brier": self.brier, "log_loss": self.log_loss,
                             "bins": self.bins, "reliability": self.reliability.to_json()}
        if self.uncalibrated is not None:
            d["uncalibrated"] = self.uncalibrated.to_json()
        return d


def reliability(y_true: npt.ArrayLike, prob: npt.ArrayLike,
                bins: int = ECE_BINS) -> Reliability:
    """Equal-width bins of P(ALL) over [0, 1] (1.0 falls in the last bin), as
    scikit-learn's ``calibration_curve`` draws them: per bin the number of cells, their
    mean P(ALL) and the fraction that are ALL (``None`` for an empty bin)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    psum = np.bincount(idx, weights=p, minlength=bins)
    ysum = np.bincount(idx, weights=y, minlength=bins)
    mean_prob = [float(a / c) if c else None for a, c in zip(psum, count)]
    frac_all = [float(a / c) if c else None for a, c in zip(ysum, count)]
    return Reliability(bins, [i / bins for i in range(bins + 1)], count.tolist(),
                       mean_prob, frac_all)


def calibration_metrics(y_true: npt.ArrayLike, prob: npt.ArrayLike,
                        scaled_logits: npt.ArrayLike | None = None,
                        bins: int = ECE_BINS) -> CalibrationMetrics:
    """How trustworthy P(ALL) is: expected calibration error (``bins`` equal-width bins,
    sum over bins of cells/N x |fraction ALL - mean P(ALL)|), Brier score (mean squared
    error of P(ALL)) and log-loss (mean negative log-likelihood; from the logits divided by
    the temperature when given, which stays exact where P(ALL) rounds to 0 or 1, else from
    P(ALL) clipped to [1e-15, 1 - 1e-15])."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(prob, dtype=np.float64)
    n = len(y)
    rel = reliability(y, p, bins)
    ece = 0.0
    for c, mp, fa in zip(rel.count, rel.mean_prob, rel.frac_all):
        if c and fa is not None and mp is not None:
            ece += c / n * abs(fa - mp)
    if scaled_logits is not None:
        z = np.asarray(scaled_logits, dtype=np.float64)
        softplus = np.logaddexp(0.0, z)
        log_loss = float(np.mean(softplus - y * z))
    else:
        q = np.clip(p, 1e-15, 1 - 1e-15)
        log_loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return CalibrationMetrics(float(ece), float(np.mean((p - y) ** 2)), log_loss, bins, rel)


def _weighted_auc(w: np.ndarray, y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of cell weights ``w`` [B, n] (ties count half)."""
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    pos = y[order].astype(bool)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ws = w[:, order]
    wp = np.add.reduceat(np.where(pos, ws, 0.0), starts, axis=1)
    wn = np.add.reduceat(np.where(pos, 0.0, ws), starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    num = (wp * (below + 0.5 * wn)).sum(axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile interval."""

    estimate: float
    low: float
    high: float
    width: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


#: the metrics :func:`bootstrap_intervals` gives an interval for
INTERVAL_METRICS = ("weighted_f1", "sensitivity_all", "specificity_all", "roc_auc")


@dataclass(frozen=True)
class Intervals:
    """The patient-bootstrap intervals of :func:`bootstrap_intervals` (None: no finite
    resample or no estimate)."""

    method: str
    unit: str
    resamples: int
    seed: int
    level: float
    patients_all: int
    patients_hem: int
    weighted_f1: Interval | None
    sensitivity_all: Interval | None
    specificity_all: Interval | None
    roc_auc: Interval | None

    def of(self, name: str) -> Interval | None:
        """The interval of one of :data:`INTERVAL_METRICS` (ValueError for another)."""
        if name not in INTERVAL_METRICS:
            raise ValueError(f"no interval for {name!r}")
        iv: Interval | None = getattr(self, name)
        return iv

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_intervals(y_true: Sequence[int], y_pred: Sequence[int], score: Sequence[float],
                        patients: Sequence[str | None], resamples: int = RESAMPLES,
                        seed: int = SEED, level: float = LEVEL) -> Intervals:
    """Percentile intervals for weighted F1, sensitivity, specificity and ROC AUC by a
    patient-level bootstrap stratified by class.

    Patients are the unit: ALL patients and HEM patients are resampled separately (with
    replacement, as many as there are), so every resample holds both classes, and a patient's
    cells always travel together. A patient's class is that of the majority of its cells.
    Cells without a patient id count as patients of their own (``unit`` says so). A resample
    is the original cells weighted by how often their patient was drawn, which is the same
    as concatenating the drawn patients.
    """
    y = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    sc = np.asarray(score, dtype=np.float64)
    keys = [p if p else f"\0cell{i}" for i, p in enumerate(patients)]
    ids = sorted(set(keys))
    index = {k: i for i, k in enumerate(ids)}
    cell_patient = np.array([index[k] for k in keys], dtype=np.int64)
    n_all_cells = np.bincount(cell_patient, weights=(y == 1), minlength=len(ids))
    n_cells = np.bincount(cell_patient, minlength=len(ids))
    patient_all = n_all_cells * 2 > n_cells
    groups = [np.flatnonzero(patient_all), np.flatnonzero(~patient_all)]
    rng = np.random.default_rng(seed)
    est = metrics(y.tolist(), yp.tolist(), sc.tolist())
    names = INTERVAL_METRICS
    draws: dict[str, list[np.ndarray]] = {k: [] for k in names}
    chunk = max(1, min(resamples, 4_000_000 // max(1, len(y))))
    done = 0
    while done < resamples:
        b = min(chunk, resamples - done)
        pw = np.zeros((b, len(ids)))
        for g in groups:
            if len(g):
                pw[:, g] = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)), size=b)
        w = pw[:, cell_patient]
        tp = w @ ((y == 1) & (yp == 1)).astype(np.float64)
        fn = w @ ((y == 1) & (yp == 0)).astype(np.float64)
        fp = w @ ((y == 0) & (yp == 1)).astype(np.float64)
        tn = w @ ((y == 0) & (yp == 0)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1_all = np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
            f1_hem = np.where(tn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
            draws["weighted_f1"].append(((tp + fn) * f1_all + (tn + fp) * f1_hem)
                                        / (tp + fn + tn + fp))
            draws["sensitivity_all"].append(np.where(tp + fn > 0, tp / (tp + fn), np.nan))
            draws["specificity_all"].append(np.where(tn + fp > 0, tn / (tn + fp), np.nan))
        draws["roc_auc"].append(_weighted_auc(w, y, sc))
        done += b
    alpha = (1.0 - level) / 2.0
    found: dict[str, Interval | None] = {}
    for k in names:
        v = np.concatenate(draws[k])
        v = v[np.isfinite(v)]
        e = getattr(est, k)
        if len(v) == 0 or e is None:
            found[k] = None
            continue
        lo, hi = (float(x) for x in np.quantile(v, [alpha, 1.0 - alpha]))
        found[k] = Interval(float(e), lo, hi, hi - lo)
    return Intervals(
        method="patient bootstrap, stratified by class (ALL and HEM patients resampled "
               "separately), percentile interval",
        unit="patient" if all(patients) else "patient (cells without one: each its own)",
        resamples=resamples, seed=seed, level=level,
        patients_all=int(len(groups[0])), patients_hem=int(len(groups[1])),
        weighted_f1=found["weighted_f1"], sensitivity_all=found["sensitivity_all"],
        specificity_all=found["specificity_all"], roc_auc=found["roc_auc"])


@dataclass
class PatientRow:
    patient: str
    true_label: str | None
    cells: int
    predicted_all: int
    mean_prob_all: float
    accuracy: float | None
    vote: str


def per_patient(patients: Sequence[str | None], y_true: Sequence[int | None],
                y_pred: Sequence[int], prob: Sequence[float]) -> list[PatientRow]:
    """Per-patient table and majority vote (ties go to ALL: missing a leukaemia costs more)."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p or "unknown", []).append(i)
    rows = []
    for pid in sorted(groups):
        idx = groups[pid]
        truths = {y_true[i] for i in idx if y_true[i] is not None}
        t = next(iter(truths)) if len(truths) == 1 else None
        n_all = int(sum(y_pred[i] for i in idx))
        acc = None
        if t is not None:
            acc = _div(sum(1 for i in idx if y_pred[i] == t), len(idx))
        vote = LABELS[1] if n_all * 2 >= len(idx) else LABELS[0]
        rows.append(PatientRow(pid, None if t is None else LABELS[t], len(idx), n_all,
                               float(np.mean([prob[i] for i in idx])), acc, vote))
    return rows


@dataclass(frozen=True)
class PatientVote:
    """The majority vote per patient scored against the patients' truth."""

    patients: int
    accuracy: float
    weighted_f1: float
    confusion: Confusion

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def patient_vote_metrics(rows: Sequence[PatientRow]) -> PatientVote | None:
    known = [r for r in rows if r.true_label is not None and r.patient != "unknown"]
    if not known:
        return None
    yt = [LABELS.index(r.true_label) for r in known]
    yp = [LABELS.index(r.vote) for r in known]
    m = metrics(yt, yp)
    return PatientVote(len(known), m.accuracy, m.weighted_f1, m.confusion)


class ErrorRow(TypedDict):
    path: str
    error: str


class Report(TypedDict):
    """What ``evaluate`` reports (``--report``/``--json`` write it as JSON)."""

    model: str
    architecture: str
    threshold: float
    temperature: float
    provider: str
    files: int
    errors: int
    error_rows: list[ErrorRow]  # at most 1000
    unlabelled: int
    metrics: Metrics | None  # see :func:`metrics`; None without a labelled image
    #: see :func:`calibration_metrics`, at the spec's temperature; ``uncalibrated`` holds
    #: the same at temperature 1 when the temperature is not 1 and logits are known
    calibration: CalibrationMetrics | None
    intervals: Intervals | None  # see :func:`bootstrap_intervals`
    patients: list[dict[str, Any]]  # :class:`PatientRow` fields
    patient_vote: PatientVote | None  # see :func:`patient_vote_metrics`
    warnings: list[str]  # e.g. evaluated on the patients the model was calibrated on
    #: see :func:`leukoedge.drift.summary`; set by :func:`build_report` when the model has
    #: drift statistics
    drift: NotRequired[DriftSummary | None]
    #: the patient's view (leukoedge.patient): one summary per patient (its COLUMNS), every
    #: cell and error row included; the figures over patients with a truth
    #: (:func:`leukoedge.patient.patient_metrics`); the rule and drift flag used
    patient_calls: list[dict[str, Any]]
    patient_metrics: PatientMetrics | None
    patient_rule: dict[str, Any]


@dataclass
class Scores:
    """The cells of one evaluation: what every report is built from.

    ``logits`` are the model's raw outputs (NaN where unknown); ``probs`` are
    :meth:`~leukoedge.spec.ModelSpec.probability` of them, or a file's ``prob_all`` when it
    has no logits. ``truth`` is 1 (ALL), 0 (HEM) or None (unlabelled).
    """

    paths: list[str]
    patients: list[str | None]
    truth: list[int | None]
    logits: np.ndarray
    probs: np.ndarray

    @property
    def has_logits(self) -> bool:
        return bool(len(self.logits)) and bool(np.all(np.isfinite(self.logits)))

    def predicted(self, spec: ModelSpec) -> np.ndarray:
        """1 = ALL: the logit against ``spec.logit_threshold`` (as classify labels), or,
        without logits, P(ALL) against ``spec.threshold``."""
        if self.has_logits:
            return (self.logits >= spec.logit_threshold).astype(np.int64)
        return (self.probs >= spec.threshold).astype(np.int64)


def scores_of(spec: ModelSpec, paths: Sequence[str], patients: Sequence[str | None],
              truth: Sequence[int | None], logits: Sequence[float] | None,
              probs: Sequence[float] | None = None) -> Scores:
    """:class:`Scores` whose probabilities come from the spec (its temperature) when the
    logits are known, else from ``probs`` as given."""
    n = len(paths)
    lg = (np.full(n, np.nan) if logits is None
          else np.asarray(logits, dtype=np.float64).reshape(n))
    sc = Scores(list(paths), list(patients), list(truth), lg, np.full(n, np.nan))
    if sc.has_logits or probs is None:
        sc.probs = spec.probability(lg)
    else:
        sc.probs = np.asarray(probs, dtype=np.float64).reshape(n)
    return sc


def patient_warnings(spec: ModelSpec, patients: Sequence[str | None],
                     from_file: bool = False) -> list[str]:
    """Warn when the evaluated patients include the model's calibration or training
    patients (both listed in its spec): the figures would be optimistic. ``from_file``:
    the logits come from a predictions file, perhaps made by other models (out-of-fold),
    so the training patients of this model are named as a condition."""
    seen = {p for p in patients if p}
    out = []
    for what, listed in (("calibrated", spec.calibration.get("patients")),
                         ("trained", spec.training.get("patients"))):
        both = sorted(seen & set(listed or ()))
        if both:
            shown = ", ".join(both[:8]) + (", ..." if len(both) > 8 else "")
            line = (f"{len(both)} of the {len(seen)} patients evaluated are patients the "
                    f"model was {what} on ({shown})")
            if what == "trained" and from_file:
                line += ("; if these rows' logits are this model's (not out-of-fold), the "
                         "figures are optimistic")
            else:
                line += ": these figures are optimistic"
            out.append(line)
    return out


def report_of(scores: Scores, spec: ModelSpec, *, model: str, provider: str, files: int,
              error_rows: Sequence[ErrorRow], resamples: int = RESAMPLES, seed: int = SEED,
              from_file: bool = False, view: PatientView | None = None,
              drift: Sequence[float | None] | None = None,
              error_patients: Sequence[str | None] = ()) -> Report:
    """The evaluation report of scored cells: metrics, calibration, patient-bootstrap
    intervals, the per-patient table, warnings. Error rows are counted and listed, never
    scored; cells without a label are counted as ``unlabelled``.

    The patient's view (:mod:`leukoedge.patient`) uses ``view`` (default: the spec's rule
    and drift flag), the cells' ``drift`` scores and the patients of the error rows."""
    lab = [i for i, t in enumerate(scores.truth) if t is not None]
    y_true = [int(scores.truth[i] or 0) for i in lab]
    pred_all = scores.predicted(spec)
    y_pred = [int(pred_all[i]) for i in lab]
    prob = [float(scores.probs[i]) for i in lab]
    patients = [scores.patients[i] for i in lab]
    if lab:
        rows = per_patient(patients, y_true, y_pred, prob)
    else:  # nothing labelled: the table and the vote still say what the model thinks
        rows = per_patient(scores.patients, [None] * len(scores.paths),
                           [int(v) for v in pred_all], scores.probs.tolist())
    cal: CalibrationMetrics | None = None
    intervals: Intervals | None = None
    if lab:
        z = scores.logits[lab] if scores.has_logits else None
        cal = calibration_metrics(y_true, prob, None if z is None else z / spec.temperature)
        if z is not None and spec.temperature != 1.0:
            raw = spec.with_updates(temperature=1.0).probability(z)
            cal = replace(cal, uncalibrated=calibration_metrics(y_true, raw, z))
        if resamples > 0:
            intervals = bootstrap_intervals(y_true, y_pred, prob, patients, resamples, seed)
    part = _patient_view(scores, spec, pred_all, view, drift, error_patients)
    return {
        "model": model,
        "architecture": spec.architecture,
        "threshold": spec.threshold,
        "temperature": spec.temperature,
        "provider": provider,
        "files": files,
        "errors": len(error_rows),
        "error_rows": list(error_rows)[:1000],
        "unlabelled": len(scores.paths) - len(lab),
        "metrics": metrics(y_true, y_pred, prob) if lab else None,
        "calibration": cal,
        "intervals": intervals,
        "patients": [asdict(r) for r in rows],
        "patient_vote": patient_vote_metrics(rows),
        "warnings": patient_warnings(spec, patients, from_file),
        "patient_calls": part["patient_calls"],
        "patient_metrics": part["patient_metrics"],
        "patient_rule": part["patient_rule"],
    }


class _PatientPart(TypedDict):
    patient_calls: list[dict[str, Any]]
    patient_metrics: PatientMetrics | None
    patient_rule: dict[str, Any]


def _patient_view(scores: Scores, spec: ModelSpec, pred_all: np.ndarray,
                  view: PatientView | None, drift: Sequence[float | None] | None,
                  error_patients: Sequence[str | None]) -> _PatientPart:
    """The report's patient summaries (:func:`leukoedge.patient.summarize`)."""
    from .patient import PatientView, patient_metrics, patient_truth, summarize
    from .patient import from_spec as rule_of

    if view is None:
        from .drift import from_spec as drift_of

        st = drift_of(spec)
        view = PatientView(rule_of(spec), None if st is None else st.patient_flag)
    n, ne = len(scores.paths), len(error_patients)
    called: list[bool | int | None] = [int(v) for v in pred_all]
    probs: list[float | None] = [float(v) for v in scores.probs]
    drifts: list[float | None] = list(drift) if drift is not None else [None] * n
    rows = summarize(list(scores.patients) + list(error_patients), called + [None] * ne,
                     probs + [None] * ne, drifts + [None] * ne, view)
    return {"patient_calls": [r.to_json() for r in rows],
            "patient_metrics": patient_metrics(rows, patient_truth(scores.patients,
                                                                   scores.truth)),
            "patient_rule": view.to_json()}


def build_report(preds: Sequence[Prediction], model: Model, resamples: int = RESAMPLES,
                 seed: int = SEED, view: PatientView | None = None) -> Report:
    """The evaluation report of one run over labelled (and unlabelled) images.

    Probabilities are the spec's :meth:`~leukoedge.spec.ModelSpec.probability` of the
    rows' logits (what classify wrote as ``prob_all``).
    """
    ok = [p for p in preds if p.row.error is None]
    scores = scores_of(model.spec, [p.row.path for p in ok], [p.item.patient for p in ok],
                       [p.item.label for p in ok],
                       [p.row.logit if p.row.logit is not None else math.nan for p in ok],
                       [p.row.prob_all if p.row.prob_all is not None else math.nan
                        for p in ok])
    errors = [ErrorRow(path=p.row.path, error=p.row.error) for p in preds if p.row.error]
    if view is None:
        from .patient import PatientView
        from .patient import from_spec as rule_of

        view = PatientView(rule_of(model.spec),
                           None if model.drift is None else model.drift.patient_flag)
    rep = report_of(scores, model.spec, model=str(model.path), provider=model.provider,
                    files=len(preds), error_rows=errors, resamples=resamples, seed=seed,
                    view=view, drift=[p.row.drift for p in ok],
                    error_patients=[p.row.patient for p in preds if p.row.error])
    if model.drift is not None:
        from .drift import summary

        rep["drift"] = summary([p.row.patient for p in ok], [p.row.drift for p in ok],
                               model.drift.patient_flag, view.rule.min_cells)
    return rep


def report_json(rep: Report) -> dict[str, Any]:
    """The report as the JSON object ``--report``/``--json`` write (NaN/inf as null)."""
    out: dict[str, Any] = clean(dict(rep))
    return out


def predict_images(model: Model, items: Sequence[Item], rows_to: Path | None = None,
                   overwrite: bool = False, batch_size: int = 32, workers: int | None = None,
                   progress: Callable[[int], None] | None = None) -> list[Prediction]:
    """Every item through the model (:func:`leukoedge.classify.predict_stream`); with
    ``rows_to`` the rows go there too as they come (``evaluate --predictions``)."""
    from .classify import predict_stream
    from .output import ResultWriter

    writer = ResultWriter(rows_to, overwrite=overwrite) if rows_to else None
    try:
        def on_batch(batch: list[Prediction]) -> None:
            if writer is not None:
                writer.write([p.row for p in batch])
            if progress is not None:
                progress(len(batch))

        return list(predict_stream(model, items, batch_size, workers, on_batch=on_batch))
    finally:
        if writer is not None:
            writer.close()


def write_report_json(path: Path, rep: Report) -> None:
    """``evaluate --report``: the report as indented JSON, written atomically."""
    from .output import write_json

    write_json(path, report_json(rep))


def clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None; a result type becomes its ``to_json()``."""
    to_json = getattr(obj, "to_json", None)
    if callable(to_json) and not isinstance(obj, type):
        return clean(to_json())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


# -- a predictions file in, a report out (evaluate --from-predictions, report) ------------------

@dataclass(frozen=True)
class Message:
    """A line for the person running the command: a note, or a warning."""

    text: str
    warning: bool = False


@dataclass(frozen=True)
class ScoringContext:
    """What scores a predictions file: the model's name as reported, its spec, the patient
    view, and what the caller should say about how they were chosen."""

    name: str
    spec: ModelSpec
    view: PatientView
    messages: tuple[Message, ...] = ()


def scoring_context(predictions: Path, model: Path | None, threshold: float | None,
                    min_cells: int | None) -> ScoringContext:
    """The spec that scores a predictions file and its patient view: ``model``'s (read and
    checked against its graph, never run); else the model recorded in the file's
    ``.meta.json`` (classify writes it: threshold, temperature, drift flag, patient rule);
    else temperature 1, threshold 0.5, the default rule and no drift flag ("cannot
    flag")."""
    from .drift import CANNOT_FLAG
    from .drift import from_spec as drift_of
    from .patient import DEFAULT_RULE, PatientView
    from .patient import from_spec as rule_of
    from .data import file_sha256
    from .provenance import meta_path, read_meta
    from .spec import ModelSpec

    meta = read_meta(predictions)
    if model is not None:
        from .session import SessionConfig, load_model

        spec = load_model(model, SessionConfig(provider="cpu", threads=1)).spec
        if threshold is not None:
            spec = spec.with_updates(threshold=threshold)
        said: tuple[Message, ...] = ()
        if meta is not None and meta.model_sha256 != file_sha256(model):
            said = (Message(f"{predictions} was written by {meta.model} (sha256 "
                            f"{meta.model_sha256[:12]}...), not by --model {model}", True),)
        stats = drift_of(spec)
        view = PatientView(rule_of(spec).with_min_cells(min_cells),
                           None if stats is None else stats.patient_flag,
                           "" if stats else "the model has no drift statistics")
        return ScoringContext(str(model), spec, view, said)
    if meta is None:
        spec = ModelSpec(architecture="unknown", input_size=8)
        if threshold is not None:
            spec = spec.with_updates(threshold=threshold)
        return ScoringContext(
            "(none)", spec, PatientView(DEFAULT_RULE.with_min_cells(min_cells), None,
                                        CANNOT_FLAG),
            (Message(f"no --model and no {meta_path(predictions).name}: scoring the rows' "
                     "logits at temperature 1, threshold 0.5; drift scores shown, not "
                     "flagged"),))
    said = (Message(f"scoring with the model recorded in {meta_path(predictions).name}: "
                    f"{meta.model} (threshold {meta.threshold:g}, temperature "
                    f"{meta.temperature:g})"),)
    spec = ModelSpec(architecture="unknown", input_size=8, threshold=meta.threshold,
                     temperature=meta.temperature)
    if threshold is not None:
        spec = spec.with_updates(threshold=threshold)
    view = PatientView(meta.rule.with_min_cells(min_cells), meta.drift_flag,
                       "" if meta.drift_flag is not None
                       else "the model has no drift statistics")
    return ScoringContext(f"{meta.model} (sha256 {meta.model_sha256[:12]}, from "
                          f"{meta_path(predictions).name})", spec, view, said)


@dataclass(frozen=True)
class FileReport:
    """The report of a predictions file, with the rows and the spec that scored them (the
    HTML page draws from all three) and the lines to show (:class:`Message`)."""

    report: Report
    rows: PredictionSet
    spec: ModelSpec
    messages: tuple[Message, ...]


def report_from_predictions(path: Path, *, model: Path | None = None,
                            labels: Path | None = None, threshold: float | None = None,
                            folds: Sequence[str] | None = None, resamples: int = RESAMPLES,
                            seed: int = SEED, min_cells: int | None = None,
                            need_labels: bool = False) -> FileReport:
    """The evaluation report of a predictions file's rows, scored with the spec of the
    model that made them (``model``, or the file's ``.meta.json``;
    :func:`scoring_context`), with the drift summary when the rows carry drift scores.
    ``need_labels`` (``evaluate``): refuse a file without a labelled row, and say when
    the rows' ``prob_all`` is used without the model's temperature; ``report`` draws a
    page without labels."""
    from .errors import DataError
    from .predictions import read_predictions

    ps = read_predictions(path, labels, None if folds is None else list(folds))
    if need_labels and not any(t is not None for t in ps.truth):
        raise DataError(f"{path}: no row has a label",
                        "give --labels FILE, or rows whose paths lie in all/ and hem/")
    ctx = scoring_context(path, model, threshold, min_cells)
    said = list(ctx.messages)
    spec, view = ctx.spec, ctx.view
    if need_labels and not ps.has_logits and spec.temperature != 1.0:
        said.append(Message("the rows carry no logits: their prob_all is used as written, "
                            "without this model's temperature"))
    rep = report_of(ps.scores(spec), spec, model=ctx.name, provider="(predictions file)",
                    files=ps.files, error_rows=ps.errors, resamples=resamples, seed=seed,
                    from_file=True, view=view, drift=ps.drift,
                    error_patients=ps.error_patients)
    if any(d is not None for d in ps.drift):
        from .drift import summary

        rep["drift"] = summary(ps.patients, ps.drift, view.drift_flag, view.rule.min_cells)
    return FileReport(rep, ps, spec, tuple(said))
