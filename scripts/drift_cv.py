"""Cross-validate the drift score on real cells, by patient (docs/accuracy.md, "Drift").

For each patient-grouped fold k (docs/cv/folds.csv) with a trained model
(``RUNS/fold-k/last.pt``, from ``leukoedge cv run``): the drift statistics are fitted on
the fold's training-side cells with that fold's model, exactly as ``leukoedge export
--drift-data`` fits them (``leukoedge.drift.fit`` over the runtime's colour statistics and
the model's penultimate features), and the held-out patients are scored. Pooled over the
folds, each held-out patient has a median score and an accuracy (its cells' labels by the
fold model at the spec's threshold); the script reports, per score:

- Spearman's rho between a patient's median score and its accuracy, with its p-value;
- the mean accuracy of flagged (median > T) and unflagged patients for several T;
- the patients the model gets mostly wrong (accuracy < 0.5) and how many are flagged.

Scores compared: colour only (Mahalanobis on the 6 colour statistics: the baseline),
features only (low-rank Mahalanobis; k-nearest neighbours), both (max or mean of the
scaled distances), and the logit's energy (confidence). Every score is scaled so that 1.0
is the 95th percentile of the fold's training cells' own scores.

Needs the train extra (torch) and scipy. Usage::

    nice -n 10 python scripts/drift_cv.py ../shared/data/cnmc-real \\
        ../shared/data/cnmc-sample --folds docs/cv/folds.csv --runs cv-runs/full-gap \\
        --json docs/cv/drift.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch
from leukoedge_train import checkpoint as ckpt_io
from leukoedge_train.cv import read_folds
from leukoedge_train.dataset import load_images
from leukoedge_train.drift_fit import PROJECT_ABOVE, PROJECTION_DIM
from leukoedge_train.models import WithFeatures
from scipy import stats as sstats

from leukoedge import drift
from leukoedge.data import collect
from leukoedge.preprocess import cell_colour

THRESHOLDS = (0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)
KNN = 5
RANK = 16


def forward(model: WithFeatures, x: np.ndarray, batch: int = 128) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            z, f = model(torch.from_numpy(x[i:i + batch]))
            logits.append(z.double().numpy())
            feats.append(f.double().numpy())
    return np.concatenate(logits), np.concatenate(feats)


def project_like_export(feats: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Features wider than export's limit (lite0 1280) projected as ``export --drift-data``
    projects them (:func:`leukoedge_train.drift_fit.project_if_wide`): onto the first
    PROJECTION_DIM principal directions of the training cells' features."""
    if feats.shape[1] <= PROJECT_ABOVE:
        return feats
    mean = feats[train].mean(axis=0)
    z = feats[train] - mean
    _, v = np.linalg.eigh(z.T @ z / max(len(train) - 1, 1))
    return feats @ v[:, ::-1][:, :PROJECTION_DIM]  # uncentred, as the graph does


def knn_distance(train: np.ndarray, query: np.ndarray, k: int, self_: bool) -> np.ndarray:
    """Mean Euclidean distance to the k nearest training rows (itself left out when the
    query rows are the training rows)."""
    tt = (train * train).sum(axis=1)
    out = np.empty(len(query))
    for i in range(0, len(query), 512):
        q = query[i:i + 512]
        d2 = np.maximum((q * q).sum(axis=1)[:, None] + tt[None, :] - 2 * q @ train.T, 0.0)
        if self_:
            d2[np.arange(len(q)), np.arange(i, i + len(q))] = np.inf
        part = np.partition(d2, k - 1, axis=1)[:, :k]
        out[i:i + 512] = np.sqrt(part).mean(axis=1)
    return out


def energy(z: np.ndarray) -> np.ndarray:
    """Energy of the two-class logits (-z/2, z/2): -log(2 cosh(z/2)); low = confident.
    Returned negated, so that larger = less confident = more suspect."""
    a = np.abs(z) / 2
    return a + np.log1p(np.exp(-2 * a))


Pair = tuple[np.ndarray, np.ndarray]  # scores of the held-out cells, of the training cells


