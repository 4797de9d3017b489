"""Drift: how far a cell lies from the cells a model was trained on (numpy only).

The statistics live in the ModelSpec under ``extensions["leukoedge.drift"]`` (a reader
that does not know them ignores them; this one checks them when present). They describe
the training cells with one Gaussian per *component*:

- ``colour``: the cell's colour statistics (:func:`leukoedge.preprocess.cell_colour`:
  mean and standard deviation of the optical density of each channel over the cell's
  pixels), computed from the model's input array, so every caller does the same thing;
- ``features``: a graph output (by name, normally ``"features"``: the penultimate layer).

A Gaussian is stored compactly: ``mean`` ``[d]``, the top ``k`` principal directions
``components`` ``[k, d]`` with their ``variances`` ``[k]``, and one ``residual`` variance
for the other ``d - k`` directions (0 when ``k = d``). A cell's distance is the
Mahalanobis distance under that low-rank-plus-isotropic covariance. Each component's
distance is divided by its ``scale`` (the 95th percentile of the training cells' own
distances), the scaled distances are combined (``max`` or ``mean``), and the result is
divided by the final ``scale``, so that **1.0 is the 95th percentile of the training
cells' own scores**: about 5 % of training-like cells score above 1.

Per patient, the median score and the share of cells above 1.0 are reported; a patient
whose median exceeds ``patient_flag`` is flagged as drifted (docs/accuracy.md, "Drift",
measured how that threshold was chosen).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import SpecError

if TYPE_CHECKING:
    from .spec import ModelSpec

EXTENSION_KEY = "leukoedge.drift"
FORMAT = 1
COMBINES = ("max", "mean")
#: inputs a component may describe: the colour statistics, or a graph output by name
COLOUR = "colour"
#: patients whose median score exceeds this are flagged (docs/accuracy.md, "Drift")
DEFAULT_PATIENT_FLAG = 1.0
#: significant digits kept in the spec (float32 holds about 7)
DIGITS = 5


@dataclass(frozen=True)
class Gaussian:
    """Mean, top-k principal directions and variances, and one residual variance."""

    mean: np.ndarray  # [d]
    components: np.ndarray  # [k, d], orthonormal rows
    variances: np.ndarray  # [k], > 0
    residual: float  # variance of every other direction; 0 when k == d

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``x`` ``[N, d]``: ``[N]``, float64."""
        z = np.asarray(x, dtype=np.float64) - self.mean
        p = z @ self.components.T
        d2 = (p * p / self.variances).sum(axis=1)
        if self.residual > 0:
            rest = np.maximum((z * z).sum(axis=1) - (p * p).sum(axis=1), 0.0)
            d2 = d2 + rest / self.residual
        out: np.ndarray = np.sqrt(d2)
        return out


@dataclass(frozen=True)
class Component:
    name: str  # "colour" or the name of a graph output
    gaussian: Gaussian
    scale: float  # 95th percentile of the training cells' distances


