"""The model shipped in the package: present, small, with its provenance, used by default."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.models import DEFAULT_MODEL, default_model
from leukoedge.spec import ModelSpec

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def invoke(*args: str | os.PathLike[str]) -> Result:
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    from leukoedge.session import SessionConfig, load_model

    assert default_model() == DEFAULT_MODEL, "leukoedge/models/default.onnx is missing"
    return load_model(DEFAULT_MODEL, SessionConfig(provider="cpu")).spec


def test_shipped_model_files_fit_the_size_budget() -> None:
    total = sum(f.stat().st_size for f in DEFAULT_MODEL.parent.iterdir() if f.is_file())
    assert 0 < total <= 40 * 2**20


def test_spec_records_patients_recipe_and_the_cross_validated_figures(spec: ModelSpec) -> None:
    tr = spec.training
    assert len(tr["patients"]) == 39 and len(set(tr["patients"])) == 39
    name = tr["recipe"]["name"]
    # the figures in the model are the ones the committed report it names holds
    docs = json.loads((REPO / tr["cv"]["report"]).read_text())
    for k, v in tr["cv"]["pooled"].items():
        assert v == pytest.approx(docs["pooled"][k]), k
    assert tr["cv"]["pooled"]["cells"] == 4372
    assert "leukoedge cv final" in tr["command"] and f"--recipe {name}" in tr["command"]


def test_info_without_argument_describes_the_shipped_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    monkeypatch.chdir(tmp_path)  # no exported/ here
    r = invoke("info")
    assert r.exit_code == 0, r.output
    assert "using the shipped model" in r.output
    assert "training patients" in r.output and "39" in r.output
    assert "cross-validated" in r.output
    assert f"{spec.training['cv']['pooled']['weighted_f1']:.3f}" in r.output


def test_classify_without_model_uses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        real_cells: Path) -> None:
    monkeypatch.chdir(tmp_path)
    r = invoke("classify", real_cells, "--out", "p.csv")
    assert r.exit_code == 0, r.output
    assert sum("using the shipped model" in ln for ln in r.output.splitlines()) == 1
    import csv

    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(list(real_cells.rglob("*.bmp")))
    # the shipped model carries drift statistics: every classified cell has a score
    assert all(r["error"] == "" and float(r["drift"]) > 0 for r in rows)


def test_shipped_model_carries_drift_statistics_and_a_map(spec: ModelSpec) -> None:
    assert "leukoedge.drift" in spec.extensions
    assert spec.outputs[0] == "logit" and {"features", "cam"} <= set(spec.outputs)


def test_demo_part_one_marks_training_patients_and_shows_out_of_fold_calls(
        tmp_path: Path, spec: ModelSpec) -> None:
    from leukoedge.data import patient_of
    from leukoedge.demo import shipped_demo

    res = shipped_demo(tmp_path, DEFAULT_MODEL)
    assert len(res.cells) == 12 and res.predictions.is_file()
    seen = set(spec.training["patients"])
    for c in res.cells:
        assert c.error is None and c.call in ("all", "hem")
        assert c.training_patient == (patient_of(Path(c.name).name) in seen)
        assert c.oof_prob_all is not None and 0 <= c.oof_prob_all <= 1
    assert sum(c.training_patient for c in res.cells) == 12  # all 39 patients trained it