def fitted(colour: np.ndarray | None, outs: dict[str, np.ndarray], combine: str,
           train: np.ndarray, held: np.ndarray) -> Pair:
    """leukoedge.drift's score, fitted on ``train``: of the held-out and training cells."""
    st = drift.fit(None if colour is None else colour[train],
                   {k: v[train] for k, v in outs.items()}, combine=combine, max_rank=RANK)
    return tuple(st.score(None if colour is None else colour[i],  # type: ignore[return-value]
                          {k: v[i] for k, v in outs.items()}) for i in (held, train))


def scores_for_fold(colour: np.ndarray, feats: np.ndarray, logits: np.ndarray,
                    train: np.ndarray, held: np.ndarray) -> dict[str, Pair]:
    """Every candidate score of the held-out (and training) cells, each scaled by the
    training cells' 95th percentile."""
    f = {"features": feats}
    out: dict[str, Pair] = {
        "colour (Mahalanobis)": fitted(colour, {}, "max", train, held),
        "features (Mahalanobis)": fitted(None, f, "max", train, held),
        "colour + features (max)": fitted(colour, f, "max", train, held),
        "colour + features (mean)": fitted(colour, f, "mean", train, held),
    }

    ref = knn_distance(feats[train], feats[train], KNN, self_=True)
    q = drift.q95(ref)
    out[f"features ({KNN}-NN)"] = (knn_distance(feats[train], feats[held], KNN, False) / q,
                                   ref / q)
    # energy is a confidence, not a distance: larger = less confident
    e_train = -energy(logits[train])
    lo, q = float(np.min(e_train)), drift.q95(e_train - np.min(e_train))
    out["logit energy"] = ((-energy(logits[held]) - lo) / q, (e_train - lo) / q)
    return out


def train_limits(pair: Pair, patients: np.ndarray, train: np.ndarray) -> tuple[float, float]:
    """The largest training patient's median score, and the flag ``export`` stores
    (:func:`leukoedge.drift.patient_limit`: the 90th percentile of the training patients'
    medians, patients with >= 5 cells)."""
    meds = [float(np.median(pair[1][patients[train] == p])) for p in set(patients[train])]
    limit = drift.patient_limit(pair[1], list(patients[train]))
    return max(meds), float("inf") if limit is None else limit


def read_logits(path: Path) -> dict[str, float]:
    """An out-of-fold file's logits by file name."""
    with open(path, newline="") as fh:
        return {Path(r["path"]).name: float(r["logit"]) for r in csv.DictReader(fh)}


