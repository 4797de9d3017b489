"""Calibration: the temperature fit, the threshold rules, the spec round trip, the
predictions files, the warnings, and the new figures of evaluate (ECE, Brier, log-loss,
patient-bootstrap intervals)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss
from typer.testing import CliRunner

from leukoedge.calibrate import (
    Rule,
    calibrate,
    calibrated_spec,
    choose_threshold,
    fit_temperature,
    write_model,
)
from leukoedge.cli import assemble
from leukoedge.errors import DataError
from leukoedge.evaluate import (
    _weighted_auc,
    bootstrap_intervals,
    calibration_metrics,
    metrics,
    roc_auc,
)
from leukoedge.predictions import read_predictions
from leukoedge.session import load_model
from leukoedge.spec import ModelSpec

runner = CliRunner()
OOF = Path(__file__).resolve().parent.parent / "docs" / "cv" / "full" / "gap-oof.csv"
SPEC = ModelSpec(architecture="test-mean", input_size=32)


def invoke(*args: str | os.PathLike[str]) -> Result:
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic(seed: int, n: int = 400, temperature: float = 2.0,
              ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0.5, 3.0, n)
    if ties:
        z = z.round(0)
    y = (rng.random(n) < sigmoid(z / temperature)).astype(np.int64)
    y[:2], y[2:4] = 1, 0
    return z, y


# -- the temperature ----------------------------------------------------------------------

@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_is_the_likelihood_maximum(true_t: float) -> None:
    z, y = synthetic(1, 20_000, true_t)
    t = fit_temperature(z, y)
    # the same fit by scikit-learn: a logistic regression on the logit, no intercept
    lr = LogisticRegression(fit_intercept=False, C=1e12, tol=1e-12, max_iter=10_000)
    lr.fit(z[:, None], y)
    assert 1.0 / t == pytest.approx(lr.coef_[0, 0], rel=1e-4)
    assert t == pytest.approx(true_t, rel=0.08)  # recovers the temperature that made y


def test_temperature_refuses_what_it_cannot_fit() -> None:
    z, y = synthetic(2)
    with pytest.raises(DataError, match="do not rank ALL above HEM"):
        fit_temperature(-z, y)
    with pytest.raises(DataError, match="perfectly separated"):
        fit_temperature(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1]))
    with pytest.raises(DataError, match="each class"):
        fit_temperature(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]))


# -- the threshold ------------------------------------------------------------------------

def assert_midway(z: np.ndarray, lt: float) -> None:
    """The threshold sits midway in the gap between two neighbouring logits, where
    rounding a logit cannot move it to the other side."""
    lo, hi = z[z < lt], z[z >= lt]
    if len(lo) and len(hi):
        assert lt == pytest.approx((lo.max() + hi.min()) / 2, abs=1e-9)


def _labels(spec: ModelSpec, z: np.ndarray) -> np.ndarray:
    return (z >= spec.logit_threshold).astype(np.int64)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_sensitivity_rule_is_the_largest_threshold_that_reaches_it(seed: int,
                                                                    target: float) -> None:
    z, y = synthetic(seed, ties=seed % 2 == 1)
    temp = 1.7
    thr = choose_threshold(SPEC, z, y, temp, Rule("sensitivity", target))
    spec = SPEC.with_updates(temperature=temp, threshold=thr)
    m = metrics(y.tolist(), _labels(spec, z).tolist())
    assert m.sensitivity_all >= target
    # any larger threshold falls short: one above the lowest ALL cell still called ALL
    boundary = z[(y == 1) & (z >= spec.logit_threshold)].min()
    worse = (z > boundary).astype(np.int64)
    assert metrics(y.tolist(), worse.tolist()).sensitivity_all < target
    assert_midway(z, spec.logit_threshold)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("target", [0.5, 0.8, 0.99])
def test_specificity_rule_is_the_smallest_threshold_that_reaches_it(seed: int,
                                                                     target: float) -> None:
    z, y = synthetic(seed, ties=seed % 2 == 0)
    thr = choose_threshold(SPEC, z, y, 0.8, Rule("specificity", target))
    spec = SPEC.with_updates(temperature=0.8, threshold=thr)
    assert metrics(y.tolist(), _labels(spec, z).tolist()).specificity_all >= target
    boundary = z[(y == 0) & (z < spec.logit_threshold)].max()  # one lower: one HEM too many
    worse = (z >= boundary).astype(np.int64)
    assert metrics(y.tolist(), worse.tolist()).specificity_all < target
    assert_midway(z, spec.logit_threshold)


@pytest.mark.parametrize("seed", range(6))
def test_f1_rule_finds_the_best_weighted_f1(seed: int) -> None:
    z, y = synthetic(seed, n=150, ties=seed % 2 == 0)
    thr = choose_threshold(SPEC, z, y, 1.3, Rule())
    spec = SPEC.with_updates(temperature=1.3, threshold=thr)
    got = metrics(y.tolist(), _labels(spec, z).tolist()).weighted_f1
    best = max(metrics(y.tolist(), (z >= c).astype(int).tolist()).weighted_f1
               for c in [*np.unique(z), math.inf])
    assert got == pytest.approx(best, abs=1e-12)


def test_rules_refuse_bad_targets() -> None:
    from leukoedge.errors import UsageError

    with pytest.raises(UsageError):
        Rule("sensitivity", 0.0)
    with pytest.raises(UsageError):
        Rule("recall", 0.5)


# -- the spec -------------------------------------------------------------------------------

def test_temperature_and_threshold_round_trip_through_the_spec(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    z, y = synthetic(3)
    cal = calibrate(SPEC, z, y, ["UID_1", "UID_H1"], Rule("sensitivity", 0.9))
    spec = calibrated_spec(load_model(tiny_model).spec, cal, "sha256:abc", "test cells")
    out = tmp_path / "cal.onnx"
    write_model(tiny_model, out, spec)
    back = load_model(out).spec
    assert back == spec
    assert back.temperature == cal.temperature != 1.0
    assert back.threshold == cal.threshold
    assert back.calibration["patients"] == ["UID_1", "UID_H1"]
    assert back.calibration["data_fingerprint"] == "sha256:abc"
    assert back.schema_version == 2
    assert ModelSpec.from_json(back.to_json()) == back
    # what the threshold was chosen for holds when read back from the file
    assert metrics(y.tolist(), _labels(back, z).tolist()).sensitivity_all >= 0.9


def test_an_older_spec_loads_with_temperature_1() -> None:
    v1 = ('{"architecture": "scratch", "input_size": 128, "schema_version": 1, '
          '"threshold": 0.5, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}')
    spec = ModelSpec.from_json(v1)
    assert spec.temperature == 1.0 and spec.calibration == {}
    z = np.array([-3.0, 0.0, 2.0])
    assert spec.probability(z) == pytest.approx(sigmoid(z))
    assert spec.logit_threshold == 0.0


# -- predictions files -------------------------------------------------------------------

def test_out_of_fold_file_reads_truth_from_label_and_filters_folds() -> None:
    ps = read_predictions(OOF, folds=["3", "4"])
    rows = list(csv.DictReader(open(OOF, newline="")))
    want = [r for r in rows if r["fold"] in ("3", "4")]
    assert len(ps.paths) == len(want) and ps.has_logits
    assert ps.truth == [1 if r["label"] == "all" else 0 for r in want]
    assert ps.logits == [float(r["logit"]) for r in want]
    assert set(ps.folds) == {"3", "4"}
    assert ps.truth_from == "column label"


def test_classify_rows_never_read_their_label_as_truth(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("path,patient,prob_all,label,error,logit,heatmap\n"
                    "a/hem/UID_H1_1_1_hem.bmp,UID_H1,0.9,all,,2.2,\n"
                    "a/all/UID_1_1_1_all.bmp,UID_1,0.2,hem,,-1.4,\n"
                    "a/x.bmp,,,,cannot read,,\n")
    ps = read_predictions(rows)
    assert ps.truth == [0, 1]  # from the folders, not from the predicted label
    assert len(ps.errors) == 1 and ps.files == 3
    labels = tmp_path / "truth.csv"
    labels.write_text("path,label\na/hem/UID_H1_1_1_hem.bmp,all\nUID_1_1_1_all.bmp,all\n")
    assert read_predictions(rows, labels).truth == [1, 1]


# -- the command ---------------------------------------------------------------------------

def test_calibrate_from_predictions_then_evaluate_and_warn(tiny_model: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "cal.onnx"
    r = invoke("calibrate", tiny_model, "--from-predictions", OOF, "--folds", "0,1,2",
               "--target-sensitivity", "0.95", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    fitted = json.loads(r.stdout)
    spec = load_model(out).spec
    ps = read_predictions(OOF, folds=["0", "1", "2"])
    assert spec.temperature == pytest.approx(fit_temperature(ps.logits, ps.truth), rel=1e-12)
    assert spec.calibration["patients"] == ps.labelled_patients()
    assert spec.calibration["data_fingerprint"] == ps.fingerprint()
    assert fitted["at_threshold"]["sensitivity_all"] >= 0.95
    # evaluated on other patients: no warning; on the calibration patients: a warning
    r = invoke("evaluate", "--from-predictions", OOF, "--folds", "3,4", "--model", out,
               "--json", "--resamples", "50")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["warnings"] == [] and "warning" not in r.stderr
    assert rep["temperature"] == spec.temperature
    test = read_predictions(OOF, folds=["3", "4"])
    z, y = np.asarray(test.logits), np.asarray(test.truth)
    assert rep["metrics"]["sensitivity_all"] == pytest.approx(
        ((z >= spec.logit_threshold) & (y == 1)).sum() / (y == 1).sum())
    assert rep["calibration"]["uncalibrated"]["ece"] == pytest.approx(
        calibration_metrics(y, sigmoid(z)).ece)
    r = invoke("evaluate", "--from-predictions", OOF, "--folds", "1", "--model", out,
               "--json", "--resamples", "0")
    assert r.exit_code == 0
    assert "calibrated on" in json.loads(r.stdout)["warnings"][0]
    assert "warning:" in r.stderr


def test_calibrate_on_images_writes_a_model_classify_uses(tiny_model: Path, real_cells: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "cal.onnx"
    r = invoke("calibrate", tiny_model, real_cells, "--out", out, "--target-specificity",
               "0.8")
    assert r.exit_code == 0, r.output
    spec = load_model(out).spec
    assert spec.calibration["target"] == "specificity >= 0.8"
    assert set(spec.calibration["patients"]) == {"UID_1", "UID_13", "UID_78", "UID_H6",
                                                 "UID_H13", "UID_H3"}
    rows = tmp_path / "rows.csv"
    assert invoke("classify", real_cells, "--model", out, "--out", rows).exit_code == 0
    got = list(csv.DictReader(open(rows, newline="")))
    z = np.array([float(g["logit"]) for g in got])
    assert [float(g["prob_all"]) for g in got] == pytest.approx(
        sigmoid(z / spec.temperature), abs=1e-6)
    assert [g["label"] for g in got] == ["all" if v >= spec.logit_threshold else "hem"
                                         for v in z]
    r = invoke("evaluate", real_cells, "--model", out, "--json", "--resamples", "100")
    rep = json.loads(r.stdout)
    assert rep["temperature"] == spec.temperature
    assert rep["intervals"]["resamples"] == 100 and rep["intervals"]["seed"] == 0
    assert rep["intervals"]["patients_all"] == 3 and rep["intervals"]["patients_hem"] == 3
    assert "calibrated on" in rep["warnings"][0]  # the same patients as the calibration


def test_calibrate_usage_errors(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.onnx"
    r = invoke("calibrate", tiny_model, "--from-predictions", OOF, "--out", out,
               "--target-sensitivity", "0.9", "--target-specificity", "0.9")
    assert r.exit_code == 2 and "contradict" in r.stderr
    r = invoke("calibrate", tiny_model, "--out", out)
    assert r.exit_code == 2 and "--from-predictions" in r.stderr
    no_logit = tmp_path / "rows.csv"
    no_logit.write_text("path,patient,prob_all,label,error\nall/UID_1_1_1_all.bmp,UID_1,0.9,"
                        "all,\nhem/UID_H1_1_1_hem.bmp,UID_H1,0.1,hem,\n")
    r = invoke("calibrate", tiny_model, "--from-predictions", no_logit, "--out", out)
    assert r.exit_code == 3 and "logit" in r.stderr and "Traceback" not in r.output
    assert not out.exists()


def test_calibrating_on_training_patients_warns(tiny_model: Path, tmp_path: Path) -> None:
    trained = tmp_path / "trained.onnx"
    spec = load_model(tiny_model).spec.with_updates(training={"patients": ["UID_1", "UID_51"]})
    write_model(tiny_model, trained, spec)
    r = invoke("calibrate", trained, "--from-predictions", OOF, "--folds", "0", "--out",
               tmp_path / "c.onnx")
    assert r.exit_code == 0, r.output
    assert "trained on" in r.stderr


# -- evaluate's new figures ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_calibration_metrics_match_their_definitions(seed: int) -> None:
    z, y = synthetic(seed, n=500)
    p = sigmoid(z / 1.5)
    m = calibration_metrics(y, p, z / 1.5)
    assert m.brier == pytest.approx(brier_score_loss(y, p))
    assert m.log_loss == pytest.approx(log_loss(y, p))
    idx = np.minimum((p * 15).astype(int), 14)
    ece = sum(abs(y[idx == b].mean() - p[idx == b].mean()) * (idx == b).sum()
              for b in range(15) if (idx == b).any()) / len(y)
    assert m.ece == pytest.approx(ece)
    assert sum(m.reliability.count) == len(y)


def test_weighted_auc_equals_auc_of_the_repeated_cells() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    y[:2] = [0, 1]
    s = rng.integers(0, 12, 60).astype(float)  # ties
    w = rng.integers(0, 4, (5, 60)).astype(float)
    w[:, :2] = 1
    got = _weighted_auc(w, y, s)
    for b in range(5):
        reps = w[b].astype(int)
        assert got[b] == pytest.approx(roc_auc(np.repeat(y, reps), np.repeat(s, reps)))


def test_bootstrap_resamples_patients_within_each_class() -> None:
    # one ALL and one HEM patient: every stratified resample is the original set, so the
    # interval collapses on the estimate (an unstratified bootstrap would draw one class)
    y = [1, 1, 1, 0, 0, 0]
    pred = [1, 0, 1, 0, 1, 0]
    s = [0.9, 0.4, 0.8, 0.2, 0.7, 0.1]
    pats = ["UID_1"] * 3 + ["UID_H1"] * 3
    iv = bootstrap_intervals(y, pred, s, pats, resamples=200, seed=1)
    for k in ("weighted_f1", "sensitivity_all", "specificity_all", "roc_auc"):
        one = iv.of(k)
        assert one is not None
        assert one.low == pytest.approx(one.estimate)
        assert one.high == pytest.approx(one.estimate)
    assert iv.patients_all == 1 and iv.patients_hem == 1


def test_bootstrap_is_seeded_and_patient_level() -> None:
    ps = read_predictions(OOF, folds=["3", "4"])
    pred = (np.asarray(ps.logits) >= 0).astype(int).tolist()
    y = [int(t) for t in ps.truth if t is not None]
    a = bootstrap_intervals(y, pred, ps.logits, ps.patients, 300, seed=0)
    assert a == bootstrap_intervals(y, pred, ps.logits, ps.patients, 300, seed=0)
    assert a != bootstrap_intervals(y, pred, ps.logits, ps.patients, 300, seed=1)
    cells = bootstrap_intervals(y, pred, ps.logits, [None] * len(y), 300, seed=0)
    # 15 patients hold 1,890 cells: patients vary far more than cells do
    assert a.sensitivity_all is not None and cells.sensitivity_all is not None
    assert a.sensitivity_all.width > 2 * cells.sensitivity_all.width
    assert a.patients_all + a.patients_hem == len(set(ps.patients))



def test_classify_rows_calibrate_like_the_images(tiny_model: Path, real_cells: Path,
                                                 tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    assert invoke("classify", real_cells, "--model", tiny_model, "--out", rows).exit_code == 0
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert invoke("calibrate", tiny_model, real_cells, "--out", a).exit_code == 0
    r = invoke("calibrate", tiny_model, "--from-predictions", rows, "--out", b)
    assert r.exit_code == 0, r.output
    sa, sb = load_model(a).spec, load_model(b).spec
    assert sb.temperature == pytest.approx(sa.temperature, rel=1e-5)  # rows: 6 decimals
    assert sb.calibration["patients"] == sa.calibration["patients"]
    assert sb.calibration["cells"] == sa.calibration["cells"] == 43


def test_the_cells_to_calibrate_on_come_from_the_library() -> None:
    from leukoedge.calibrate import cells_from_predictions, training_patients_warning

    cells = cells_from_predictions(OOF, folds="3,4")
    ps = read_predictions(OOF, folds=["3", "4"])
    assert len(cells.logits) == len(cells.truth) == sum(t is not None for t in ps.truth)
    assert cells.source.endswith("folds 3,4") and cells.left_out == 0
    assert cells.patients == sorted({p for p in ps.patients if p})
    said = training_patients_warning(cells.patients, cells.patients[:1], True)
    assert said is not None and said.startswith("calibrating on 1 patients")
    assert training_patients_warning(cells.patients, [], False) is None
