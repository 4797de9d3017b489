"""The prediction-row format and ModelSpec v2 end to end, and what the previous release
wrote: result files without ``logit`` resume, and v2 fields reach classify and evaluate."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import onnx_models as om
import pytest
from click.testing import Result
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.output import COLUMNS, V1_COLUMNS
from leukoedge.spec import ModelSpec

runner = CliRunner()


def invoke(*args: str | os.PathLike[str]) -> Result:
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_the_row_format(real_cells: Path, tiny_model: Path, tmp_path: Path) -> None:
    assert COLUMNS == ("path", "patient", "prob_all", "label", "error", "logit", "heatmap",
                       "drift")
    (real_cells / "x.bmp").write_text("not an image")
    out = tmp_path / "p.csv"
    assert invoke("classify", real_cells, "--model", tiny_model, "--out", out).exit_code == 1
    header, rows = read_csv(out)
    assert header == list(COLUMNS) and len(rows) == 44
    good = [r for r in rows if not r["error"]]
    assert len(good) == 43
    for r in good:
        assert float(r["prob_all"]) == pytest.approx(sigmoid(float(r["logit"])), abs=2e-6)
        assert r["heatmap"] == ""
    assert len({r["logit"] for r in good}) > 10  # real values, not a constant
    bad = next(r for r in rows if r["error"])
    assert bad["logit"] == bad["prob_all"] == bad["heatmap"] == ""

    out = tmp_path / "p.jsonl"
    invoke("classify", real_cells, "--model", tiny_model, "--out", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(list(d) == list(COLUMNS) for d in lines)
    ok = [d for d in lines if d["error"] is None]
    assert all(isinstance(d["logit"], float) and d["heatmap"] is None for d in ok)
    assert all(d["prob_all"] == pytest.approx(sigmoid(d["logit"]), rel=1e-9) for d in ok)


def test_temperature_reaches_classify_and_evaluate(real_cells: Path, tmp_path: Path) -> None:
    """One model, two temperatures: the same logits, probabilities sigmoid(logit / T),
    labels from the calibrated probability, and the report built from the same values."""
    plain = om.save(om.mean_brightness_model(32, centre=10.0, scale=1.0),
                    tmp_path / "t1.onnx")
    spec = ModelSpec(architecture="test-mean", input_size=32, temperature=4.0, threshold=0.6,
                     calibration={"method": "test", "patients": ["UID_1"]})
    hot = om.save(om.mean_brightness_model(32, centre=10.0, scale=1.0, spec=spec),
                  tmp_path / "t4.onnx")
    for model, name in ((plain, "t1"), (hot, "t4")):
        r = invoke("evaluate", real_cells, "--model", model, "--report",
                   tmp_path / f"{name}.json", "--predictions", tmp_path / f"{name}.csv")
        assert r.exit_code == 0, r.output
    _, r1 = read_csv(tmp_path / "t1.csv")
    _, r4 = read_csv(tmp_path / "t4.csv")
    assert [r["logit"] for r in r1] == [r["logit"] for r in r4]
    for a, b in zip(r1, r4):
        logit = float(b["logit"])
        assert float(a["prob_all"]) == pytest.approx(sigmoid(logit), abs=2e-6)
        assert float(b["prob_all"]) == pytest.approx(sigmoid(logit / 4.0), abs=2e-6)
        assert b["label"] == ("all" if sigmoid(logit / 4.0) >= 0.6 else "hem")
    assert {r["label"] for r in r4} == {"all", "hem"}  # the threshold falls inside the data
    assert [r["label"] for r in r1] != [r["label"] for r in r4]
    rep = json.loads((tmp_path / "t4.json").read_text())
    for p in rep["patients"]:
        mine = [float(r["prob_all"]) for r in r4 if r["patient"] == p["patient"]]
        assert p["mean_prob_all"] == pytest.approx(sum(mine) / len(mine), abs=1e-5)
    r = invoke("info", hot)
    assert r.exit_code == 0 and "spec.temperature" in r.output and "4.0" in r.output


def test_a_model_with_a_heatmap_output_classifies(real_cells: Path, tmp_path: Path) -> None:
    spec = ModelSpec(architecture="test-mean", input_size=32, outputs=("logit", "cam"))
    model = om.save(om.mean_brightness_model(32, spec=spec, cam=True), tmp_path / "cam.onnx")
    out = tmp_path / "p.csv"
    r = invoke("classify", real_cells, "--model", model, "--out", out)
    assert r.exit_code == 0, r.output
    _, rows = read_csv(out)
    assert len(rows) == 43 and all(r["logit"] and r["label"] for r in rows)
    # a spec that names an output the graph lacks is refused
    lacking = om.save(om.mean_brightness_model(32, spec=spec), tmp_path / "lacking.onnx")
    r = invoke("classify", real_cells, "--model", lacking, "--out", tmp_path / "q.csv")
    assert r.exit_code == 3 and "1 output(s); its spec names 2 (logit, cam)" in r.output


def _previous_release_csv(rows: list[dict[str, str]]) -> str:
    """A result file as the previous release wrote it: five columns, prob as %.6f."""
    lines = [",".join(V1_COLUMNS)]
    for r in rows:
        lines.append(",".join(r[c] for c in V1_COLUMNS))
    return "\n".join(lines) + "\n"


def test_resume_a_csv_of_the_previous_release(real_cells: Path, tiny_model: Path,
                                              tmp_path: Path) -> None:
    full = tmp_path / "full.csv"
    invoke("classify", real_cells, "--model", tiny_model, "--out", full)
    _, rows = read_csv(full)
    old = tmp_path / "old.csv"
    text = _previous_release_csv(rows[:10])
    old.write_text(text + ",".join(rows[10][c] for c in V1_COLUMNS)[:20])  # torn line
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", old, "--resume")
    assert r.exit_code == 0, r.output
    assert "10 rows already there" in r.output
    assert old.read_text().startswith(text)  # the old rows are untouched
    header, after = read_csv(old)
    assert header == list(V1_COLUMNS)  # the file keeps its own columns
    assert all(None not in r and len(r) == 5 for r in after)  # no row is wider
    assert sorted(r["path"] for r in after) == sorted(r["path"] for r in rows)
    by_path = {r["path"]: r for r in rows}
    assert all(r["prob_all"] == by_path[r["path"]]["prob_all"] for r in after)


def test_resume_jsonl_of_the_previous_release(real_cells: Path, tiny_model: Path,
                                              tmp_path: Path) -> None:
    full = tmp_path / "full.csv"
    invoke("classify", real_cells, "--model", tiny_model, "--out", full)
    _, rows = read_csv(full)
    old = tmp_path / "old.jsonl"
    lines = [json.dumps({"path": r["path"], "patient": r["patient"],
                         "prob_all": float(r["prob_all"]), "label": r["label"],
                         "error": None}, ensure_ascii=False) for r in rows[:12]]
    old.write_text("\n".join(lines) + "\n")
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", old, "--resume")
    assert r.exit_code == 0, r.output
    got = [json.loads(x) for x in old.read_text().splitlines()]
    assert [json.dumps(d, ensure_ascii=False) for d in got[:12]] == lines
    assert sorted(d["path"] for d in got) == sorted(r["path"] for r in rows)
    assert all("logit" in d and isinstance(d["logit"], float) for d in got[12:])
    assert len(got) == 43


def test_resume_refuses_a_csv_with_columns_leukoedge_never_writes(tmp_path: Path,
                                                                  real_cells: Path,
                                                                  tiny_model: Path) -> None:
    out = tmp_path / "p.csv"
    out.write_text("path,patient,prob_all,label,error,colour\n/x/1.bmp,,0.5,all,,red\n")
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out, "--resume")
    assert r.exit_code == 3 and "not a leukoedge result file" in r.output
    assert "Traceback" not in r.output