def analyse(per_cell: dict[str, np.ndarray], pts: np.ndarray, correct: np.ndarray,
            klass_of: dict[str, int], title: str,
            limits: dict[str, dict[str, tuple[float, float]]]) -> dict[str, object]:
    """Per patient: median score, share above 1, accuracy; Spearman, flags; printed."""
    names = sorted(set(pts))
    acc = np.array([correct[pts == p].mean() for p in names])
    cells = np.array([(pts == p).sum() for p in names])
    klass = np.array([klass_of[p] for p in names])  # 1 = ALL patient
    wrong = int((acc < 0.5).sum())
    result: dict[str, object] = {"patients": len(names), "cells": int(len(pts)),
                                 "patients_mostly_wrong": wrong, "scores": {}}
    rows = []
    for name, s in per_cell.items():
        med = np.array([np.median(s[pts == p]) for p in names])
        share = np.array([(s[pts == p] > 1.0).mean() for p in names])
        rho, pval = sstats.spearmanr(med, acc)
        rho_s, pval_s = sstats.spearmanr(share, acc)
        by_class = {}
        for c, cname in ((1, "all"), (0, "hem")):
            sel = klass == c
            r_c, p_c = sstats.spearmanr(med[sel], acc[sel]) if sel.sum() > 2 else (np.nan,
                                                                                  np.nan)
            by_class[cname] = {"patients": int(sel.sum()), "spearman": float(r_c),
                               "p": float(p_c)}
        flags = {}
        lim = limits[name]
        rules: list[tuple[str, np.ndarray]] = [(str(t), med > t) for t in THRESHOLDS]
        rules.append(("max of training patients' medians",
                      np.array([m > lim[p][0] for m, p in zip(med, names)])))
        rules.append(("90th pct of training patients' medians (shipped)",
                      np.array([m > lim[p][1] for m, p in zip(med, names)])))
        for t, f in rules:
            fl = np.isin(pts, np.array(names)[f])
            flags[str(t)] = {
                "flagged": int(f.sum()),
                "acc_flagged": float(acc[f].mean()) if f.any() else None,
                "acc_unflagged": float(acc[~f].mean()) if (~f).any() else None,
                "cell_acc_flagged": float(correct[fl].mean()) if fl.any() else None,
                "cell_acc_unflagged": float(correct[~fl].mean()) if (~fl).any() else None,
                "wrong_flagged": int(((acc < 0.5) & f).sum()),
            }
        result["scores"][name] = {  # type: ignore[index]
            "spearman_median": float(rho), "p_median": float(pval),
            "spearman_share": float(rho_s), "p_share": float(pval_s),
            "by_class": by_class, "held_out_cells_above_1": float((s > 1.0).mean()),
            "flags": flags,
            "per_patient": {p: {"median": float(m), "share_above": float(sh),
                                "accuracy": float(a), "cells": int(c), "all": int(k)}
                            for p, m, sh, a, c, k in zip(names, med, share, acc, cells, klass)},
        }
        rows.append((name, rho, pval, rho_s, pval_s, float((s > 1.0).mean()), by_class))
    n_all, n_hem = int(klass.sum()), int((1 - klass).sum())
    print(f"\n### {title}\n\n{len(names)} held-out patients ({len(pts)} cells); {wrong} "
          "with accuracy < 0.5\n")
    print("| score | Spearman (median, accuracy) | p | Spearman (share > 1, accuracy) | p "
          f"| held-out cells > 1 | within ALL patients ({n_all}) | within HEM patients "
          f"({n_hem}) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rho, pval, rho_s, pval_s, above, bc in rows:
        print(f"| {name} | {rho:+.3f} | {pval:.3g} | {rho_s:+.3f} | {pval_s:.3g} "
              f"| {above:.1%} | {bc['all']['spearman']:+.2f} (p {bc['all']['p']:.2g}) "
              f"| {bc['hem']['spearman']:+.2f} (p {bc['hem']['p']:.2g}) |")
    print("\nflag = patient median score > T: patients flagged, their mean accuracy vs the "
          "others', patients with accuracy < 0.5 among the flagged\n")
    print("| score | T | flagged | accuracy flagged | accuracy others | "
          f"wrong flagged (of {wrong}) |")
    print("|---|---|---|---|---|---|")
    for name in per_cell:
        for t, f in result["scores"][name]["flags"].items():  # type: ignore[index]
            af = "-" if f["acc_flagged"] is None else f"{f['acc_flagged']:.3f}"
            au = "-" if f["acc_unflagged"] is None else f"{f['acc_unflagged']:.3f}"
            print(f"| {name} | {t} | {f['flagged']} | {af} | {au} | {f['wrong_flagged']} |")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--folds", type=Path, default=Path("docs/cv/folds.csv"))
    ap.add_argument("--runs", type=Path, default=Path("cv-runs/full-gap"))
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--oof", type=Path, default=Path("docs/cv/full/gap-oof.csv"),
                    help="out-of-fold logits for the folds whose run has none yet "
                         "(colour-only scores need no model)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    folds = read_folds(args.folds)
    items = [it for it in collect(list(args.data)) if it.label is not None]
    fold_of = np.array([folds.get(it.patient or "", -1) for it in items])
    patients = np.array([it.patient or "" for it in items])
    truth = np.array([int(it.label or 0) for it in items])
    names = [Path(it.path).name for it in items]
    klass_of = {str(p): int(t) for p, t in zip(patients, truth)}
    # a fold is done when its out-of-fold file exists (written after its last epoch;
    # last.pt is rewritten every epoch while the fold trains)
    ks = sorted({f for f in folds.values()
                 if (args.runs / f"fold-{f}" / args.checkpoint).is_file()
                 and (args.runs / f"oof-fold-{f}.csv").is_file()})
    pooled_oof = read_logits(args.oof) if args.oof.is_file() else {}
    first = ckpt_io.load(args.runs / f"fold-{ks[0]}" / args.checkpoint) if ks else None
    spec = ckpt_io.spec_of(first) if first is not None else None
    if spec is None:
        from leukoedge_train.recipes import get_recipe  # its preprocessing, no model

        r = get_recipe("gap")
        size, crop = int(r.settings.get("input_size", 96)), float(
            r.settings.get("crop_fraction", 1.0))
        interp = "bilinear"
    else:
        size, crop, interp = spec.input_size, spec.crop_fraction, spec.interpolation
    loaded = load_images(items, size, crop, interp)
    if loaded.skipped:
        print(f"unreadable: {loaded.skipped[0]}", file=sys.stderr)
        return 2
    pixels = loaded.pixels
    colour = cell_colour(pixels)

    model_scores: dict[str, list[np.ndarray]] = {}
    model_idx: list[np.ndarray] = []
    model_correct: list[np.ndarray] = []
    colour_scores: list[np.ndarray] = []
    colour_idx: list[np.ndarray] = []
    colour_correct: list[np.ndarray] = []
    oof_check: dict[int, float] = {}
    model_limits: dict[str, dict[str, tuple[float, float]]] = {}
    colour_limits: dict[str, tuple[float, float]] = {}
    for k in sorted(set(folds.values())):
        train = np.flatnonzero((fold_of != k) & (fold_of >= 0))
        held = np.flatnonzero(fold_of == k)
        if k in ks:
            ckpt = ckpt_io.load(args.runs / f"fold-{k}" / args.checkpoint)
            threshold = ckpt_io.spec_of(ckpt).logit_threshold
            model = WithFeatures(ckpt_io.model_of(ckpt)).eval()
            logits, feats = forward(model, pixels)
            feats = project_like_export(feats, train)
            ref = read_logits(args.runs / f"oof-fold-{k}.csv")
            diffs = [abs(float(logits[i]) - ref[names[i]]) for i in held if names[i] in ref]
            oof_check[k] = max(diffs) if diffs else float("nan")
            fold_scores = scores_for_fold(colour, feats, logits, train, held)
            for name, pair in fold_scores.items():
                model_scores.setdefault(name, []).append(pair[0])
            ok = (logits[held] >= threshold) == truth[held].astype(bool)
            model_idx.append(held)
            model_correct.append(ok)
            for name, pair in fold_scores.items():
                lims = train_limits(pair, patients, train)
                for p in set(patients[held]):
                    model_limits.setdefault(name, {})[str(p)] = lims
            src = "its model"
        else:
            missing = [names[i] for i in held if names[i] not in pooled_oof]
            if missing:
                print(f"fold {k}: no model and {len(missing)} cells without logits in "
                      f"{args.oof}; left out", file=sys.stderr)
                continue
            z = np.array([pooled_oof[names[i]] for i in held])
            ok = (z >= 0.0) == truth[held].astype(bool)  # threshold 0.5: logit 0
            src = f"{args.oof} (no model yet: colour only)"
        pair = fitted(colour, {}, "max", train, held)
        colour_scores.append(pair[0])
        lims = train_limits(pair, patients, train)
        for p in set(patients[held]):
            colour_limits[str(p)] = lims
        colour_idx.append(held)
        colour_correct.append(ok)
        print(f"fold {k}: {len(train)} training cells, {len(held)} held out "
              f"({len(set(patients[held]))} patients), accuracy from {src}", file=sys.stderr)

    result: dict[str, object] = {"folds_with_models": ks,
                                 "oof_max_abs_logit_difference": oof_check}
    if ks:
        idx = np.concatenate(model_idx)
        result["with_models"] = analyse(
            {n: np.concatenate(v) for n, v in model_scores.items()}, patients[idx],
            np.concatenate(model_correct), klass_of,
            f"Every score, folds {ks} (the folds whose model is trained)", model_limits)
    idx = np.concatenate(colour_idx)
    result["colour_all_folds"] = analyse(
        {"colour (Mahalanobis)": np.concatenate(colour_scores)}, patients[idx],
        np.concatenate(colour_correct), klass_of,
        "Colour only (needs no model), every fold", {"colour (Mahalanobis)": colour_limits})
    print(f"\nlogits of the fold models vs their out-of-fold files: max |difference| "
          f"{oof_check}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