@dataclass(frozen=True)
class DriftStats:
    components: tuple[Component, ...]
    combine: str = "max"
    scale: float = 1.0
    patient_flag: float = DEFAULT_PATIENT_FLAG
    cells: int = 0

    @property
    def outputs(self) -> tuple[str, ...]:
        """The graph outputs the score needs (besides the input's colour)."""
        return tuple(c.name for c in self.components if c.name != COLOUR)

    def score(self, colour: np.ndarray | None, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores ``[N]`` of a batch: ``colour`` ``[N, 6]`` (:func:`cell_colour`) and the
        graph outputs the components name."""
        parts = []
        for c in self.components:
            x = colour if c.name == COLOUR else outputs[c.name]
            if x is None:
                raise ValueError(f"drift component {c.name} needs its input")
            x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
            parts.append(c.gaussian.distance(x) / c.scale)
        stacked = np.stack(parts, axis=1)
        combined = stacked.max(axis=1) if self.combine == "max" else stacked.mean(axis=1)
        out: np.ndarray = combined / self.scale
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "combine": self.combine,
            "scale": _r(self.scale),
            "patient_flag": _r(self.patient_flag),
            "cells": self.cells,
            "components": [{
                "name": c.name,
                "scale": _r(c.scale),
                "mean": _rl(c.gaussian.mean),
                "components": [_rl(row) for row in c.gaussian.components],
                "variances": _rl(c.gaussian.variances),
                "residual": _r(c.gaussian.residual),
            } for c in self.components],
        }


def _r(x: float) -> float:
    return float(f"{float(x):.{DIGITS}g}")


def _rl(a: np.ndarray) -> list[float]:
    return [float(f"{v:.{DIGITS}g}") for v in np.asarray(a, dtype=np.float64).ravel()]


# -- reading from the spec -------------------------------------------------------------------

def _num(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def _vec(x: Any, what: str, n: int | None = None) -> np.ndarray:
    if not isinstance(x, list) or not all(_num(v) for v in x) or (n is not None and len(x) != n):
        size = "" if n is None else f" of {n}"
        raise SpecError(f"drift statistics: {what} must be a list{size} of finite numbers")
    return np.asarray(x, dtype=np.float64)


def _positive(x: Any, what: str, zero: bool = False) -> float:
    if not _num(x) or x < 0 or (x == 0 and not zero):
        raise SpecError(f"drift statistics: {what} must be a finite number "
                        f"{'>= 0' if zero else '> 0'}")
    return float(x)


def parse(raw: Any) -> DriftStats:
    """The statistics of ``extensions["leukoedge.drift"]``, checked; SpecError if malformed."""
    if not isinstance(raw, dict):
        raise SpecError("drift statistics must be an object")
    if raw.get("format") != FORMAT:
        raise SpecError(f"drift statistics have format {raw.get('format')!r}; this leukoedge "
                        f"reads format {FORMAT}", "upgrade leukoedge to use them")
    combine = raw.get("combine", "max")
    if combine not in COMBINES:
        raise SpecError(f"drift statistics: combine must be one of {', '.join(COMBINES)}")
    comps_raw = raw.get("components")
    if not isinstance(comps_raw, list) or not 1 <= len(comps_raw) <= 8:
        raise SpecError("drift statistics: components must be a list of 1 to 8 objects")
    comps: list[Component] = []
    for i, c in enumerate(comps_raw):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise SpecError(f"drift statistics: component {i} must be an object with a name")
        name = c["name"]
        mean = _vec(c.get("mean"), f"{name}.mean")
        d = len(mean)
        if d < 1:
            raise SpecError(f"drift statistics: {name}.mean is empty")
        rows = c.get("components")
        if not isinstance(rows, list) or len(rows) > d:
            raise SpecError(f"drift statistics: {name}.components must be a list of at most "
                            f"{d} rows")
        comp = np.asarray([_vec(r, f"{name}.components", d) for r in rows],
                          dtype=np.float64).reshape(len(rows), d)
        var = _vec(c.get("variances"), f"{name}.variances", len(rows))
        if (var <= 0).any():
            raise SpecError(f"drift statistics: {name}.variances must be > 0")
        residual = _positive(c.get("residual"), f"{name}.residual", zero=True)
        if residual == 0 and len(rows) < d:
            raise SpecError(f"drift statistics: {name} has {len(rows)} of {d} directions and "
                            "no residual variance")
        comps.append(Component(name, Gaussian(mean, comp, var, residual),
                               _positive(c.get("scale"), f"{name}.scale")))
    if len({c.name for c in comps}) != len(comps):
        raise SpecError("drift statistics: a component is named twice")
    cells = raw.get("cells", 0)
    if not isinstance(cells, int) or isinstance(cells, bool) or cells < 0:
        raise SpecError("drift statistics: cells must be a non-negative integer")
    return DriftStats(tuple(comps), combine, _positive(raw.get("scale"), "scale"),
                      _positive(raw.get("patient_flag", DEFAULT_PATIENT_FLAG),
                                "patient_flag"), cells)


def from_spec(spec: ModelSpec) -> DriftStats | None:
    """The drift statistics of a ModelSpec, or None when it carries none."""
    raw = spec.extensions.get(EXTENSION_KEY)
    return None if raw is None else parse(raw)


def check(spec: ModelSpec) -> None:
    """Refuse a spec whose drift statistics are malformed or name an output the graph
    lacks, or whose dimensions cannot match (called when a spec is built)."""
    stats = from_spec(spec)
    if stats is None:
        return
    for name in stats.outputs:
        if name not in spec.outputs:
            raise SpecError(f"drift statistics use the output {name!r}, which the spec's "
                            f"outputs ({', '.join(spec.outputs)}) do not name")
    for c in stats.components:
        if c.name == COLOUR and c.gaussian.dim != COLOUR_DIM:
            raise SpecError(f"drift statistics: colour has {c.gaussian.dim} values; "
                            f"expected {COLOUR_DIM}")


COLOUR_DIM = 6


# -- fitting (training side, but numpy only) ---------------------------------------------------

def fit_gaussian(x: np.ndarray, max_rank: int) -> Gaussian:
    """Mean, top ``max_rank`` principal directions and the residual variance of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mean = x.mean(axis=0)
    z = x - mean
    cov = z.T @ z / max(n - 1, 1)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]
    floor = max(float(w[0]) * 1e-6, 1e-12)  # no direction is trusted below this variance
    w = np.maximum(w, floor)
    k = min(max_rank, d)
    residual = float(w[k:].mean()) if k < d else 0.0
    return Gaussian(mean, v[:, :k].T.copy(), w[:k].copy(), residual)


