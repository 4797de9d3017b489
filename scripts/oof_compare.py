"""Two recipes' out-of-fold predictions on the same cells: pooled figures, per fold, and
the difference in weighted F1 with a 95% interval from resampling *patients* (paired: a
resampled patient brings its cells' predictions from both recipes).

    python scripts/oof_compare.py A.csv|A_DIR B.csv|B_DIR [--resamples 2000] [--seed 0]

A ``cv run`` output folder stands for its ``oof-fold-*.csv`` files put together. Only the
cells both sides predicted are compared. The threshold is logit 0 (probability 0.5), as in
every figure of docs/accuracy.md. Used for the baseline comparison there.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from leukoedge.evaluate import metrics

KEYS = ("weighted_f1", "balanced_accuracy", "roc_auc", "sensitivity_all",
        "specificity_all", "accuracy")


def read(src: Path) -> dict[str, dict[str, str]]:
    files = sorted(src.glob("oof-fold-*.csv")) if src.is_dir() else [src]
    rows: dict[str, dict[str, str]] = {}
    for f in files:
        with f.open(newline="") as fh:
            rows.update({r["path"]: r for r in csv.DictReader(fh)})
    return rows


def figures(y: np.ndarray, z: np.ndarray) -> dict[str, float]:
    m = metrics(y, (z > 0).astype(np.int64), 1.0 / (1.0 + np.exp(-z)))
    return {k: float(m[k]) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ra, rb = read(args.a), read(args.b)
    paths = sorted(set(ra) & set(rb))
    if not paths:
        raise SystemExit(f"error: {args.a} and {args.b} share no cell")
    y = np.array([ra[p]["label"].lower() == "all" for p in paths], dtype=np.int64)
    za = np.array([float(ra[p]["logit"]) for p in paths])
    zb = np.array([float(rb[p]["logit"]) for p in paths])
    fold = np.array([ra[p]["fold"] for p in paths])
    patient = np.array([ra[p]["patient"] for p in paths])
    print(f"{len(paths)} cells, {len(set(patient))} patients, folds {', '.join(sorted(set(fold)))}")
    print("| | " + " | ".join(KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    fa, fb = figures(y, za), figures(y, zb)
    for name, f in ((args.a, fa), (args.b, fb)):
        print(f"| {name} | " + " | ".join(f"{f[k]:.3f}" for k in KEYS) + " |")
    print("| difference (B - A) | " + " | ".join(f"{fb[k] - fa[k]:+.3f}" for k in KEYS) + " |")
    print("\nper fold, weighted F1 (A, B, B - A):")
    for k in sorted(set(fold)):
        s = fold == k
        a, b = figures(y[s], za[s])["weighted_f1"], figures(y[s], zb[s])["weighted_f1"]
        print(f"  fold {k}: {a:.3f} {b:.3f} {b - a:+.3f}")
    rng = np.random.default_rng(args.seed)
    groups = [np.flatnonzero(patient == p) for p in sorted(set(patient))]
    diffs = []
    for _ in range(args.resamples):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if len(set(y[idx])) < 2:
            continue
        diffs.append(figures(y[idx], zb[idx])["weighted_f1"]
                     - figures(y[idx], za[idx])["weighted_f1"])
    if diffs:
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        print(f"\nweighted F1 difference B - A: {fb['weighted_f1'] - fa['weighted_f1']:+.3f}, "
              f"95% interval over patients [{lo:+.3f}, {hi:+.3f}] ({len(diffs)} resamples, "
              f"seed {args.seed}); share of resamples with B > A: "
              f"{np.mean(np.array(diffs) > 0):.2f}")


if __name__ == "__main__":
    main()
