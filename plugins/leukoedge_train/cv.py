"""Cross-validation by patient: folds written down once, out-of-fold predictions, figures.

Protocol (docs/accuracy.md):

1. ``folds``: every patient goes to exactly one of ``k`` folds, stratified by class and
   balanced by patients: within each class, patients sorted by cells (largest first) are
   dealt to the folds in snake order (0, 1, .., k-1, k-1, .., 0, ...; HEM dealt from the
   other end, so the largest ALL and HEM patients do not share a fold). With the HEM cells
   concentrated in five patients (H10 400, H22 373, H12 185, H17 119, H16 69) this puts
   one of them in each of 5 folds, and every fold gets about as many patients of each
   class. Deterministic: no seed, same data -> same file.
2. ``run``: for each fold ``f``, a model is trained on the other folds with a named recipe
   (:mod:`.recipes`) and predicts fold ``f``; its logits go to ``oof-fold-f.csv``
   (path, patient, label, fold, logit). Every cell is predicted once, by a model that never
   saw its patient. ``selection=last`` recipes score the final epoch's weights (the held-out
   fold is evaluated after each epoch for the curves only); ``selection=inner`` recipes
   early-stop on an inner patient split of the training side. A fold whose CSV exists is
   done; a fold interrupted mid-training resumes from its ``last.pt``.
3. ``report``: *pooled* = metrics of all out-of-fold predictions together; also the mean
   and spread over folds, and per patient (share of its cells called right).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from leukoedge.console import note
from leukoedge.data import Item, collect, split_by_patient
from leukoedge.errors import DataError, UsageError
from leukoedge.evaluate import metrics
from leukoedge.output import atomic_write_text
from leukoedge.spec import LABELS

from .labels import labelled

FOLD_COLUMNS = ("patient", "label", "cells", "fold")
OOF_COLUMNS = ("path", "patient", "label", "fold", "logit")
HEADLINE = ("weighted_f1", "balanced_accuracy", "roc_auc", "sensitivity_all",
            "specificity_all", "accuracy")


# -- folds ------------------------------------------------------------------------------

def labelled_items(data: Sequence[Path]) -> list[Item]:
    """The labelled cells of ``data`` (:func:`.labels.labelled`), each with a patient id."""
    items = labelled(collect(list(data)), ", ".join(map(str, data)))
    missing = [it for it in items if not it.patient]
    if missing:
        raise DataError(f"{missing[0].path}: no patient id in the file name",
                        "cross-validation by patient needs C-NMC names (UID_<p>_...)")
    return items


def assign_folds(items: Sequence[Item], k: int) -> dict[str, int]:
    """Patient -> fold, stratified by class, snake-dealt by size (see the module doc)."""
    if k < 2:
        raise UsageError(f"--k must be at least 2, got {k}")
    cells: dict[tuple[int, str], int] = {}
    for it in items:
        assert it.label is not None and it.patient is not None
        cells[(it.label, it.patient)] = cells.get((it.label, it.patient), 0) + 1
    folds: dict[str, int] = {}
    for label in (0, 1):
        pts = sorted(((n, p) for (lab, p), n in cells.items() if lab == label),
                     key=lambda t: (-t[0], t[1]))
        if len(pts) < k:
            raise DataError(f"only {len(pts)} {LABELS[label].upper()} patients for "
                            f"{k} folds", "lower --k")
        for i, (_, p) in enumerate(pts):
            r, c = divmod(i, k)
            f = c if r % 2 == 0 else k - 1 - c
            folds[p] = f if label == 1 else k - 1 - f
    return folds


def folds_table(items: Sequence[Item], folds: dict[str, int]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for it in items:
        assert it.patient is not None and it.label is not None
        r = rows.setdefault(it.patient, {"patient": it.patient,
                                         "label": LABELS[it.label], "cells": 0,
                                         "fold": folds[it.patient]})
        r["cells"] += 1
    return sorted(rows.values(), key=lambda r: (r["fold"], r["label"], r["patient"]))


def write_folds(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, FOLD_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_folds(path: Path) -> dict[str, int]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the folds file ({exc.strerror})",
                        "write one with 'leukoedge cv folds DATA --out FILE'") from exc
    out: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            out[row["patient"]] = int(row["fold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: not a folds file (columns "
                            f"{', '.join(FOLD_COLUMNS)})") from exc
    if not out:
        raise DataError(f"{path}: the folds file lists no patient")
    return out


def describe_folds(items: Sequence[Item], folds: dict[str, int]) -> list[dict[str, Any]]:
    """Cells and patients per fold and class (printed before any training)."""
    k = max(folds.values()) + 1
    out = []
    for f in range(k):
        its = [it for it in items if folds.get(it.patient or "") == f]
        out.append({
            "fold": f, "cells": len(its),
            "all_cells": sum(1 for it in its if it.label == 1),
            "hem_cells": sum(1 for it in its if it.label == 0),
            "all_patients": len({it.patient for it in its if it.label == 1}),
            "hem_patients": len({it.patient for it in its if it.label == 0}),
        })
    return out


# -- running the folds --------------------------------------------------------------------

def common_root(paths: Sequence[Path]) -> Path:
    parts = [p.resolve().parts for p in paths]
    n = 0
    while all(len(p) > n and p[n] == parts[0][n] for p in parts):
        n += 1
    return Path(*parts[0][:n]) if n else Path("/")


@dataclass
class FoldResult:
    fold: int
    oof: Path
    seconds: float
    epochs: int
    skipped: bool = False


@dataclass
class FoldPlan:
    """What training one fold takes: its settings, split, held-out cells and the
    checkpoint that scores them."""

    cfg: Any  # TrainConfig
    split: Any  # dataset.Split
    held: list[Item]
    pick: str


def plan_fold(items: Sequence[Item], folds: dict[str, int], fold: int, recipe_name: str,
              run_dir: Path, root: Path, screen: bool = False,
              threads: int | None = None) -> FoldPlan:
    """The configuration of fold ``fold``'s run: the recipe's settings and the split
    (an inner patient split of the training side, or the held-out fold watched)."""
    from .config import TrainConfig
    from .dataset import Split
    from .recipes import apply_recipe, get_recipe

    recipe = get_recipe(recipe_name)
    unknown = [it.patient for it in items if it.patient not in folds]
    if unknown:
        raise DataError(f"patient {unknown[0]} is in no fold of the folds file",
                        "write the folds file again for this data")
    held = [it for it in items if folds[it.patient or ""] == fold]
    rest = [it for it in items if folds[it.patient or ""] != fold]
    if not held:
        raise UsageError(f"fold {fold} is empty")
    resume = (run_dir / "last.pt").exists()
    cfg = TrainConfig(arch=recipe.arch, data=root, out=run_dir, resume=resume,
                      threads=threads)
    cfg = apply_recipe(cfg, recipe_name, screen)
    if recipe.selection == "inner":
        tr, va = split_by_patient(rest, cfg.setting("val_fraction"), cfg.setting("seed"))
        split = Split(tr, va, f"patient (inner split of the training side of fold {fold})")
        return FoldPlan(cfg, split, held, "best.pt")
    split = Split(rest, held, f"cv fold {fold} (watched only: final weights scored)")
    return FoldPlan(replace(cfg, patience=0), split, held, "last.pt")


def run_fold(items: Sequence[Item], folds: dict[str, int], fold: int, recipe_name: str,
             out: Path, root: Path, screen: bool = False,
             threads: int | None = None) -> FoldResult:
    """Train on every fold but ``fold`` (:func:`plan_fold`) and write the out-of-fold
    logits of ``fold``."""
    from .train import train

    oof = out / f"oof-fold-{fold}.csv"
    if oof.exists():
        return FoldResult(fold, oof, 0.0, 0, skipped=True)
    run_dir = out / f"fold-{fold}"
    plan = plan_fold(items, folds, fold, recipe_name, run_dir, root, screen, threads)
    t0 = time.perf_counter()
    result = train(plan.cfg, split=plan.split)
    logits = predict(run_dir / plan.pick, plan.held)
    write_oof(oof, plan.held, fold, logits, root)
    return FoldResult(fold, oof, time.perf_counter() - t0, result.epochs_done)


def predict(ckpt_path: Path, items: Sequence[Item]) -> np.ndarray:
    """Logits of ``items`` by the checkpoint's model (eval mode, CPU, fp32)."""
    from . import checkpoint as ckpt_io
    from .dataset import load_images
    from .parity import torch_logits

    ckpt = ckpt_io.load(ckpt_path)
    spec = ckpt_io.spec_of(ckpt)
    model = ckpt_io.model_of(ckpt)
    loaded = load_images(items, spec.input_size, spec.crop_fraction, spec.interpolation)
    if loaded.skipped:
        raise DataError(f"{loaded.skipped[0][0].path}: {loaded.skipped[0][1]}",
                        "remove the unreadable file and run the fold again")
    return torch_logits(model, loaded.pixels, 64)


def begin_run(out: Path, recipe: Any, screen: bool, folds_file: Path, data: Sequence[Path],
              folds: Any) -> None:
    """``out/cv.json``, a run's record (recipe, screen, folds file and data as given,
    :func:`recorded_path`); a folder that holds another recipe's run is refused."""
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "cv.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("recipe") != recipe.name or old.get("screen") != screen:
            raise UsageError(f"{out} holds a run of recipe {old.get('recipe')} "
                             f"(screen={old.get('screen')})", "choose another --out")
        return
    meta = {"recipe": recipe.name, "recipe_spec": recipe.to_json_dict(), "screen": screen,
            "folds_file": recorded_path(folds_file),
            "data": [recorded_path(d) for d in data], "folds": folds}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


def recorded_path(path: Path, cwd: Path | None = None) -> str:
    """How a run file records a path the user gave: as given, except that an absolute
    path inside the current folder (``$PWD/../data`` included) is written relative
    to it, so a committed run file names no folder of the machine it ran on."""
    text = str(path)
    if not path.is_absolute():
        return text
    here = str(cwd if cwd is not None else Path.cwd())
    if text == here or text.startswith(here.rstrip("/") + "/"):
        return os.path.relpath(text, here)
    return text


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def write_oof(path: Path, items: Sequence[Item], fold: int, logits: np.ndarray,
              root: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(OOF_COLUMNS)
    for it, z in zip(items, logits):
        assert it.label is not None
        w.writerow([_rel(it.path, root), it.patient, LABELS[it.label], fold,
                    f"{float(z):.6g}"])
    atomic_write_text(path, buf.getvalue())


# -- the report ---------------------------------------------------------------------------

@dataclass
class OOF:
    paths: list[str]
    patients: list[str]
    labels: np.ndarray  # 1 = ALL
    folds: np.ndarray
    logits: np.ndarray


def oof_files(src: Path) -> list[Path]:
    """The out-of-fold files ``src`` stands for: ``src`` itself if it is a file, else the
    ``oof-fold-*.csv`` of a ``cv run`` folder, in fold order (none if there are none)."""
    return [src] if src.is_file() else sorted(src.glob("oof-fold-*.csv"))


def read_oof(files: Sequence[Path]) -> OOF:
    paths, patients, labels, folds, logits = [], [], [], [], []
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                paths.append(row["path"])
                patients.append(row["patient"])
                labels.append(LABELS.index(row["label"]))
                folds.append(int(row["fold"]))
                logits.append(float(row["logit"]))
    if not paths:
        raise DataError(f"no out-of-fold predictions in {', '.join(map(str, files))}")
    return OOF(paths, patients, np.array(labels), np.array(folds), np.array(logits))


def align_oof(members: Sequence[OOF]) -> list[OOF]:
    """Each member cut down to the cells every member predicted, in the first member's
    order, so that row ``i`` is the same cell in all. Runs compared or averaged must have
    used the same folds: a cell whose fold or label differs between members is refused."""
    first = members[0]
    index = [{p: i for i, p in enumerate(m.paths)} for m in members]
    keep = np.array([i for i, p in enumerate(first.paths)
                     if all(p in ix for ix in index[1:])], dtype=np.int64)
    if not len(keep):
        raise DataError("the out-of-fold predictions share no cell")
    out = []
    for m, ix in zip(members, index):
        r = np.array([ix[first.paths[i]] for i in keep], dtype=np.int64)
        bad = np.flatnonzero((m.folds[r] != first.folds[keep])
                             | (m.labels[r] != first.labels[keep]))
        if len(bad):
            raise DataError(f"{first.paths[keep[bad[0]]]}: fold or label differs between "
                            "the out-of-fold files", "use only runs made on the same folds file")
        out.append(OOF([m.paths[j] for j in r], [m.patients[j] for j in r], m.labels[r],
                       m.folds[r], m.logits[r]))
    return out


def mean_oof(members: Sequence[OOF]) -> OOF:
    """An ensemble's out-of-fold predictions from its members': the mean logit of every
    cell that all members predicted (:func:`align_oof`). Each member's model never saw the
    cell's patient, so neither does the ensemble."""
    aligned = align_oof(members)
    return replace(aligned[0], logits=np.mean([m.logits for m in aligned], axis=0))


def headline(y: np.ndarray, z: np.ndarray, threshold: float = 0.0) -> dict[str, Any]:
    m = metrics(y.tolist(), (z >= threshold).astype(int).tolist(),
                (1.0 / (1.0 + np.exp(-z))).tolist())
    return {k: m[k] for k in HEADLINE} | {"cells": int(len(y))}


def report(oof: OOF) -> dict[str, Any]:
    """Pooled, per-fold (mean and spread) and per-patient figures at logit 0."""
    pooled = headline(oof.labels, oof.logits)
    per_fold = []
    for f in sorted(set(oof.folds.tolist())):
        sel = oof.folds == f
        per_fold.append({"fold": int(f)} | headline(oof.labels[sel], oof.logits[sel]))
    spread = {}
    for k in HEADLINE:
        vals = [r[k] for r in per_fold if r[k] is not None]
        if vals:
            spread[k] = {"mean": float(np.mean(vals)),
                         "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    pats: dict[str, list[int]] = {}
    for i, p in enumerate(oof.patients):
        pats.setdefault(p, []).append(i)
    per_patient: list[dict[str, Any]] = []
    for p, idx in sorted(pats.items(), key=lambda kv: _patient_key(kv[0])):
        ii = np.array(idx)
        right = ((oof.logits[ii] >= 0).astype(int) == oof.labels[ii]).mean()
        per_patient.append({"patient": p, "label": LABELS[int(oof.labels[ii[0]])],
                            "fold": int(oof.folds[ii[0]]), "cells": len(idx),
                            "accuracy": float(right),
                            "mean_prob_all": float(np.mean(1 / (1 + np.exp(-oof.logits[ii]))))})
    acc = [r["accuracy"] for r in per_patient]
    return {"pooled": pooled, "folds": per_fold, "fold_spread": spread,
            "per_patient": per_patient,
            "mean_patient_accuracy": float(np.mean(acc)) if acc else math.nan,
            "always_all_accuracy": float(oof.labels.mean())}


def _patient_key(p: str) -> tuple[int, int]:
    hem = p.upper().startswith("UID_H")
    digits = "".join(ch for ch in p if ch.isdigit())
    return (1 if hem else 0, int(digits or 0))


def markdown(rep: dict[str, Any], title: str) -> str:
    """The report as Markdown tables (docs/accuracy.md pastes these)."""
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"### {title}", "", "| | cells | weighted F1 | balanced acc. | ROC AUC | "
             "sensitivity | specificity | accuracy |", "|---|---|---|---|---|---|---|---|"]
    p = rep["pooled"]
    lines.append(f"| pooled | {p['cells']} | " + " | ".join(fmt(p[k]) for k in HEADLINE)
                 + " |")
    for r in rep["folds"]:
        lines.append(f"| fold {r['fold']} | {r['cells']} | "
                     + " | ".join(fmt(r[k]) for k in HEADLINE) + " |")
    s = rep["fold_spread"]
    lines.append("| fold mean +- sd | | " + " | ".join(
        f"{s[k]['mean']:.3f} +- {s[k]['sd']:.3f}" if k in s else "-" for k in HEADLINE)
        + " |")
    lines += ["", f"Mean per-patient accuracy {rep['mean_patient_accuracy']:.3f}; "
              f"always-ALL accuracy {rep['always_all_accuracy']:.3f}.", "",
              "| patient | class | fold | cells | called right | mean P(ALL) |",
              "|---|---|---|---|---|---|"]
    for r in rep["per_patient"]:
        lines.append(f"| {r['patient']} | {r['label']} | {r['fold']} | {r['cells']} | "
                     f"{r['accuracy']:.2f} | {r['mean_prob_all']:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path) -> dict[str, Any]:
    files = oof_files(out)
    if not files:
        raise DataError(f"{out}: no oof-fold-*.csv yet", "run 'leukoedge cv run' first")
    rep = report(read_oof(files))
    meta_path = out / "cv.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rep["run"] = meta
    atomic_write_text(out / "report.json", json.dumps(rep, indent=2) + "\n")
    title = f"{meta.get('recipe', out.name)}{' (screen)' if meta.get('screen') else ''}"
    atomic_write_text(out / "report.md", markdown(rep, title))
    note(f"{out / 'report.md'}: {len(files)} folds")
    return rep


# -- the final model ----------------------------------------------------------------------

#: every n-th cell is watched during the final fit (training cells: the figures printed
#: then are fit, not estimates; the estimate is the recipe's cross-validated figure)
WATCH_EVERY = 20


def plan_final(items: Sequence[Item], recipe_name: str, out: Path, root: Path,
               threads: int | None = None) -> tuple[Any, Any]:
    """The final fit's settings (the recipe's, fixed epochs) and its split (every patient
    trains; every :data:`WATCH_EVERY`-th training cell is watched)."""
    from .config import TrainConfig
    from .dataset import Split
    from .recipes import apply_recipe, get_recipe

    recipe = get_recipe(recipe_name)
    if recipe.selection != "last":
        raise UsageError(f"recipe {recipe_name} early-stops on an inner split; the final "
                         "fit needs a fixed-epoch recipe (selection 'last')")
    watched = list(items[::WATCH_EVERY])
    split = Split(list(items), watched,
                  f"none (all {len({it.patient for it in items})} patients train; every "
                  f"{WATCH_EVERY}th training cell is watched, not an estimate)")
    cfg = TrainConfig(arch=recipe.arch, data=root, out=out,
                      resume=(out / "last.pt").exists(), threads=threads)
    return replace(apply_recipe(cfg, recipe_name), patience=0), split


def fit_final(items: Sequence[Item], recipe_name: str, out: Path, root: Path,
              cv_report: Path | None = None, command: str = "",
              threads: int | None = None) -> Path:
    """Train ``recipe_name`` on every patient of ``items``; its ``last.pt`` carries the
    provenance (patients, recipe, cross-validated figures) in ``ModelSpec.training``."""
    from . import checkpoint as ckpt_io
    from .recipes import get_recipe
    from .train import train

    recipe = get_recipe(recipe_name)
    cfg, split = plan_final(items, recipe_name, out, root, threads)
    train(cfg, split=split)
    last = out / "last.pt"
    state = ckpt_io.load(last)
    weights = ckpt_io.spec_of(state).training.get("weights")
    if not weights:  # a run begun before the spec carried its weights: its config.json says
        from .pretrained import record

        source = json.loads((out / "config.json").read_text()).get("weights", "")
        weights = record(recipe.arch, cfg.weights or "none", str(source))
    training: dict[str, Any] = {
        "patients": sorted({it.patient or "" for it in items}, key=_patient_key),
        "recipe": recipe.to_json_dict(),
        "data": f"{len(items)} labelled cells of {len({it.patient for it in items})} "
                "patients (C-NMC 2019 training data)",
    }
    if cv_report is not None:
        rep = json.loads(cv_report.read_text())
        training["cv"] = {
            "report": cv_report.as_posix(),
            "folds_file": rep.get("run", {}).get("folds_file", ""),
            "pooled": {k: rep["pooled"][k] for k in HEADLINE + ("cells",)},
            "folds": [{k: r[k] for k in ("fold", "cells", "weighted_f1")}
                      for r in rep["folds"]],
            "mean_patient_accuracy": rep["mean_patient_accuracy"],
        }
    training["weights"] = weights  # never empty: record() always says its source
    if command:
        training["command"] = command
    spec = replace(ckpt_io.spec_of(state), training=training)
    state["spec"] = spec.to_json()
    ckpt_io.save(state, last)
    return last
