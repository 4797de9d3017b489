"""Two recipes' out-of-fold predictions on the same cells: pooled figures, per fold, and
the difference in weighted F1 with a 95% interval from resampling *patients* (paired: a
resampled patient brings its cells' predictions from both recipes).

    python scripts/oof_compare.py A.csv|A_DIR B.csv|B_DIR [--resamples 2000] [--seed 0]

A ``cv run`` output folder stands for its ``oof-fold-*.csv`` files put together; ``X+Y``
(two or more sources joined by ``+``) stands for the ensemble that averages their logits
(``cv.mean_oof``: still out-of-fold when X and Y were run on the same folds). Only the
cells both sides predicted are compared (``cv.align_oof``, which refuses runs whose folds
or labels of a cell differ). Figures are those of ``leukoedge cv report``
(threshold logit 0, as in every figure of docs/accuracy.md). The resampling draws the
patients with replacement, stratified by class (ALL patients from the ALL patients, HEM from
HEM, as many as there are: every resample keeps the class mix of patients), as
``leukoedge evaluate``'s intervals do.
Used for the baseline comparison there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from leukoedge_train.cv import HEADLINE, OOF, align_oof, headline, mean_oof, oof_files, read_oof

from leukoedge.errors import DataError


def read(src: str) -> OOF:
    members = []
    for part in src.split("+"):
        files = oof_files(Path(part))
        if not files:
            raise SystemExit(f"error: {part}: no out-of-fold predictions (a CSV file or a "
                             "'cv run' folder)")
        members.append(read_oof(files))
    try:
        return mean_oof(members) if len(members) > 1 else members[0]
    except DataError as e:
        raise SystemExit(f"error: {e}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        ra, rb = align_oof([read(args.a), read(args.b)])
    except DataError as e:
        raise SystemExit(f"error: {args.a} and {args.b}: {e}") from None
    y, fold, za, zb = ra.labels, ra.folds, ra.logits, rb.logits
    patient = np.array(ra.patients)
    print(f"{len(y)} cells, {len(set(patient))} patients, "
          f"folds {', '.join(str(k) for k in sorted(set(fold.tolist())))}")
    print("| | " + " | ".join(HEADLINE) + " |")
    print("|---|" + "---|" * len(HEADLINE))
    fa, fb = headline(y, za), headline(y, zb)
    for name, f in ((args.a, fa), (args.b, fb)):
        print(f"| {name} | " + " | ".join(f"{f[k]:.3f}" for k in HEADLINE) + " |")
    print("| difference (B - A) | "
          + " | ".join(f"{fb[k] - fa[k]:+.3f}" for k in HEADLINE) + " |")
    print("\nper fold, weighted F1 (A, B, B - A):")
    for k in sorted(set(fold.tolist())):
        s = fold == k
        a, b = headline(y[s], za[s])["weighted_f1"], headline(y[s], zb[s])["weighted_f1"]
        print(f"  fold {k}: {a:.3f} {b:.3f} {b - a:+.3f}")
    rng = np.random.default_rng(args.seed)
    by_class: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for p in sorted(set(patient.tolist())):
        cells = np.flatnonzero(patient == p)
        by_class[bool(y[cells].mean() > 0.5)].append(cells)
    diffs: dict[str, list[float]] = {k: [] for k in HEADLINE}
    for _ in range(args.resamples):
        idx = np.concatenate([g[i] for g in by_class.values() if g
                              for i in rng.integers(0, len(g), len(g))])
        hb, ha = headline(y[idx], zb[idx]), headline(y[idx], za[idx])
        for k in HEADLINE:
            diffs[k].append(hb[k] - ha[k])
    if args.resamples:
        print(f"\ndifferences B - A, 95% intervals over patients ({args.resamples} resamples, "
              f"seed {args.seed}, patients resampled within their class):")
        for k in HEADLINE:
            d = np.array(diffs[k])
            lo, hi = np.nanpercentile(d, [2.5, 97.5])
            print(f"  {k}: {fb[k] - fa[k]:+.3f} [{lo:+.3f}, {hi:+.3f}]; share of resamples "
                  f"with B > A: {np.mean(d > 0):.2f}")
        d = np.array(diffs["weighted_f1"])
        lo, hi = np.percentile(d, [2.5, 97.5])
        print(f"\nweighted F1 difference B - A: {fb['weighted_f1'] - fa['weighted_f1']:+.3f}, "
              f"95% interval over patients [{lo:+.3f}, {hi:+.3f}] ({len(d)} resamples, "
              f"seed {args.seed}); share of resamples with B > A: {np.mean(d > 0):.2f}")

if __name__ == "__main__":
    main()
