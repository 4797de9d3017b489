"""The demo's pipeline, at a tiny size (the real demo is timed in docs/demo.md)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train


def test_demo_runs_every_step_and_keeps_everything(tmp_path: Path) -> None:
    from leukoedge.demo import DemoConfig, run_demo, unused_workdir

    said: list[str] = []
    cfg = DemoConfig(train_patients=6, test_patients=4, cells_per_patient=4, image_size=96,
                     input_size=32, epochs=1)
    res = run_demo(tmp_path / "demo", cfg, say=said.append)
    wd = res.workdir
    assert len(said) == 4
    for name in ("model.onnx", "heldout-predictions.csv", "heldout-report.json",
                 "run/best.pt", "run/history.csv"):
        assert (wd / name).is_file(), name
    with open(wd / "heldout-predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16 and all(r["label"] in ("all", "hem") for r in rows)
    rep = json.loads((wd / "heldout-report.json").read_text())
    assert rep["metrics"]["n"] == 16 and rep["errors"] == 0
    assert res.facts.parity_images == 12 and res.facts.parity_max_abs_diff < 1e-3
    assert set(res.steps) == {"synthesise", "train", "export + parity",
                              "classify + evaluate"}
    # an existing demo folder is never reused
    assert unused_workdir(tmp_path / "demo") == tmp_path / "demo-2"
