from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

from leukoedge.evaluate import metrics, patient_vote_metrics, per_patient, roc_auc


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    prob = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1).round(2)  # ties on purpose
    pred = (prob >= 0.5).astype(int)
    m = metrics(y.tolist(), pred.tolist(), prob.tolist())
    assert m.weighted_f1 == pytest.approx(f1_score(y, pred, average="weighted",
                                                   zero_division=0))
    assert m.macro_f1 == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred))
    assert m.roc_auc == pytest.approx(roc_auc_score(y, prob))
    assert m.confusion.matrix == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m.sensitivity_all == pytest.approx(((pred == 1) & (y == 1)).sum() / (y == 1).sum())
    assert m.specificity_all == pytest.approx(((pred == 0) & (y == 0)).sum() / (y == 0).sum())


def test_auc_undefined_with_one_class() -> None:
    assert roc_auc(np.array([1, 1]), np.array([0.2, 0.3])) is None


def test_always_all_on_the_prelim_balance() -> None:
    """Answering ALL for everything: the 0.65 accuracy baseline of the brief."""
    y = [1] * 1219 + [0] * 648
    m = metrics(y, [1] * len(y))
    assert m.accuracy == pytest.approx(1219 / 1867)
    assert m.weighted_f1 == pytest.approx(f1_score(y, [1] * len(y), average="weighted"))
    assert m.specificity_all == 0.0


def test_patient_table_and_vote() -> None:
    patients = ["UID_1", "UID_1", "UID_1", "UID_H1", "UID_H1"]
    truth = [1, 1, 1, 0, 0]
    pred = [1, 1, 0, 1, 1]
    rows = per_patient(patients, truth, pred, [0.9, 0.8, 0.2, 0.7, 0.6])
    assert [(r.patient, r.cells, r.predicted_all, r.vote) for r in rows] == [
        ("UID_1", 3, 2, "all"), ("UID_H1", 2, 2, "all")]
    assert rows[0].accuracy == pytest.approx(2 / 3) and rows[1].accuracy == 0.0
    pv = patient_vote_metrics(rows)
    assert pv is not None and pv.patients == 2 and pv.accuracy == 0.5


def test_results_are_typed_and_write_the_json_they_always_wrote() -> None:
    """The result types: attributes for code, one to_json() for files (the key order and
    values of the former dicts); the plugin's m["name"] still reads a metric."""
    from dataclasses import FrozenInstanceError

    from leukoedge.drift import summary
    from leukoedge.evaluate import bootstrap_intervals, calibration_metrics, clean

    y, pred, prob = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0], [0.9, 0.4, 0.2, 0.7, 0.8, 0.1]
    m = metrics(y, pred, prob)
    assert list(m.to_json()) == ["n", "accuracy", "balanced_accuracy", "weighted_f1",
                                 "macro_f1", "sensitivity_all", "specificity_all", "roc_auc",
                                 "per_class", "confusion", "majority_rate"]
    assert m.to_json()["per_class"]["all"] == {"precision": pytest.approx(2 / 3),
                                               "recall": pytest.approx(2 / 3),
                                               "f1": pytest.approx(2 / 3), "support": 3}
    assert m.to_json()["confusion"] == {"labels": ["hem", "all"], "matrix": [[2, 1], [1, 2]],
                                        "rows": "true", "columns": "predicted"}
    assert m["weighted_f1"] == m.weighted_f1
    with pytest.raises(FrozenInstanceError):
        setattr(m, "accuracy", 1.0)
    cal = calibration_metrics(y, prob)
    assert list(cal.to_json()) == ["ece", "brier", "log_loss", "bins", "reliability"]
    iv = bootstrap_intervals(y, pred, prob, ["a", "a", "b", "b", "c", "d"], 50)
    assert list(iv.to_json())[:7] == ["method", "unit", "resamples", "seed", "level",
                                      "patients_all", "patients_hem"]
    assert clean(iv) == clean(iv.to_json())
    with pytest.raises(ValueError):
        iv.of("accuracy")
    d = summary(["a", "a", "b"], [0.5, 2.0, None], 1.0)
    assert d is not None and d.to_json()["patients"][0] == {
        "patient": "a", "cells": 2, "median": 1.25, "share_above": 0.5, "flagged": True,
        "note": ""}
