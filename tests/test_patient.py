"""The patient's view (leukoedge/patient.py): the Wilson interval, the rule, and the one
summary that classify --patients-out, evaluate, report and serve all show; the sidecar
that tells report and evaluate which model made a predictions file."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.errors import SpecError
from leukoedge.models import default_model
from leukoedge.patient import (
    COLUMNS,
    DEFAULT_RULE,
    PatientRule,
    PatientView,
    decide,
    parse,
    summarize,
    wilson,
)


def run(*args: str) -> Any:
    return CliRunner().invoke(assemble(), list(args))


def test_wilson_known_values() -> None:
    # Wilson 95% for 1/1, 0/1, 5/10 (textbook values)
    assert wilson(1, 1) == pytest.approx((0.2065, 1.0), abs=1e-4)
    assert wilson(0, 1) == pytest.approx((0.0, 0.7935), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_rule_calls_and_reasons() -> None:
    r = PatientRule(min_cells=2, decide="interval", cut=0.7)
    assert decide(1, 1, r) == ("none", "too few cells (1 < 2)")
    assert decide(0, 0, r) == ("none", "no cell classified")
    assert decide(20, 20, r)[0] == "ALL"  # lower end 0.84 > 0.7
    assert decide(3, 3, r)[0] == "none"  # lower end 0.44
    assert decide(0, 3, r)[0] == "HEM"  # upper end 0.56 < 0.7
    assert decide(3, 3, PatientRule(min_cells=1, decide="share", cut=0.5))[0] == "ALL"
    drifting = PatientRule(min_cells=2, drift=True)
    assert decide(20, 20, drifting, drift=0.9, drift_flag=0.7)[0] == "none"
    assert decide(20, 20, drifting, drift=0.9, drift_flag=None)[0] == "ALL"


def test_rule_round_trip_and_refusals() -> None:
    r = PatientRule(min_cells=5, decide="share", cut=0.6, drift=True, fitted_on="x")
    assert parse(json.loads(json.dumps(r.to_json()))) == r
    for bad in ({"format": 2}, {"format": 1, "min_cells": 0}, {"format": 1, "cut": 1.5},
                {"format": 1, "decide": "vote"}, {"format": 1, "drift": "yes"}, []):
        with pytest.raises(SpecError):
            parse(bad)


def test_summary_counts_errors_and_unknown_patient() -> None:
    rows = summarize(["UID_2", "UID_2", "UID_10", None], [1, None, 0, 1],
                     [0.9, None, 0.2, 0.8], None, PatientView(DEFAULT_RULE))
    assert [r.patient for r in rows] == ["UID_2", "UID_10", "unknown"]  # natural order
    a = rows[0]
    assert (a.cells, a.errors, a.called_all, a.call) == (1, 1, 1, "none")
    assert a.reason.startswith("too few cells")
    assert list(a.to_json()) == list(COLUMNS)


# -- the commands, on the 43 real cells and the shipped model ---------------------------------

@pytest.fixture(scope="module")
def shipped() -> Path:
    m = default_model()
    assert m is not None
    return m


@pytest.fixture(scope="module")
def classified(shared_cells: Path, shipped: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("patients")
    out, pout = d / "p.csv", d / "P.csv"
    r = run("classify", str(shared_cells), "--model", str(shipped), "--out", str(out),
            "--patients-out", str(pout))
    assert r.exit_code == 0, r.output
    return out, pout


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(path.read_text()))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def test_patients_out_has_every_patient_and_a_one_cell_patient_gets_no_call(
        classified: tuple[Path, Path]) -> None:
    out, pout = classified
    cols, rows = read_csv(pout)
    assert cols == list(COLUMNS)
    _, cells = read_csv(out)
    assert {r["patient"] for r in rows} == {c["patient"] for c in cells}
    for r in rows:
        n = sum(1 for c in cells if c["patient"] == r["patient"] and not c["error"])
        assert int(r["cells"]) == n
        assert int(r["called_all"]) == sum(1 for c in cells if c["patient"] == r["patient"]
                                           and c["label"] == "all")
        assert r["call"] in ("ALL", "HEM", "none")
        assert (r["call"] == "none") == bool(r["reason"])
    ones = [r for r in rows if r["cells"] == "1"]
    assert ones, "the 43 cells include a patient with one cell"
    assert all(r["call"] == "none" and r["reason"] for r in ones)
    meta = json.loads((out.parent / "p.csv.meta.json").read_text())
    assert meta["drift_flag"] == pytest.approx(0.72951) and len(meta["model_sha256"]) == 64


def _same(calls: list[dict[str, Any]], ref: list[dict[str, str]]) -> None:
    assert [c["patient"] for c in calls] == [r["patient"] for r in ref]
    for c, r in zip(calls, ref):
        for k in ("cells", "errors", "called_all"):
            assert int(c[k]) == int(r[k]), (k, c, r)
        for k in ("share_all", "share_all_low", "share_all_high", "mean_prob_all", "drift"):
            if r[k] == "":
                assert c[k] is None, (k, c)
            else:
                assert float(c[k]) == pytest.approx(float(r[k]), abs=6e-5), (k, c, r)
        assert c["call"] == r["call"] and c["reason"] == r["reason"], (c, r)


def test_evaluate_report_and_serve_show_the_same_calls(
        classified: tuple[Path, Path], shipped: Path, tmp_path: Path) -> None:
    out, pout = classified
    _, ref = read_csv(pout)
    # evaluate --from-predictions without --model: the sidecar names the model
    rep_path = tmp_path / "rep.json"
    r = run("evaluate", "--from-predictions", str(out), "--report", str(rep_path),
            "--resamples", "0")
    assert r.exit_code == 0, r.output
    rep = json.loads(rep_path.read_text())
    _same(rep["patient_calls"], ref)
    assert rep["patient_rule"]["drift_flag"] == pytest.approx(0.72951)
    assert rep["drift"]["flag"] == pytest.approx(0.72951)
    # report: the same rows, read from the page's data-metric values
    html_path = tmp_path / "r.html"
    r = run("report", str(out), "--out", str(html_path), "--resamples", "0", "--cells", "0")
    assert r.exit_code == 0, r.output
    page = html_path.read_text()
    got: dict[int, dict[str, Any]] = {}
    for j, key, value in re.findall(
            r'data-metric="patient_calls\.(\d+)\.(\w+)" data-value="([^"]*)"', page):
        got.setdefault(int(j), {})[key] = None if value == "null" else value
    calls = re.findall(r'<tr data-patient="([^"]+)" data-call="([^"]+)"', page)
    for j, (pid, call) in enumerate(calls):
        got[j].update(patient=pid, call=call,
                      reason=next(r["reason"] for r in ref if r["patient"] == pid))
    _same([got[j] for j in range(len(calls))], ref)
    assert "drift.flag" in page  # flags with the model's threshold
    # serve: POST /v1/patients with classify's rows
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from leukoedge.serve.app import Settings, create_app
    from leukoedge.session import load_model

    _, cells = read_csv(out)
    app = create_app(load_model(shipped), Settings())
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        resp = c.post("/v1/patients", json={"rows": cells})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["columns"] == list(COLUMNS)
        _same(body["patients"], ref)
        assert c.post("/v1/patients", content=b"not json").status_code == 400
        assert c.post("/v1/patients", json={"rows": 3}).status_code == 400


def test_min_cells_overrides_the_rule(classified: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = classified
    rep_path = tmp_path / "rep.json"
    r = run("evaluate", "--from-predictions", str(out), "--report", str(rep_path),
            "--resamples", "0", "--min-cells", "1000")
    assert r.exit_code == 0, r.output
    rep = json.loads(rep_path.read_text())
    assert {c["call"] for c in rep["patient_calls"]} == {"none"}
    assert all(c["reason"].startswith("too few cells") for c in rep["patient_calls"])
    assert not rep["drift"]["flagged"]  # nobody under the minimum is flagged


def test_without_the_model_report_and_evaluate_cannot_flag(
        classified: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = classified
    old = tmp_path / "old.csv"
    shutil.copy(out, old)  # no .meta.json beside it: an older file
    rep_path = tmp_path / "rep.json"
    r = run("evaluate", "--from-predictions", str(old), "--report", str(rep_path),
            "--resamples", "0")
    assert r.exit_code == 0, r.output
    rep = json.loads(rep_path.read_text())
    assert rep["drift"]["flag"] is None and rep["drift"]["flagged"] == []
    assert "cannot" not in rep["drift"]["line"] or "unknown" in rep["drift"]["line"]
    assert "no patient flagged" in rep["drift"]["line"]
    html_path = tmp_path / "r.html"
    r = run("report", str(old), "--out", str(html_path), "--resamples", "0", "--cells", "0")
    assert r.exit_code == 0, r.output
    page = html_path.read_text()
    assert "no patient is flagged" in page and 'data-metric="drift.flag"' not in page


def test_old_file_resumes_without_a_sidecar(shared_cells: Path, shipped: Path,
                                            tmp_path: Path) -> None:
    cells = sorted(shared_cells.rglob("*.bmp"))
    out = tmp_path / "p.csv"
    r = run("classify", *map(str, cells[:5]), "--model", str(shipped), "--out", str(out))
    assert r.exit_code == 0, r.output
    (tmp_path / "p.csv.meta.json").unlink()  # as an older leukoedge left it
    pout = tmp_path / "P.jsonl"
    r = run("classify", *map(str, cells[:9]), "--model", str(shipped), "--out", str(out),
            "--resume", "--patients-out", str(pout))
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "p.csv.meta.json").exists()
    rows = [json.loads(line) for line in pout.read_text().splitlines()]
    assert sum(r["cells"] + r["errors"] for r in rows) == 9
    assert all(list(r) == list(COLUMNS) for r in rows)
    r = run("evaluate", "--from-predictions", str(out), "--resamples", "0")
    assert r.exit_code == 0, r.output


def test_resume_with_another_model_is_refused(classified: tuple[Path, Path],
                                              tiny_model: Path, tmp_path: Path,
                                              shared_cells: Path) -> None:
    out, _ = classified
    copy = tmp_path / "p.csv"
    shutil.copy(out, copy)
    shutil.copy(out.parent / "p.csv.meta.json", tmp_path / "p.csv.meta.json")
    r = run("classify", str(shared_cells), "--model", str(tiny_model), "--out", str(copy),
            "--resume")
    assert r.exit_code != 0
    assert "was written by" in r.output and "Traceback" not in r.output


def test_calibrate_writes_the_rule_into_a_model(shipped: Path, tmp_path: Path) -> None:
    from leukoedge.patient import from_spec
    from leukoedge.session import load_model

    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"rule": PatientRule(min_cells=7, cut=0.6).to_json()}))
    out = tmp_path / "m.onnx"
    r = run("calibrate", str(shipped), "--patient-rule", str(rule), "--out", str(out))
    assert r.exit_code == 0, r.output
    spec = load_model(out).spec
    assert from_spec(spec) == PatientRule(min_cells=7, cut=0.6)
    assert spec.threshold == load_model(shipped).spec.threshold  # nothing else changed
    rule.write_text('{"format": 1, "cut": 3}')
    r = run("calibrate", str(shipped), "--patient-rule", str(rule), "--out",
            str(tmp_path / "n.onnx"))
    assert r.exit_code != 0 and "cut must be" in r.output and "Traceback" not in r.output