def fit(colour: np.ndarray | None, outputs: Mapping[str, np.ndarray],
        combine: str = "max", max_rank: int = 16,
        patient_flag: float = DEFAULT_PATIENT_FLAG,
        patients: Sequence[str | None] | None = None) -> DriftStats:
    """Statistics of the training cells: one component for ``colour`` (if given) and one
    per named output; every scale from the training cells' own (rounded) distances.

    ``patients`` (each training cell's patient): the patient flag becomes
    :func:`patient_limit` of the training cells' scores, when there are enough patients;
    else ``patient_flag``."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}")
    inputs: list[tuple[str, np.ndarray]] = []
    if colour is not None:
        inputs.append((COLOUR, np.asarray(colour, dtype=np.float64)))
    inputs += [(k, np.asarray(v, dtype=np.float64).reshape(len(v), -1))
               for k, v in outputs.items()]
    if not inputs:
        raise ValueError("nothing to fit drift statistics on")
    n = len(inputs[0][1])
    comps = []
    for name, x in inputs:
        g = _rounded(fit_gaussian(x, max_rank))
        comps.append(Component(name, g, 1.0))
    # scales from the rounded statistics, exactly as a reader will compute the distances
    comps = [Component(c.name, c.gaussian, _r(q95(c.gaussian.distance(x))))
             for c, (_, x) in zip(comps, inputs)]
    first = DriftStats(tuple(comps), combine, 1.0, patient_flag, n)
    all_inputs = dict(inputs)
    raw = first.score(all_inputs.get(COLOUR), all_inputs)
    scale = _r(q95(raw))
    if patients is not None:
        limit = patient_limit(raw / scale, patients)
        patient_flag = _r(limit) if limit is not None else patient_flag
    stats = DriftStats(tuple(comps), combine, scale, patient_flag, n)
    return parse(stats.to_json())  # exactly what a reader of the spec gets


#: the patient flag is this quantile of the training patients' median scores
PATIENT_QUANTILE = 0.9
#: patients with fewer training cells do not count towards it (their median is noise)
PATIENT_MIN_CELLS = 5


def patient_limit(scores: np.ndarray, patients: Sequence[str | None],
                  quantile: float = PATIENT_QUANTILE,
                  min_cells: int = PATIENT_MIN_CELLS) -> float | None:
    """The ``quantile`` of the training patients' median scores (patients with at least
    ``min_cells`` cells), or None with fewer than 5 such patients: a patient whose median
    exceeds it looks less like the training cells than 90 % of the training patients do."""
    groups: dict[str, list[float]] = {}
    for p, s in zip(patients, np.asarray(scores, dtype=np.float64)):
        if p:
            groups.setdefault(p, []).append(float(s))
    meds = [float(np.median(v)) for v in groups.values() if len(v) >= min_cells]
    if len(meds) < 5:
        return None
    return float(np.quantile(meds, quantile))


def _rounded(g: Gaussian) -> Gaussian:
    return Gaussian(np.asarray(_rl(g.mean)),
                    np.asarray([_rl(r) for r in g.components]).reshape(g.components.shape),
                    np.asarray(_rl(g.variances)), _r(g.residual))


def q95(x: np.ndarray) -> float:
    v = float(np.quantile(np.asarray(x, dtype=np.float64), 0.95))
    return v if v > 0 else 1e-12


# -- per patient --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatientDrift:
    patient: str
    cells: int
    median: float
    share_above: float  # share of cells scoring above 1.0
    flagged: bool
    #: why a patient is not flagged whatever its score: "too few cells", "cannot flag"
    note: str = ""


#: what a summary says when the model that made the rows is unknown
CANNOT_FLAG = ("the model that made these predictions is unknown (no --model and no "
               ".meta.json beside the file): scores shown, no patient flagged")


def per_patient(patients: Sequence[str | None], scores: Sequence[float | None],
                flag: float | None = DEFAULT_PATIENT_FLAG,
                min_cells: int = 1) -> list[PatientDrift]:
    """Median score and share above 1.0 per patient (cells without a score left out).
    Flagged: median above the model's ``flag`` with at least ``min_cells`` scored cells
    (the patient rule's minimum); ``flag`` None: the model is unknown, nobody is flagged."""
    groups: dict[str, list[float]] = {}
    for p, s in zip(patients, scores):
        if s is not None and math.isfinite(s):
            groups.setdefault(p or "unknown", []).append(float(s))
    out = []
    for pid in sorted(groups):
        v = np.asarray(groups[pid])
        med = float(np.median(v))
        note = ("cannot flag" if flag is None else
                "too few cells" if len(v) < min_cells else "")
        out.append(PatientDrift(pid, len(v), med, float((v > 1.0).mean()),
                                not note and flag is not None and med > flag, note))
    return out


def flag_line(rows: Sequence[PatientDrift], flag: float | None) -> str:
    """One line naming the drifted patients (or saying there are none, or that it cannot
    flag)."""
    bad = [r for r in rows if r.flagged]
    if not rows:
        return "drift: no scored cells"
    if flag is None:
        return f"drift: {CANNOT_FLAG}"
    few = sum(1 for r in rows if r.note == "too few cells")
    few_text = f"; {few} with too few cells not flagged" if few else ""
    if not bad:
        return (f"drift: no patient drifted (median score <= {flag:g} for all "
                f"{len(rows) - few}{few_text})")
    names = ", ".join(f"{r.patient} ({r.median:.2f})" for r in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return (f"drift: {len(bad)} of {len(rows)} patients do not look like the training "
            f"cells (median score > {flag:g}): {names}{more}; do not trust their "
            f"calls{few_text}")


@dataclass(frozen=True)
class DriftSummary:
    """What classify and evaluate report about drift (:func:`summary`)."""

    flag: float | None
    min_cells: int
    patients: list[PatientDrift]
    flagged: list[str]
    line: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summary(patients: Sequence[str | None], scores: Sequence[float | None],
            flag: float | None, min_cells: int = 1) -> DriftSummary | None:
    """What classify and evaluate report: per patient, cells scored, median score, share of
    cells above 1.0, flagged (median > ``flag``, at least ``min_cells`` cells; ``flag``
    None: the model is unknown and nobody is flagged); the flagged patients; and the one
    line that names them. None when no cell has a score."""
    rows = per_patient(patients, scores, flag, min_cells)
    if not rows:
        return None
    return DriftSummary(flag, min_cells, rows, [r.patient for r in rows if r.flagged],
                        flag_line(rows, flag))


def describe(raw: Any) -> str:
    """One line for ``info``: what the statistics describe (never the numbers)."""
    try:
        st = parse(raw)
    except SpecError as exc:
        return f"malformed ({exc.message})"
    parts = []
    for c in st.components:
        g = c.gaussian
        what = "colour statistics" if c.name == COLOUR else f"output '{c.name}'"
        parts.append(f"{what} ({g.dim} values, {len(g.variances)} directions)")
    return (f"{' and '.join(parts)} of {st.cells} training cells, combined by {st.combine}; "
            f"patients flagged above a median of {st.patient_flag:g}")
