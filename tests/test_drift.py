"""Drift scores: statistics through the spec, training vs recoloured real cells, rows and the
per-patient summary of classify and evaluate (runtime only: tiny ONNX models, no torch)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_models as om
import pytest
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from leukoedge import drift
from leukoedge.cli import assemble
from leukoedge.data import collect
from leukoedge.errors import SpecError
from leukoedge.preprocess import cell_colour, preprocess_for
from leukoedge.session import SessionConfig, load_model
from leukoedge.spec import MAX_SPEC_BYTES, ModelSpec

runner = CliRunner()
SIZE = 32


def invoke(*args: str | os.PathLike[str]) -> Result:
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def spec_with(stats: drift.DriftStats | None, size: int = SIZE) -> ModelSpec:
    ext = {} if stats is None else {drift.EXTENSION_KEY: stats.to_json()}
    return ModelSpec(architecture="test-mean", input_size=size,
                     outputs=("logit", "features"), extensions=ext)


def fitted_stats(seed: int = 0, n: int = 400, d: int = 24) -> tuple[drift.DriftStats,
                                                                    np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    colour = rng.normal(size=(n, 6)) @ rng.normal(size=(6, 6)) + 3.0
    feats = rng.normal(size=(n, d)) * np.linspace(5, 0.1, d)
    return drift.fit(colour, {"features": feats}, max_rank=8), colour, feats


@pytest.fixture(scope="module")
def drift_model(tmp_path_factory: pytest.TempPathFactory, shared_cells: Path) -> Path:
    """The features model with the drift statistics of the 43 real cells (its 'training
    cells'), fitted through the runtime as export does."""
    folder = tmp_path_factory.mktemp("drift")
    bare = om.save(om.mean_brightness_model(SIZE, features=True, spec=spec_with(None)),
                   folder / "bare.onnx")
    m = load_model(bare, SessionConfig(provider="cpu"))
    x = np.stack([preprocess_for(it.path, m.spec) for it in collect([shared_cells])])
    stats = drift.fit(cell_colour(x), {"features": m.run(x, ("features",))["features"]})
    return om.save(om.mean_brightness_model(SIZE, features=True, spec=spec_with(stats)),
                   folder / "drift.onnx")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- the statistics and the spec -----------------------------------------------------------

def test_statistics_round_trip_through_the_spec() -> None:
    stats, colour, feats = fitted_stats()
    spec = spec_with(stats)
    text = spec.to_json()
    assert len(text.encode()) < MAX_SPEC_BYTES and spec.schema_version == 2
    back = ModelSpec.from_json(text)
    assert back == spec
    again = drift.from_spec(back)
    assert again is not None and again.to_json() == stats.to_json()
    a = stats.score(colour[:50], {"features": feats[:50]})
    b = again.score(colour[:50], {"features": feats[:50]})
    assert np.array_equal(a, b) and a.shape == (50,)
    # compact: rounded to DIGITS significant digits, a low-rank covariance
    comp = json.loads(text)["extensions"][drift.EXTENSION_KEY]["components"][1]
    assert len(comp["components"]) == 8 and len(comp["mean"]) == 24 and comp["residual"] > 0
    assert all(len(f"{abs(v):.10g}".replace(".", "").lstrip("0")) <= drift.DIGITS + 1
               for v in comp["mean"])


def test_one_is_the_95th_percentile_of_the_training_scores() -> None:
    stats, colour, feats = fitted_stats(seed=1, n=2000)
    s = stats.score(colour, {"features": feats})
    assert np.quantile(s, 0.95) == pytest.approx(1.0, abs=2e-3)
    assert 0.04 < (s > 1.0).mean() < 0.06
    far = stats.score(colour[:5] + 50.0, {"features": feats[:5]})
    assert (far > 5).all()  # max-combined: a colour far off is enough


def test_a_spec_without_statistics_is_written_as_before() -> None:
    spec = ModelSpec(architecture="x", input_size=32)
    assert drift.from_spec(spec) is None and spec.schema_version == 1
    assert "extensions" not in json.loads(spec.to_json())


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format=2), "format 2"),
    (lambda d: d.update(combine="median"), "combine"),
    (lambda d: d["components"][1].update(variances=[1.0]), "features.variances"),
    (lambda d: d["components"][1].update(residual=0.0), "no residual variance"),
    (lambda d: d["components"][0].update(mean=[0.0] * 5, components=[], variances=[],
                                         residual=1.0), "colour has 5 values"),
    (lambda d: d["components"][1].update(name="embedding"), "output 'embedding'"),
    (lambda d: d["components"][1].update(scale=-1), "features.scale"),
    (lambda d: d.update(components=[]), "components must be a list"),
])
def test_malformed_statistics_are_refused(change: Callable[[dict[str, Any]], object],
                                         message: str) -> None:
    stats, _, _ = fitted_stats()
    raw = stats.to_json()
    change(raw)
    with pytest.raises(SpecError, match=message):
        ModelSpec(architecture="test-mean", input_size=SIZE, outputs=("logit", "features"),
                  extensions={drift.EXTENSION_KEY: raw})


