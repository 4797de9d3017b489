"""Spreadsheet-safe CSV (issue 30): a text cell that starts with ``=``, ``+``, ``-``, ``@``,
tab or CR is a formula to a spreadsheet. classify's CSV writes such a first character as
``\\xNN`` in the text columns only (never in numbers), and reads it back exactly: cells
named ``=cmd.bmp``, ``-1.bmp`` and ``@x.bmp`` survive classify -> resume -> evaluate
with their paths intact. (The page's "Download CSV" is checked in Chromium in
tests/test_serve_heatmaps.py.)"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.output import (
    FORMULA_START,
    Row,
    csv_plain,
    csv_safe,
    unescape_path,
)

CRAFTED = ("=cmd.bmp", "-1.bmp", "@x.bmp")


def test_csv_safe_round_trip_and_numbers_untouched() -> None:
    for text in ("=1+1", "+a", "-1.bmp", "@SUM(A1)", "plain.bmp", "a=b", "", "\\\\x3d"):
        safe = csv_safe(text)
        assert not safe or safe[0] not in FORMULA_START
        assert csv_plain(safe) == text
    assert csv_safe("\tx") == "\\x09x" and csv_safe("\rx") == "\\x0dx"  # as paths have them
    assert unescape_path(csv_safe("=cmd.bmp")) == b"=cmd.bmp"
    cells = Row("-1.bmp", "=p", None, None, "@err", -2.5, "+h.png").cells()
    assert cells["path"] == "\\x2d1.bmp" and cells["patient"] == "\\x3dp"
    assert cells["error"] == "\\x40err" and cells["heatmap"] == "\\x2bh.png"
    assert cells["logit"] == "-2.500000"  # a number, never neutralised


def test_crafted_names_survive_classify_resume_evaluate(
        tmp_path: Path, shared_cells: Path, tiny_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = sorted(shared_cells.rglob("*.bmp"))
    work = tmp_path / "cells"
    work.mkdir()
    names = (*CRAFTED, "plain.bmp")
    labels = {}
    for i, name in enumerate(names):
        src = real[i * 10]
        shutil.copyfile(src, work / name)
        labels[name] = "all" if "all" in src.parts else "hem"
    (tmp_path / "labels.jsonl").write_text(
        "".join(json.dumps({"path": n, "label": v}) + "\n" for n, v in labels.items()))
    monkeypatch.chdir(work)
    app = assemble()
    run = CliRunner()
    out = tmp_path / "preds.csv"
    # two of the files first, then --resume with all four: the two done are skipped
    r = run.invoke(app, ["classify", "--model", str(tiny_model), "--out", str(out), "--",
                         "=cmd.bmp", "-1.bmp"])
    assert r.exit_code == 0, r.output
    r = run.invoke(app, ["classify", "--model", str(tiny_model), "--out", str(out),
                         "--resume", "--", *names])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["path"] for r in rows) == sorted(
        ["\\x3dcmd.bmp", "\\x2d1.bmp", "\\x40x.bmp", "plain.bmp"])  # each once
    for row in rows:  # no text cell opens as a formula
        for col in ("path", "patient", "error", "heatmap"):
            assert not row[col] or row[col][0] not in FORMULA_START, (col, row)
    r = run.invoke(app, ["evaluate", "--from-predictions", str(out), "--labels",
                         str(tmp_path / "labels.jsonl"), "--model", str(tiny_model),
                         "--resamples", "0", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    # every path matched its label (a path read back as \x3dcmd.bmp would be unlabelled)
    assert report["files"] == 4 and report["unlabelled"] == 0, report
    assert report["metrics"]["n"] == 4


def test_page_csv_opens_as_text(browser, tmp_path: Path, shared_cells: Path,  # type: ignore[no-untyped-def]
                                tiny_model: Path) -> None:
    """The page's "Download CSV": the crafted names' cells start with ``\\xNN``, as in
    classify's CSV, and a negative number stays a number."""
    pytest.importorskip("fastapi")
    from test_serve_live import Served
    from test_serve_page import open_page, upload

    real = sorted(shared_cells.rglob("*.bmp"))
    for i, name in enumerate(CRAFTED):
        shutil.copyfile(real[i], tmp_path / name)
    s = Served("--model", str(tiny_model))
    try:
        open_page(browser, s)
        upload(browser, [tmp_path / n for n in CRAFTED], 60)
        text = browser.driver.execute_script("return window.leukoedge.csv()")
    finally:
        assert s.stop() == 0, "".join(s.lines)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["path"] for r in rows) == sorted(["\\x3dcmd.bmp", "\\x2d1.bmp",
                                                      "\\x40x.bmp"]), text
    for row in rows:
        for col in ("path", "patient", "error", "heatmap"):
            assert not row[col] or row[col][0] not in FORMULA_START, (col, row)
        float(row["logit"])  # a number, never neutralised (a negative one stays "-...")
