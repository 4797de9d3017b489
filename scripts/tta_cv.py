"""Test-time symmetries (``export --tta``) on the real-cell patient folds (docs/accuracy.md).

For each patient-grouped fold k (docs/cv/folds.csv) with a trained model
(``RUNS/fold-k/last.pt``, from ``leukoedge cv run``; a fold counts once its
``RUNS/oof-fold-k.csv`` exists, i.e. training finished): the model is exported twice with
``leukoedge export``'s own function (parity-checked, on synthetic cells), without and with
``--tta`` (each count given), and each ONNX file classifies the fold's held-out patients'
cells through the runtime (``predict_stream``, the code ``classify`` runs). Pooled over the
folds: weighted F1 at the spec's threshold and ROC AUC, for each TTA setting, plus the
number of cells whose label changed, and the per-fold figures.

Needs the train extra (torch). Usage::

    nice -n 10 python scripts/tta_cv.py ../shared/data/cnmc-real \\
        ../shared/data/cnmc-sample --folds docs/cv/folds.csv --runs cv-runs/full-gap \\
        --tta 1 2 4 8 --json docs/cv/tta.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from leukoedge_train.cv import read_folds
from leukoedge_train.export import export_onnx

from leukoedge.classify import predict_stream
from leukoedge.data import collect
from leukoedge.evaluate import metrics
from leukoedge.session import SessionConfig, load_model


def classify(model_path: Path, items: list[Any]) -> tuple[np.ndarray, float]:
    m = load_model(model_path, SessionConfig(provider="cpu"))
    t0 = time.perf_counter()
    logits = [p.row.logit for p in predict_stream(m, items, batch_size=64)]
    if any(v is None for v in logits):
        raise SystemExit(f"{model_path}: some cells could not be classified")
    return np.asarray(logits, dtype=np.float64), time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="+", type=Path)
    ap.add_argument("--folds", type=Path, default=Path("docs/cv/folds.csv"))
    ap.add_argument("--runs", type=Path, default=Path("cv-runs/full-gap"))
    ap.add_argument("--tta", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None,
                    help="keep each fold's logits here (fold-K-ttaT.json) and reuse them, "
                         "so a rerun only does the folds finished since")
    args = ap.parse_args()

    folds = read_folds(args.folds)
    items = [it for it in collect(args.data) if it.patient in folds and it.label is not None]
    # a fold is finished when the cv harness has written its out-of-fold logits
    ks = sorted(k for k in set(folds.values())
                if (args.runs / f"fold-{k}" / "last.pt").is_file()
                and (args.runs / f"oof-fold-{k}.csv").is_file())
    if not ks:
        print(f"no fold model under {args.runs}", file=sys.stderr)
        return 1
    per_fold: list[dict[str, Any]] = []
    pooled: dict[int, list[np.ndarray]] = {t: [] for t in args.tta}
    truth: list[int] = []
    threshold = None
    with tempfile.TemporaryDirectory(prefix="tta-cv-") as tmp:
        for k in ks:
            held = [it for it in items if folds[it.patient] == k]
            y = [int(it.label) for it in held]
            truth += y
            row: dict[str, Any] = {"fold": k, "cells": len(held),
                                   "patients": len({it.patient for it in held})}
            for t in args.tta:
                cached = args.cache / f"fold-{k}-tta{t}.json" if args.cache else None
                if cached is not None and cached.is_file():
                    c = json.loads(cached.read_text())
                    logits, secs, threshold = (np.asarray(c["logits"]), c["seconds"],
                                               c["threshold"])
                    passed = c["parity"]
                else:
                    out = Path(tmp) / f"fold-{k}-tta{t}.onnx"
                    res = export_onnx(args.runs / f"fold-{k}" / "last.pt", out, tta=t)
                    threshold = res.spec.logit_threshold
                    passed = res.parity.passed
                    logits, secs = classify(out, held)
                    if cached is not None:
                        cached.parent.mkdir(parents=True, exist_ok=True)
                        cached.write_text(json.dumps({
                            "logits": logits.tolist(), "seconds": secs,
                            "threshold": threshold, "parity": passed,
                            "paths": [str(it.path) for it in held]}))
                pooled[t].append(logits)
                m = metrics(y, [int(v >= threshold) for v in logits], logits.tolist())
                row[f"tta{t}"] = {"weighted_f1": m["weighted_f1"], "roc_auc": m["roc_auc"],
                                  "accuracy": m["accuracy"], "seconds": secs,
                                  "parity": passed}
                print(f"fold {k} tta {t}: {len(held)} cells, weighted F1 "
                      f"{m['weighted_f1']:.4f}, AUC {m['roc_auc']:.4f} ({secs:.1f} s)",
                      flush=True)
            per_fold.append(row)
    assert threshold is not None
    summary: dict[str, Any] = {"folds": ks, "cells": len(truth), "runs": str(args.runs),
                               "per_fold": per_fold, "pooled": {}}
    base = np.concatenate(pooled[args.tta[0]])
    for t in args.tta:
        z = np.concatenate(pooled[t])
        m = metrics(truth, [int(v >= threshold) for v in z], z.tolist())
        summary["pooled"][f"tta{t}"] = {
            "weighted_f1": m["weighted_f1"], "roc_auc": m["roc_auc"],
            "accuracy": m["accuracy"],
            "labels_changed_vs_first": int(((z >= threshold) != (base >= threshold)).sum())}
    print(json.dumps(summary["pooled"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
