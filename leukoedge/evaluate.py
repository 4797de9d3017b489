"""Metrics for ALL vs HEM, numpy only, and the evaluation report (:func:`build_report`).

Positive class = ALL (label 1). Weighted F1 (the ISBI 2019 challenge metric) is the mean of
the per-class F1 scores weighted by each class's support. ROC AUC is the Mann-Whitney
statistic with ties counted half. Error rows are counted apart and never enter a metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from .data import LABEL_NAMES

if TYPE_CHECKING:
    from .classify import Prediction
    from .session import Model


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """2x2 matrix ``m[true, pred]`` with 0 = HEM, 1 = ALL."""
    m = np.zeros((2, 2), dtype=np.int64)
    np.add.at(m, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return m


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def per_class(m: np.ndarray) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for c, name in enumerate(LABEL_NAMES):
        tp = m[c, c]
        fp = m[:, c].sum() - tp
        fn = m[c, :].sum() - tp
        p = _div(tp, tp + fp)
        r = _div(tp, tp + fn)
        f = _div(2 * p * r, p + r)
        out[name] = {"precision": p, "recall": r, "f1": f, "support": int(m[c, :].sum())}
    return out


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve; None when only one class is present."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    n = len(s)
    while i < n:
        j = i
        while j + 1 < n and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def metrics(y_true: Sequence[int], y_pred: Sequence[int],
            prob_all: Sequence[float] | None = None) -> dict[str, Any]:
    """All image-level metrics for ALL (1) vs HEM (0)."""
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    m = confusion(yt, yp)
    pc = per_class(m)
    n = int(m.sum())
    support = np.array([pc[c]["support"] for c in LABEL_NAMES], dtype=np.float64)
    f1s = np.array([pc[c]["f1"] for c in LABEL_NAMES])
    present = support > 0
    return {
        "n": n,
        "accuracy": _div(np.trace(m), n),
        "balanced_accuracy": float(np.mean([pc[c]["recall"] for c, k in
                                            zip(LABEL_NAMES, present) if k])) if n else 0.0,
        "weighted_f1": float((f1s * support).sum() / support.sum()) if n else 0.0,
        "macro_f1": float(f1s[present].mean()) if n else 0.0,
        "sensitivity_all": pc["all"]["recall"],
        "specificity_all": pc["hem"]["recall"],
        "roc_auc": None if prob_all is None else roc_auc(yt, np.asarray(prob_all)),
        "per_class": pc,
        "confusion": {"labels": list(LABEL_NAMES), "matrix": m.tolist(),
                      "rows": "true", "columns": "predicted"},
        "majority_rate": float(max(support) / n) if n else 0.0,
    }


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
        vote = LABEL_NAMES[1] if n_all * 2 >= len(idx) else LABEL_NAMES[0]
        rows.append(PatientRow(pid, None if t is None else LABEL_NAMES[t], len(idx), n_all,
                               float(np.mean([prob[i] for i in idx])), acc, vote))
    return rows


def patient_vote_metrics(rows: Sequence[PatientRow]) -> dict[str, Any] | None:
    known = [r for r in rows if r.true_label is not None and r.patient != "unknown"]
    if not known:
        return None
    yt = [LABEL_NAMES.index(r.true_label) for r in known]
    yp = [LABEL_NAMES.index(r.vote) for r in known]
    m = metrics(yt, yp)
    return {"patients": len(known), "accuracy": m["accuracy"],
            "weighted_f1": m["weighted_f1"], "confusion": m["confusion"]}


class ErrorRow(TypedDict):
    path: str
    error: str


class Report(TypedDict):
    """What ``evaluate`` reports (``--report``/``--json`` write it as JSON)."""

    model: str
    architecture: str
    threshold: float
    provider: str
    files: int
    errors: int
    error_rows: list[ErrorRow]  # at most 1000
    unlabelled: int
    metrics: dict[str, Any] | None  # see :func:`metrics`; None without a labelled image
    patients: list[dict[str, Any]]  # :class:`PatientRow` fields
    patient_vote: dict[str, Any] | None  # see :func:`patient_vote_metrics`


def build_report(preds: Sequence[Prediction], model: Model) -> Report:
    """The evaluation report of one run over labelled (and unlabelled) images.

    Error rows are counted and listed, never scored; images without a label are counted
    as ``unlabelled``. Probabilities are the rows' ``prob_all`` (the spec's
    :meth:`~leukoedge.spec.ModelSpec.probability`).
    """
    ok = [p for p in preds if p.row.error is None]
    labelled = [p for p in ok if p.item.label is not None]
    y_true = [p.item.label for p in labelled if p.item.label is not None]
    y_pred = [LABEL_NAMES.index(p.row.label or "") for p in labelled]
    prob = [p.row.prob_all if p.row.prob_all is not None else math.nan for p in labelled]
    rows = per_patient([p.item.patient for p in labelled], y_true, y_pred, prob)
    return {
        "model": str(model.path),
        "architecture": model.spec.architecture,
        "threshold": model.spec.threshold,
        "provider": model.provider,
        "files": len(preds),
        "errors": len(preds) - len(ok),
        "error_rows": [ErrorRow(path=p.row.path, error=p.row.error)
                       for p in preds if p.row.error][:1000],
        "unlabelled": len(ok) - len(labelled),
        "metrics": metrics(y_true, y_pred, prob) if labelled else None,
        "patients": [asdict(r) for r in rows],
        "patient_vote": patient_vote_metrics(rows),
    }


def clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj
