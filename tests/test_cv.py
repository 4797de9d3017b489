"""Cross-validation by patient (leukoedge cv): folds, out-of-fold runs, the report, recipes,
and the recipe settings (crop, width, gap head, grey-world colour normalisation)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402

import leukoedge.cli as cli  # noqa: E402
from leukoedge.data import Item, collect  # noqa: E402
from leukoedge.errors import DataError, UsageError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import real_data  # noqa: E402
from leukoedge_train import cv  # noqa: E402
from leukoedge_train.models import create_model, greyworld  # noqa: E402
from leukoedge_train.recipes import RECIPES, apply_recipe  # noqa: E402
from leukoedge_train.config import TrainConfig  # noqa: E402
from train_data import write_dataset  # noqa: E402

pytestmark = pytest.mark.train

FOLDS = Path(__file__).resolve().parents[1] / "docs" / "cv" / "folds.csv"


def _items(spec: dict[str, tuple[int, int]]) -> list[Item]:
    """{patient: (label, cells)} -> items."""
    return [Item(Path(f"{p}_{i}.bmp"), label, p) for p, (label, n) in spec.items()
            for i in range(n)]


def test_folds_never_split_a_patient_and_spread_big_patients() -> None:
    spec = {f"UID_{i}": (1, 10 * i) for i in range(1, 13)}
    spec |= {f"UID_H{i}": (0, 100 if i <= 5 else 5) for i in range(1, 11)}
    items = _items(spec)
    folds = cv.assign_folds(items, 5)
    assert set(folds) == set(spec)
    # every fold has patients of both classes
    for f in range(5):
        labels = {spec[p][0] for p, g in folds.items() if g == f}
        assert labels == {0, 1}, f
    # the five big HEM patients land in five different folds
    assert len({folds[f"UID_H{i}"] for i in range(1, 6)}) == 5
    # deterministic
    assert cv.assign_folds(list(reversed(items)), 5) == folds


def test_folds_refuse_too_few_patients() -> None:
    items = _items({"UID_1": (1, 3), "UID_2": (1, 3), "UID_H1": (0, 3)})
    with pytest.raises(DataError, match="only 1 HEM patients for 2 folds"):
        cv.assign_folds(items, 2)


def test_committed_folds_match_the_data() -> None:
    """docs/cv/folds.csv is what 'cv folds' writes for the shipped data, to the patient."""
    items = cv.labelled_items([real_data("cnmc-real"), real_data("cnmc-sample")])
    assert cv.read_folds(FOLDS) == cv.assign_folds(items, 5)
    assert len({it.patient for it in items}) == 39


def test_report_pooled_and_per_patient() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1] * 60 + [0] * 40)
    logits = np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1.2, 100)
    patients = [f"UID_{i % 3}" if y else f"UID_H{i % 2}" for i, y in enumerate(labels)]
    folds = np.array([i % 2 for i in range(100)])
    rep = cv.report(cv.OOF([str(i) for i in range(100)], patients, labels, folds, logits))
    pred = (logits >= 0).astype(int)
    tp = ((pred == 1) & (labels == 1)).sum()
    tn = ((pred == 0) & (labels == 0)).sum()
    assert rep["pooled"]["sensitivity_all"] == pytest.approx(tp / 60)
    assert rep["pooled"]["specificity_all"] == pytest.approx(tn / 40)
    sk = pytest.importorskip("sklearn.metrics")
    assert rep["pooled"]["weighted_f1"] == pytest.approx(
        sk.f1_score(labels, pred, average="weighted"))
    assert rep["pooled"]["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, logits))
    assert len(rep["folds"]) == 2
    p0 = next(r for r in rep["per_patient"] if r["patient"] == "UID_0")
    sel = np.array([p == "UID_0" for p in patients])
    assert p0["accuracy"] == pytest.approx((pred[sel] == 1).mean())
    md = cv.markdown(rep, "t")
    assert "| pooled | 100 |" in md and "| UID_H1 | hem |" in md


def test_mean_oof_averages_shared_cells_and_refuses_other_folds() -> None:
    a = cv.OOF(["x", "y", "z"], ["P1", "P1", "P2"], np.array([1, 1, 0]), np.array([0, 0, 1]),
               np.array([2.0, -1.0, 0.5]))
    b = cv.OOF(["z", "x"], ["P2", "P1"], np.array([0, 1]), np.array([1, 0]),
               np.array([-1.5, 0.0]))
    m = cv.mean_oof([a, b])
    assert m.paths == ["x", "z"] and m.patients == ["P1", "P2"]
    assert m.logits.tolist() == [1.0, -0.5]
    assert m.labels.tolist() == [1, 0] and m.folds.tolist() == [0, 1]
    moved = cv.OOF(["x"], ["P1"], np.array([1]), np.array([3]), np.array([0.0]))
    with pytest.raises(DataError, match="x: fold or label differs"):
        cv.mean_oof([a, moved])
    with pytest.raises(DataError, match="share no cell"):
        cv.mean_oof([a, cv.OOF(["w"], ["P9"], np.array([0]), np.array([0]), np.array([0.0]))])


def test_cv_run_trains_each_fold_on_other_patients(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # absolute paths inside it are recorded relative to it
    data = write_dataset(tmp_path / "d", patients=8, cells=6, size=48, seed=5)
    folds = tmp_path / "folds.csv"
    assert cli.main(["cv", "folds", str(data), "--out", str(folds), "--k", "2"]) == 0
    out = tmp_path / "cv"
    args = ["cv", "run", str(data), "--folds", str(folds), "--recipe", "gap", "--out",
            str(out), "--threads", "1"]
    # a 1-epoch, 32 px version of the recipe keeps this test to seconds
    import leukoedge_train.recipes as rec

    saved = rec.SCREEN
    rec.SCREEN = {"input_size": 32, "epochs": 1}
    try:
        assert cli.main(args + ["--screen", "--only", "1"]) == 0
        assert not (out / "oof-fold-0.csv").exists()
        assert cli.main(args + ["--screen"]) == 0  # fold 1 is done: only fold 0 runs
    finally:
        rec.SCREEN = saved
    rows = []
    for f in (0, 1):
        with open(out / f"oof-fold-{f}.csv", newline="") as fh:
            rows += list(csv.DictReader(fh))
        cfg = json.loads((out / f"fold-{f}" / "config.json").read_text())
        assert cfg["config"]["input_size"] == 32 and cfg["config"]["colour_norm"] == "greyworld"
        trained = set(cfg["split"]["train_patients"])
        scored = {r["patient"] for r in rows if r["fold"] == str(f)}
        assert scored and not trained & scored  # no patient on both sides
    assert len(rows) == len(collect([data]))  # every cell predicted exactly once
    assert len({r["path"] for r in rows}) == len(rows)
    rep = json.loads((out / "report.json").read_text())
    assert rep["pooled"]["cells"] == len(rows)
    meta = json.loads((out / "cv.json").read_text())
    assert meta["data"] == ["d"] and meta["folds_file"] == "folds.csv"
    assert str(tmp_path) not in (out / "report.json").read_text()
    # another recipe in the same folder is refused with one line
    code = cli.main(["cv", "run", str(data), "--folds", str(folds), "--recipe", "stain",
                     "--out", str(out)])
    assert code == 2
    assert "holds a run of recipe gap" in capsys.readouterr().err


def test_run_files_record_paths_relative_to_the_current_folder() -> None:
    here = Path("/srv/checkout")
    assert cv.recorded_path(Path("/srv/checkout/docs/cv/folds.csv"), here) == "docs/cv/folds.csv"
    assert cv.recorded_path(Path("/srv/checkout/../shared/data/real"), here) \
        == "../shared/data/real"
    assert cv.recorded_path(Path("../shared/data/real"), here) == "../shared/data/real"
    assert cv.recorded_path(Path("/data/cells"), here) == "/data/cells"  # as given
    assert cv.recorded_path(Path("/srv/checkout2/x"), here) == "/srv/checkout2/x"


def test_recipes_fill_only_unset_settings() -> None:
    cfg = TrainConfig(arch="scratch", data=Path("x"), epochs=3)
    got = apply_recipe(cfg, "gap")
    assert got.epochs == 3  # given explicitly: kept
    assert got.width == 0.5 and got.head == "gap" and got.colour_norm == "greyworld"
    assert got.resolved().crop_fraction == 0.75
    with pytest.raises(UsageError, match="unknown recipe"):
        apply_recipe(cfg, "nope")
    assert all(r.selection in ("last", "inner") for r in RECIPES.values())


def test_patient_weights_even_out_patients_within_each_class() -> None:
    from leukoedge_train.train import patient_weights

    items = [Item(Path(f"a{i}"), 1, "A") for i in range(16)] + [Item(Path("b"), 1, "B")] \
        + [Item(Path(f"h{i}"), 0, "H") for i in range(4)] + [Item(Path("g"), 0, "G")]
    assert patient_weights(items, 0.0) is None  # off: the plain loss
    for alpha in (0.5, 1.0):
        w = patient_weights(items, alpha)
        assert w is not None and len(w) == len(items)
        # the class balance is untouched: each class keeps a mean weight of 1
        assert w[:17].mean().item() == pytest.approx(1.0)
        assert w[17:].mean().item() == pytest.approx(1.0)
        # a patient's share of its class: 16 / 1 cells at alpha 0, 4 / 1 at 0.5, 1 / 1 at 1
        assert w[:16].sum().item() / w[16].item() == pytest.approx(16 ** (1 - alpha))
    assert apply_recipe(TrainConfig(arch="scratch", data=Path("x")),
                        "gap-balanced").patient_balance == 0.5
    with pytest.raises(UsageError, match="--patient-balance"):
        TrainConfig(arch="scratch", data=Path("x"), patient_balance=1.5).resolved()


def test_patient_weights_change_the_loss() -> None:
    """The weighted loss is the plain one when every weight is 1, and moves when not."""
    from leukoedge_train.schedule import build_optimisation, training_loss

    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    cfg = TrainConfig(arch="scratch", data=Path("x")).resolved()
    opt = build_optimisation(cfg, torch.nn.Linear(1, 1), y, torch.device("cpu"))
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    plain = opt.criterion(logits, y)
    assert training_loss(opt, logits, y).item() == plain.item()  # no weights: the same loss
    assert training_loss(opt, logits, y, torch.ones(4)).item() == pytest.approx(plain.item())
    tilted = training_loss(opt, logits, y, torch.tensor([0.2, 1.8, 1.0, 1.0]))
    assert tilted.item() > plain.item()  # the badly called ALL cell now counts more


def test_greyworld_removes_stain_gain_and_keeps_background() -> None:
    rng = np.random.default_rng(1)
    img = np.zeros((1, 3, 16, 16), np.float32)
    img[:, :, 4:12, 4:12] = rng.uniform(40, 200, (1, 3, 8, 8))
    x = torch.from_numpy(img)
    tinted = x * torch.tensor([0.7, 1.0, 1.3]).view(1, 3, 1, 1)
    a, b = greyworld(x), greyworld(tinted)
    assert torch.allclose(a, b, atol=1e-3)  # a per-channel gain is removed
    assert (a[:, :, :4, :] == 0).all()  # background stays black
    cell = a[:, :, 4:12, 4:12]
    assert torch.allclose(cell.mean(dim=(2, 3)), torch.full((1, 3), 128.0), atol=1e-3)


def test_gap_half_width_model_is_small_and_exports(tmp_path: Path) -> None:
    m = create_model("scratch", 64, width=0.5, head="gap", colour_norm="greyworld",
                     dense=[256, 128, 64]).eval()
    full = create_model("scratch", 64, dense=[256, 128, 64])
    n = sum(p.numel() for p in m.parameters())
    assert n < sum(p.numel() for p in full.parameters()) / 5
    x = torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8)
    path = tmp_path / "m.onnx"
    from leukoedge_train.export import _torch_export

    _torch_export(m, 64, path, 18, "dynamo")  # the exporter 'leukoedge export' uses
    import onnxruntime as ort

    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        want = m(x).numpy()
    assert np.allclose(got, want, atol=1e-4)


def test_cv_final_trains_on_every_patient_and_records_provenance(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    import leukoedge_train.recipes as rec
    from leukoedge_train import checkpoint as ckpt_io

    data = write_dataset(tmp_path / "d", patients=6, cells=4, size=48, seed=7)
    small = dict(rec.RECIPES["gap"].settings) | {"input_size": 32, "epochs": 1}
    monkeypatch.setitem(rec.RECIPES, "gap", replace(rec.RECIPES["gap"], settings=small))
    report = tmp_path / "report.json"
    pooled = {k: 0.5 for k in cv.HEADLINE} | {"cells": 24}
    report.write_text(json.dumps({
        "pooled": pooled, "mean_patient_accuracy": 0.4,
        "folds": [{"fold": 0, "cells": 12, "weighted_f1": 0.6},
                  {"fold": 1, "cells": 12, "weighted_f1": 0.4}],
        "run": {"folds_file": "folds.csv"}}))
    out = tmp_path / "final"
    assert cli.main(["cv", "final", str(data), "--recipe", "gap", "--out", str(out),
                     "--cv-report", str(report), "--threads", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    everyone = sorted({it.patient for it in collect([data])})
    assert sorted(cfg["split"]["train_patients"]) == everyone  # nobody held out
    tr = ckpt_io.spec_of(ckpt_io.load(out / "last.pt")).training
    assert sorted(tr["patients"]) == everyone
    assert tr["recipe"]["name"] == "gap" and tr["cv"]["pooled"] == pooled
    assert [f["weighted_f1"] for f in tr["cv"]["folds"]] == [0.6, 0.4]
    assert tr["command"].startswith("leukoedge cv final ") and "--recipe gap" in tr["command"]
    # an early-stopping recipe cannot make the final model (nothing to stop on)
    assert cli.main(["cv", "final", str(data), "--recipe", "baseline", "--out",
                     str(tmp_path / "b")]) == 2
