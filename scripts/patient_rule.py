"""Fit the patient rule (leukoedge/patient.py) on out-of-fold logits, and measure it by the
number of cells a patient has.

    python scripts/patient_rule.py OOF [--drift-json docs/cv/drift.json --drift-flag 0.7295]
        [--json RULE.json] [--markdown RULE.md]

``OOF``: an out-of-fold CSV (``path, patient, label, fold, logit``) or a ``cv run`` folder
of ``oof-fold-*.csv`` (read with ``leukoedge_train.cv.read_oof``; several sources joined by
``+`` are averaged with ``cv.mean_oof``, as scripts/oof_compare.py does). Every patient in
it was held out of the model that scored its cells.

**Small patients.** For each held-out patient and k cells (k = 1, 2, 3, 5, 7, 10, 15, 20,
30, 50, and all its cells), the number of its cells called ALL in a random subsample of k
of its cells (without replacement) is hypergeometric: the chance that the rule calls ALL,
HEM or none is computed exactly from it (no Monte Carlo). A patient counts at k when it has
at least k cells. Per k: accuracy among called patients (expected right calls / expected
calls), sensitivity (ALL patients called ALL, of all ALL patients: a no call is not found),
specificity (likewise HEM) and the share with no call, each with a 95% percentile interval
from resampling the patients (stratified by class, as ``evaluate`` does).

**The choice.** Rules: ``interval`` (Wilson interval of the share called ALL above/below a
cut, else none) and ``share`` (share >= cut: ALL, else HEM), cut 0.30..0.85, minimum cells
1..20. Cost of a rule = mean over the k grid of the class-balanced rate of wrong calls plus
``--no-call-cost`` (default 0.25) times the class-balanced no-call rate: a wrong call costs
four no calls (a no call sends the smear to a person; a wrong call may not be looked at
again). The cheapest rule is chosen; ties go to the larger minimum.

**Drift.** The out-of-fold files carry no drift scores per cell. With ``--drift-json``
(docs/cv/drift.json, written by scripts/drift_cv.py: each held-out patient's median score
under its fold's statistics), the chosen rule is also measured with drift in it (a patient
whose median is above ``--drift-flag`` gets no call), from the patient's median over *all*
its cells (a subsample's median cannot be measured without per-cell scores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from leukoedge_train.cv import OOF, mean_oof, oof_files, read_oof

from leukoedge.patient import PatientRule, decide

KS: list[int | str] = [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, "all"]
CUTS = [round(0.30 + 0.05 * i, 2) for i in range(12)]
MINS = [1, 2, 3, 5, 7, 10, 15, 20]
DRIFT_SCORE = "colour + features (mean)"


def read(src: str) -> OOF:
    members = []
    for part in src.split("+"):
        files = oof_files(Path(part))
        if not files:
            raise SystemExit(f"error: {part}: no out-of-fold predictions")
        members.append(read_oof(files))
    return mean_oof(members) if len(members) > 1 else members[0]


def patients_of(oof: OOF, logit_threshold: float) -> list[dict[str, Any]]:
    """Per patient: class (1 = ALL), cells, cells called ALL."""
    out: dict[str, dict[str, Any]] = {}
    called = oof.logits >= logit_threshold
    for p, y, c in zip(oof.patients, oof.labels, called):
        d = out.setdefault(p, {"patient": p, "y": int(y), "n": 0, "a": 0})
        if d["y"] != int(y):
            raise SystemExit(f"error: patient {p} has cells of both classes")
        d["n"] += 1
        d["a"] += int(c)
    return sorted(out.values(), key=lambda d: d["patient"])


def hypergeom(n: int, a: int, k: int) -> np.ndarray:
    """P(x ALL calls among k of n cells of which a are called ALL), x = 0..k."""
    total = math.comb(n, k)
    return np.array([math.comb(a, x) * math.comb(n - a, k - x) / total
                     for x in range(k + 1)])


def call_probs(pt: dict[str, Any], k: int | str, rule: PatientRule,
               drifted: bool) -> tuple[float, float, float]:
    """(P(ALL), P(HEM), P(none)) of the rule on k random cells of the patient."""
    n, a = pt["n"], pt["a"]
    kk = n if k == "all" else int(k)
    pmf = hypergeom(n, a, kk)
    p = {"ALL": 0.0, "HEM": 0.0, "none": 0.0}
    for x, w in enumerate(pmf):
        if w == 0:
            continue
        call, _ = decide(x, kk, rule)
        if call != "none" and drifted and kk >= rule.min_cells:
            call = "none"
        p[call] += w
    return p["ALL"], p["HEM"], p["none"]


def table(pts: list[dict[str, Any]], rule: PatientRule, drifted: set[str]
          ) -> dict[str, np.ndarray]:
    """Per k: arrays [patients] of y, P(ALL), P(HEM), P(none); NaN where the patient has
    fewer than k cells."""
    out = {}
    for k in KS:
        rows = []
        for pt in pts:
            if k != "all" and pt["n"] < int(k):
                rows.append((pt["y"], math.nan, math.nan, math.nan))
                continue
            rows.append((pt["y"], *call_probs(pt, k, rule, pt["patient"] in drifted)))
        out[str(k)] = np.array(rows, dtype=np.float64)
    return out


def figures(t: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """Figures of one k from per-patient call probabilities ``t`` weighted by ``w``
    (a patient's count in a resample) [B, P] -> each [B]."""
    y, pa, ph, pn = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    ok = np.isfinite(pa)
    y, pa, ph, pn, w = y[ok], pa[ok], ph[ok], pn[ok], w[..., ok]
    right = np.where(y == 1, pa, ph)
    called = pa + ph
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "accuracy_called": (w @ right) / (w @ called),
            "sensitivity": (w @ (pa * (y == 1))) / (w @ (y == 1).astype(float)),
            "specificity": (w @ (ph * (y == 0))) / (w @ (y == 0).astype(float)),
            "no_call": (w @ pn) / w.sum(axis=-1),
        }


