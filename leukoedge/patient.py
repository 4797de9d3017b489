"""The patient's view: one summary per patient and its call (numpy only).

A clinician asks about a patient (a smear), not a cell. Every command that shows patients
(``classify``, ``evaluate``, ``report``, ``serve`` and its page) takes them from
:func:`summarize` here, so they show the same calls and numbers for the same cells.

Per patient: the cells classified and the error rows, the number and share of cells called
ALL with a 95% **Wilson score interval** (:func:`wilson`), the mean P(ALL), the median drift
score, and the call: ``ALL``, ``HEM`` or ``none`` with the reason.

**The rule** (:class:`PatientRule`) lives in the model's spec under
``extensions["leukoedge.patient"]`` (older readers ignore it; ``leukoedge calibrate
--patient-rule`` writes it); a model without it gets :data:`DEFAULT_RULE`. It was fitted on
out-of-fold logits of patients no model saw (``scripts/patient_rule.py``; docs/accuracy.md,
"The patient's view"):

- fewer classified cells than ``min_cells``: ``none`` ("too few cells");
- ``decide = "interval"``: ``ALL`` when the interval's lower end is above ``cut``, ``HEM``
  when its upper end is below, else ``none`` ("undecided");
  ``decide = "share"``: ``ALL`` when the share is at least ``cut``, else ``HEM``;
- ``drift = true``: a patient whose median drift score is above the model's flag gets
  ``none`` too (the flag is always the model's; see :class:`PatientView`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from .errors import SpecError

EXTENSION_KEY = "leukoedge.patient"
FORMAT = 1
DECIDES = ("interval", "share")
#: the columns of ``--patients-out``, of the page's table and of the served summary
COLUMNS = ("patient", "cells", "errors", "called_all", "share_all", "share_all_low",
           "share_all_high", "mean_prob_all", "drift", "call", "reason")
CALLS = ("ALL", "HEM", "none")
INTERVAL = "Wilson score interval"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class PatientRule:
    """How a patient's cells become a call (module docstring)."""

    min_cells: int = 2
    decide: str = "interval"
    cut: float = 0.7
    level: float = 0.95
    drift: bool = False
    #: where the rule came from (free text, e.g. the out-of-fold file it was fitted on)
    fitted_on: str = ""

    def __post_init__(self) -> None:
        problem = _rule_problem(self)
        if problem:
            raise ValueError(problem)

    def with_min_cells(self, n: int | None) -> PatientRule:
        """The rule with ``--min-cells`` applied (None: unchanged)."""
        return self if n is None else replace(self, min_cells=n)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "min_cells": self.min_cells,
                               "decide": self.decide, "cut": self.cut, "level": self.level,
                               "interval": "wilson", "drift": self.drift}
        if self.fitted_on:
            out["fitted_on"] = self.fitted_on
        return out

    def describe(self) -> str:
        """One line saying what the rule does."""
        if self.decide == "interval":
            how = (f"ALL when the {self.level:.0%} interval of the share called ALL lies "
                   f"above {self.cut:g}, HEM when below, else none")
        else:
            how = f"ALL when at least {self.cut:g} of the cells are called ALL, else HEM"
        drift = "; none when the patient's drift is flagged" if self.drift else ""
        return f"{how}; none under {self.min_cells} cells{drift}"


def _num(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _rule_problem(r: PatientRule) -> str:
    if not isinstance(r.min_cells, int) or isinstance(r.min_cells, bool) or \
            not 1 <= r.min_cells <= 100_000:
        return "min_cells must be an integer from 1 to 100000"
    if r.decide not in DECIDES:
        return f"decide must be one of {', '.join(DECIDES)}"
    if not _num(r.cut) or not 0.0 < r.cut < 1.0:
        return "cut must be a number between 0 and 1"
    if not _num(r.level) or not 0.5 <= r.level < 1.0:
        return "level must be a number from 0.5 to below 1"
    drift: Any = r.drift  # parsed JSON may hold anything
    if not isinstance(drift, bool):
        return "drift must be true or false"
    fitted: Any = r.fitted_on
    if not isinstance(fitted, str) or len(fitted) > 500:
        return "fitted_on must be a string of at most 500 characters"
    return ""


#: the rule of a model whose spec carries none (docs/usage.md, "Patients"): fitted on the
#: shipped recipe's out-of-fold logits (docs/accuracy.md, "The patient's view")
DEFAULT_RULE = PatientRule(min_cells=2, decide="interval", cut=0.7,
                           fitted_on="leukoedge default (docs/cv/full/gap-oof.csv)")


def parse(raw: Any) -> PatientRule:
    """The rule of ``extensions["leukoedge.patient"]``; SpecError if malformed."""
    if not isinstance(raw, dict):
        raise SpecError("patient rule must be an object")
    if raw.get("format") != FORMAT:
        raise SpecError(f"patient rule has format {raw.get('format')!r}; this leukoedge "
                        f"reads format {FORMAT}", "upgrade leukoedge to use it")
    if raw.get("interval", "wilson") != "wilson":
        raise SpecError("patient rule: interval must be 'wilson'")
    try:
        return PatientRule(min_cells=raw.get("min_cells", DEFAULT_RULE.min_cells),
                           decide=raw.get("decide", DEFAULT_RULE.decide),
                           cut=raw.get("cut", DEFAULT_RULE.cut),
                           level=raw.get("level", DEFAULT_RULE.level),
                           drift=raw.get("drift", False),
                           fitted_on=raw.get("fitted_on", ""))
    except ValueError as exc:
        raise SpecError(f"patient rule: {exc}") from exc


def from_spec(spec: Any) -> PatientRule:
    """The spec's rule, or :data:`DEFAULT_RULE` when it carries none."""
    raw = getattr(spec, "extensions", {}).get(EXTENSION_KEY)
    return DEFAULT_RULE if raw is None else parse(raw)


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PatientView:
    """What the summary needs besides the cells: the rule and the model's drift flag.

    ``drift_flag`` is None when the model is unknown (a predictions file with neither
    ``--model`` nor its ``.meta.json``) or carries no drift statistics: then no patient is
    flagged, and ``flag_note`` says why."""

    rule: PatientRule = DEFAULT_RULE
    drift_flag: float | None = None
    flag_note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule.to_json(), "interval": INTERVAL,
                "drift_flag": self.drift_flag, "flag_note": self.flag_note}