def test_cell_colour_ignores_the_black_background() -> None:
    img = np.zeros((2, 16, 16, 3), np.uint8)
    img[0, 4:12, 4:12] = (200, 100, 150)
    got = cell_colour(img)
    od = -np.log((np.array([200, 100, 150]) + 1.0) / 256.0)
    assert np.allclose(got[0, :3], od) and np.allclose(got[0, 3:], 0.0)
    assert np.allclose(got[1, :3], np.log(256.0))  # no cell pixel: the whole image


# -- real cells through the runtime ----------------------------------------------------------

def test_training_cell_below_one_recoloured_cell_above(drift_model: Path, shared_cells: Path,
                                                       tmp_path: Path) -> None:
    m = load_model(drift_model, SessionConfig(provider="cpu"))
    items = collect([shared_cells])
    x = np.stack([preprocess_for(it.path, m.spec) for it in items])
    _, scores = m.predict(x)
    assert scores is not None and scores.shape == (len(items),)
    assert (scores <= 1.0).mean() >= 0.9  # 1.0 is their own 95th percentile
    typical = items[int(np.argsort(scores)[len(scores) // 2])].path
    rgb = np.asarray(Image.open(typical).convert("RGB"), dtype=np.float64)
    cell = rgb.sum(axis=2) > 30
    green = rgb.copy()
    green[cell] = np.clip(rgb[cell][:, [1, 0, 2]] * (0.35, 1.0, 0.35), 0, 255)  # green stain
    cells = tmp_path / "cells"
    cells.mkdir()
    Image.fromarray(rgb.astype(np.uint8)).save(cells / "UID_1_1_1_all.png")
    Image.fromarray(green.astype(np.uint8)).save(cells / "UID_2_1_1_all.png")
    out = tmp_path / "p.csv"
    r = invoke("classify", cells, "--model", drift_model, "--out", out)
    assert r.exit_code == 0, r.output
    rows = {row["patient"]: row for row in read_rows(out)}
    assert float(rows["UID_1"]["drift"]) < 1.0
    assert float(rows["UID_2"]["drift"]) > 1.0
    assert "drift per patient" in r.output
    # one cell each: under the patient rule's minimum, nobody is flagged (too few cells)
    assert "no patient drifted" in r.output and "2 with too few cells" in r.output
    r = invoke("classify", cells, "--model", drift_model, "--out", out, "--overwrite",
               "--min-cells", "1")
    assert r.exit_code == 0, r.output
    assert "1 of 2 patients do not look like the training cells" in r.output
    assert "UID_2" in r.output.split("do not look like")[1]


def test_rows_carry_drift_for_every_classified_cell(drift_model: Path, real_cells: Path,
                                                    tmp_path: Path) -> None:
    (real_cells / "broken.bmp").write_text("not an image")
    out = tmp_path / "p.csv"
    r = invoke("classify", real_cells, "--model", drift_model, "--out", out)
    assert r.exit_code == 1  # the broken file
    rows = read_rows(out)
    good = [row for row in rows if not row["error"]]
    assert len(good) == 43 and all(float(row["drift"]) >= 0 for row in good)
    assert len({row["drift"] for row in good}) > 10
    assert [row["drift"] for row in rows if row["error"]] == [""]
    for pid in {row["patient"] for row in good}:
        assert pid in r.output  # one line per patient in the drift table
    jl = tmp_path / "p.jsonl"
    invoke("classify", real_cells, "--model", drift_model, "--out", jl)
    objs = [json.loads(line) for line in jl.read_text().splitlines()]
    assert all(isinstance(o["drift"], float) for o in objs if o["error"] is None)


def test_a_model_without_statistics_leaves_drift_empty(tiny_model: Path, real_cells: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out)
    assert r.exit_code == 0 and "drift" not in r.output
    assert all(row["drift"] == "" for row in read_rows(out))


def test_resumed_classify_summarises_every_row(drift_model: Path, real_cells: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    invoke("classify", real_cells, "--model", drift_model, "--out", out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:11]))  # an interrupted run: 10 rows
    r = invoke("classify", real_cells, "--model", drift_model, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    rows = read_rows(out)
    assert len(rows) == 43 and all(row["drift"] for row in rows)
    drift_table = r.output.split("drift per patient")[1].split("per patient (share")[0]
    cells_in_table = sum(int(line.split("│")[2]) for line in drift_table.splitlines()
                         if line.count("│") >= 6 and line.split("│")[1].strip()
                         .startswith("UID_"))
    assert cells_in_table == 43


def test_evaluate_reports_drift_per_patient(drift_model: Path, real_cells: Path,
                                            tmp_path: Path) -> None:
    rep = tmp_path / "r.json"
    r = invoke("evaluate", real_cells, "--model", drift_model, "--report", rep)
    assert r.exit_code == 0, r.output
    assert "drift per patient" in r.output
    d = json.loads(rep.read_text())["drift"]
    assert sum(p["cells"] for p in d["patients"]) == 43
    assert all(0.0 <= p["share_above"] <= 1.0 and p["median"] > 0 for p in d["patients"])
    assert d["flagged"] == [p["patient"] for p in d["patients"] if p["median"] > d["flag"]]


def test_statistics_that_do_not_fit_the_graph_are_refused(real_cells: Path,
                                                          tmp_path: Path) -> None:
    stats, _, _ = fitted_stats(d=5)  # the graph's features are 3 wide
    bad = om.save(om.mean_brightness_model(SIZE, features=True, spec=spec_with(stats)),
                  tmp_path / "bad.onnx")
    r = invoke("classify", real_cells, "--model", bad, "--out", tmp_path / "o.csv")
    assert r.exit_code == 3
    assert "has 3 values per image; its drift statistics describe 5" in r.output


def test_the_service_answers_the_same_drift_as_classify(drift_model: Path, real_cells: Path,
                                                        tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from leukoedge.serve.app import Settings, create_app
    from leukoedge.serve.security import allowed_hosts

    out = tmp_path / "p.jsonl"
    assert invoke("classify", real_cells, "--model", drift_model, "--out", out).exit_code == 0
    ref = {Path(d["path"]).name: d["drift"]
           for d in map(json.loads, out.read_text().splitlines())}
    cells = sorted(real_cells.rglob("*.bmp"))[:6]
    app = create_app(load_model(drift_model),
                     Settings(hosts=allowed_hosts("127.0.0.1", 8000)))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        r = client.post("/v1/classify", files=[("image", (p.name, p.read_bytes(), "image/bmp"))
                                               for p in cells])
    assert r.status_code == 200, r.text
    got = {x["name"]: x["drift"] for x in r.json()["results"]}
    assert got.keys() == {p.name for p in cells}
    for name, score in got.items():
        assert score == pytest.approx(ref[name], abs=1e-4)  # the CSV keeps 4 decimals


def test_info_describes_the_statistics_in_one_row(drift_model: Path) -> None:
    r = invoke("info", drift_model)
    assert r.exit_code == 0, r.output
    assert "drift statistics" in r.output
    assert '"variances"' not in r.output  # the numbers themselves are not dumped
    raw = load_model(drift_model).spec.extensions[drift.EXTENSION_KEY]
    assert drift.describe(raw) == (
        "colour statistics (6 values, 6 directions) and output 'features' (3 values, "
        "3 directions) of 43 training cells, combined by max; patients flagged above a "
        "median of 1")


def test_the_patient_flag_is_the_90th_percentile_of_training_patients_medians() -> None:
    rng = np.random.default_rng(3)
    offsets = np.repeat(np.linspace(0, 2, 20), 30)  # 20 patients, 30 cells, drifting apart
    colour = rng.normal(size=(600, 6)) * 0.3 + offsets[:, None]
    patients = [f"UID_{i // 30}" for i in range(600)]
    stats = drift.fit(colour, {}, patients=patients)
    s = stats.score(colour, {})
    meds = [np.median(s[i * 30:(i + 1) * 30]) for i in range(20)]
    assert stats.patient_flag == pytest.approx(np.quantile(meds, 0.9), rel=1e-3)
    assert sum(m > stats.patient_flag for m in meds) == 2  # the two most drifted of 20
    few = drift.fit(colour[:120], {}, patients=patients[:120])  # 4 patients: too few
    assert few.patient_flag == drift.DEFAULT_PATIENT_FLAG