def measure(pts: list[dict[str, Any]], rule: PatientRule, drifted: set[str],
            resamples: int, seed: int) -> list[dict[str, Any]]:
    tabs = table(pts, rule, drifted)
    y = np.array([p["y"] for p in pts])
    groups = [np.flatnonzero(y == 1), np.flatnonzero(y == 0)]
    rng = np.random.default_rng(seed)
    wb = np.zeros((resamples, len(pts)))
    for g in groups:
        wb[:, g] = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)), size=resamples)
    rows = []
    for k, t in tabs.items():
        ok = np.isfinite(t[:, 1])
        est = figures(t, np.ones((1, len(pts))))
        boot = figures(t, wb)
        row: dict[str, Any] = {"k": k, "patients": int(ok.sum()),
                               "patients_all": int((ok & (y == 1)).sum()),
                               "patients_hem": int((ok & (y == 0)).sum())}
        for name in est:
            v = boot[name][np.isfinite(boot[name])]
            e = float(est[name][0])
            lo, hi = (np.quantile(v, [0.025, 0.975]).tolist() if len(v) else (math.nan,) * 2)
            row[name] = {"estimate": None if math.isnan(e) else e,
                         "low": None if math.isnan(lo) else lo,
                         "high": None if math.isnan(hi) else hi}
        rows.append(row)
    return rows


def cost(pts: list[dict[str, Any]], rule: PatientRule, no_call_cost: float,
         drifted: frozenset[str] = frozenset()) -> float:
    """Mean over the k grid of the class-balanced wrong-call rate plus no_call_cost times
    the class-balanced no-call rate."""
    tabs = table(pts, rule, set(drifted))
    total = []
    for t in tabs.values():
        ok = np.isfinite(t[:, 1])
        per_class = []
        for cls in (1, 0):
            sel = ok & (t[:, 0] == cls)
            if not sel.any():
                continue
            wrong = t[sel, 2] if cls == 1 else t[sel, 1]
            per_class.append(float(wrong.mean() + no_call_cost * t[sel, 3].mean()))
        total.append(float(np.mean(per_class)))
    return float(np.mean(total))


def fmt(c: dict[str, Any]) -> str:
    if c["estimate"] is None:
        return "-"
    return f"{c['estimate']:.3f} ({c['low']:.2f}-{c['high']:.2f})"