def model_view(spec: Any, drift_flag: float | None, min_cells: int | None = None
               ) -> PatientView:
    """The view of a loaded model: its spec's rule (``--min-cells`` applied) and its drift
    flag (None: it has no drift statistics)."""
    return PatientView(from_spec(spec).with_min_cells(min_cells), drift_flag,
                       "" if drift_flag is not None else "the model has no drift statistics")


@dataclass(frozen=True)
class PatientSummary:
    """One patient's row (:data:`COLUMNS`); shares are None without a classified cell,
    ``drift`` (the median score) is None without a scored cell; ``reason`` is empty when
    there is a call. ``drift_flagged`` (not a column): the median is above the model's
    flag and the patient has at least the rule's minimum of cells (None: cannot flag)."""

    patient: str
    cells: int
    errors: int
    called_all: int
    share_all: float | None
    share_all_low: float | None
    share_all_high: float | None
    mean_prob_all: float | None
    drift: float | None
    call: str
    reason: str
    drift_flagged: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object, in :data:`COLUMNS` order."""
        return {c: getattr(self, c) for c in COLUMNS}

    def cells_text(self) -> dict[str, str]:
        """The CSV text of every column (4 decimals; empty where there is no value)."""
        def f(x: float | None, digits: int = 4) -> str:
            return "" if x is None else f"{x:.{digits}f}"

        return {"patient": self.patient, "cells": str(self.cells), "errors": str(self.errors),
                "called_all": str(self.called_all), "share_all": f(self.share_all),
                "share_all_low": f(self.share_all_low),
                "share_all_high": f(self.share_all_high),
                "mean_prob_all": f(self.mean_prob_all), "drift": f(self.drift),
                "call": self.call, "reason": self.reason}


def decide(called_all: int, cells: int, rule: PatientRule, drift: float | None = None,
           drift_flag: float | None = None) -> tuple[str, str]:
    """The call and its reason for ``called_all`` of ``cells`` classified cells."""
    if cells == 0:
        return "none", "no cell classified"
    if cells < rule.min_cells:
        return "none", f"too few cells ({cells} < {rule.min_cells})"
    if rule.drift and drift_flag is not None and drift is not None and drift > drift_flag:
        return "none", f"drift: median score {drift:.2f} > {drift_flag:g}"
    share = called_all / cells
    if rule.decide == "share":
        return ("ALL" if share >= rule.cut else "HEM"), ""
    lo, hi = wilson(called_all, cells, rule.level)
    if lo > rule.cut:
        return "ALL", ""
    if hi < rule.cut:
        return "HEM", ""
    return "none", f"undecided: share ALL {share:.2f} ({lo:.2f}-{hi:.2f}) spans {rule.cut:g}"


@dataclass
class _Tally:
    cells: int = 0
    errors: int = 0
    called_all: int = 0
    prob_sum: float = 0.0
    drift: list[float] = field(default_factory=list)


def _natural(pid: str) -> tuple[bool, list[tuple[int, int | str]]]:
    parts = [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", pid) if t]
    return pid == UNKNOWN, parts


class PatientTally:
    """Cells added one at a time (a run of any length keeps one small record per patient
    and the drift scores), summarised at the end."""

    def __init__(self) -> None:
        self._by: dict[str, _Tally] = {}

    def add(self, patient: str | None, called_all: bool | None, prob: float | None = None,
            drift: float | None = None) -> None:
        """One cell: ``called_all`` None for an error row (not classified)."""
        t = self._by.setdefault(patient or UNKNOWN, _Tally())
        if called_all is None:
            t.errors += 1
            return
        t.cells += 1
        t.called_all += int(bool(called_all))
        if prob is not None and math.isfinite(prob):
            t.prob_sum += prob
        if drift is not None and math.isfinite(drift):
            t.drift.append(float(drift))

    def add_record(self, record: Mapping[str, Any], positive: str = "all") -> None:
        """One row as classify writes it (CSV text or JSON values: ``patient``, ``label``,
        ``prob_all``, ``error``, ``drift``)."""
        if record.get("error"):
            self.add(_text(record.get("patient")), None)
            return
        label = str(record.get("label") or "").strip().lower()
        if not label:
            self.add(_text(record.get("patient")), None)
            return
        self.add(_text(record.get("patient")), label == positive,
                 _maybe_float(record.get("prob_all")), _maybe_float(record.get("drift")))

    def summaries(self, view: PatientView) -> list[PatientSummary]:
        out = []
        for pid in sorted(self._by, key=_natural):
            t = self._by[pid]
            med = float(np.median(t.drift)) if t.drift else None
            call, reason = decide(t.called_all, t.cells, view.rule, med, view.drift_flag)
            share = lo = hi = mean = None
            if t.cells:
                share = t.called_all / t.cells
                lo, hi = wilson(t.called_all, t.cells, view.rule.level)
                mean = t.prob_sum / t.cells
            flagged: bool | None = None
            if view.drift_flag is not None and med is not None:
                flagged = t.cells >= view.rule.min_cells and med > view.drift_flag
            out.append(PatientSummary(pid, t.cells, t.errors, t.called_all, share, lo, hi,
                                      mean, med, call, reason, flagged))
        return out


def _text(x: Any) -> str | None:
    return None if x is None or str(x) == "" else str(x)


def _maybe_float(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def summarize(patients: Sequence[str | None], called_all: Sequence[bool | int | None],
              probs: Sequence[float | None], drift: Sequence[float | None] | None,
              view: PatientView) -> list[PatientSummary]:
    """The summaries of cells given column-wise (``called_all`` None: an error row)."""
    tally = PatientTally()
    for i, p in enumerate(patients):
        c = called_all[i]
        tally.add(p, None if c is None else bool(c), probs[i],
                  None if drift is None else drift[i])
    return tally.summaries(view)


def summarize_records(records: Iterable[Mapping[str, Any]], view: PatientView,
                      positive: str = "all") -> list[PatientSummary]:
    """The summaries of rows as classify writes them (:meth:`PatientTally.add_record`)."""
    tally = PatientTally()
    for r in records:
        tally.add_record(r, positive)
    return tally.summaries(view)


@dataclass(frozen=True)
class PatientMetrics:
    """Patient-level figures over the patients with a truth (:func:`patient_metrics`)."""

    patients: int
    called: int
    right: int
    accuracy_called: float | None
    sensitivity: float | None
    specificity: float | None
    no_call_share: float
    patients_all: int
    patients_hem: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def patient_metrics(rows: Sequence[PatientSummary], truth: Mapping[str, int]
                    ) -> PatientMetrics | None:
    """Patient-level figures over the patients whose truth is known (``truth``: 1 = ALL):
    calls made, accuracy among called patients, sensitivity (ALL patients called ALL, of
    all ALL patients: no call counts as not found), specificity (likewise for HEM) and the
    share with no call. None when no patient has a truth."""
    known = [r for r in rows if r.patient in truth and r.patient != UNKNOWN]
    if not known:
        return None
    called = [r for r in known if r.call != "none"]
    right = sum(1 for r in called if (r.call == "ALL") == (truth[r.patient] == 1))
    n_all = sum(1 for r in known if truth[r.patient] == 1)
    n_hem = len(known) - n_all
    tp = sum(1 for r in known if truth[r.patient] == 1 and r.call == "ALL")
    tn = sum(1 for r in known if truth[r.patient] == 0 and r.call == "HEM")
    return PatientMetrics(
        patients=len(known), called=len(called), right=right,
        accuracy_called=right / len(called) if called else None,
        sensitivity=tp / n_all if n_all else None,
        specificity=tn / n_hem if n_hem else None,
        no_call_share=(len(known) - len(called)) / len(known),
        patients_all=n_all, patients_hem=n_hem)


def patient_truth(patients: Sequence[str | None], truth: Sequence[int | None]
                  ) -> dict[str, int]:
    """Each patient's class (the class of all its labelled cells; a patient whose
    labelled cells disagree is left out)."""
    seen: dict[str, set[int]] = {}
    for p, t in zip(patients, truth):
        if t is not None:
            seen.setdefault(p or UNKNOWN, set()).add(int(t))
    return {p: next(iter(s)) for p, s in seen.items() if len(s) == 1}