def markdown(res: dict[str, Any]) -> str:
    lines = [f"Patient rule fitted on `{res['source']}` ({res['patients']} held-out patients, "
             f"{res['cells']} cells; cell calls at logit >= {res['logit_threshold']:g}).", "",
             f"**Chosen rule:** {res['rule_text']} (`{json.dumps(res['rule'])}`); cost "
             f"{res['cost']:.4f} (wrong-call rate + {res['no_call_cost']:g} x no-call rate, "
             "class-balanced, mean over k).", ""]

    def block(title: str, rows: list[dict[str, Any]]) -> None:
        lines.extend([f"**{title}**", "",
                      "| k cells | patients (ALL/HEM) | accuracy among called | sensitivity "
                      "| specificity | no call |", "|---|---|---|---|---|---|"])
        for r in rows:
            lines.append(f"| {r['k']} | {r['patients']} ({r['patients_all']}/"
                         f"{r['patients_hem']}) | {fmt(r['accuracy_called'])} | "
                         f"{fmt(r['sensitivity'])} | {fmt(r['specificity'])} | "
                         f"{fmt(r['no_call'])} |")
        lines.append("")

    block("Chosen rule", res["by_k"])
    block("Majority vote, no minimum (ties to ALL: what evaluate, report and the page did)",
          res["baseline_by_k"])
    if res.get("drift_by_k"):
        block(f"Chosen rule with drift (no call when the patient's median drift over all its "
              f"cells > {res['drift_flag']:g}; {len(res['drifted'])} patients: "
              f"{', '.join(res['drifted'])}; cost {res['drift_cost']:.4f})", res["drift_by_k"])
    else:
        lines.append("Drift: not measured (no per-patient drift scores given; the "
                     "out-of-fold files carry none).")
        lines.append("")
    lines.append("Best rules of the grid (lowest cost first):")
    lines.append("")
    lines.append("| decide | cut | min cells | cost |")
    lines.append("|---|---|---|---|")
    for g in res["grid"][:10]:
        lines.append(f"| {g['decide']} | {g['cut']:g} | {g['min_cells']} | {g['cost']:.4f} |")
    lines.append("")
    lines.append("Intervals: 95% percentile, patients resampled with replacement within "
                 f"their class, {res['resamples']} resamples, seed {res['seed']}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("oof", help="out-of-fold CSV or cv run folder (A+B: averaged)")
    ap.add_argument("--logit-threshold", type=float, default=0.0,
                    help="a cell is called ALL at logit >= this (default 0: P(ALL) >= 0.5)")
    ap.add_argument("--no-call-cost", type=float, default=0.25)
    ap.add_argument("--drift-json", type=Path, default=None,
                    help="docs/cv/drift.json: per-patient median drift of the held-out "
                         "patients (same folds)")
    ap.add_argument("--drift-flag", type=float, default=None,
                    help="the model's patient flag (leukoedge info)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the tables here")
    a = ap.parse_args(argv)
    if a.drift_json is not None and a.drift_flag is None:
        ap.error("--drift-json needs --drift-flag")
    oof = read(a.oof)
    pts = patients_of(oof, a.logit_threshold)
    grid = []
    for decide_ in ("interval", "share"):
        for cut in CUTS:
            for mn in MINS:
                r = PatientRule(min_cells=mn, decide=decide_, cut=cut)
                grid.append({"decide": decide_, "cut": cut, "min_cells": mn,
                             "cost": cost(pts, r, a.no_call_cost)})
    grid.sort(key=lambda g: (round(g["cost"], 10), -g["min_cells"]))
    best = grid[0]
    rule = PatientRule(min_cells=best["min_cells"], decide=best["decide"], cut=best["cut"],
                       fitted_on=f"{a.oof} (out-of-fold, {len(pts)} patients; "
                                 "scripts/patient_rule.py)")
    res: dict[str, Any] = {
        "source": a.oof, "patients": len(pts), "cells": int(len(oof.paths)),
        "logit_threshold": a.logit_threshold, "no_call_cost": a.no_call_cost,
        "rule": rule.to_json(), "rule_text": rule.describe(), "cost": best["cost"],
        "resamples": a.resamples, "seed": a.seed,
        "by_k": measure(pts, rule, set(), a.resamples, a.seed),
        "baseline_by_k": measure(pts, PatientRule(min_cells=1, decide="share", cut=0.5),
                                 set(), a.resamples, a.seed),
        "grid": grid,
    }
    if a.drift_json is not None:
        d = json.loads(a.drift_json.read_text())
        per = d["with_models"]["scores"][DRIFT_SCORE]["per_patient"]
        missing = [p["patient"] for p in pts if p["patient"] not in per]
        if missing:
            raise SystemExit(f"error: {a.drift_json} has no drift for {', '.join(missing)}")
        drifted = sorted(p for p, v in per.items() if v["median"] > a.drift_flag
                         and any(q["patient"] == p for q in pts))
        res.update(drift_flag=a.drift_flag, drifted=drifted, drift_score=DRIFT_SCORE,
                   drift_by_k=measure(pts, rule, set(drifted), a.resamples, a.seed),
                   drift_cost=cost(pts, rule, a.no_call_cost, frozenset(drifted)))
    text = markdown(res)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    if a.markdown:
        a.markdown.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
