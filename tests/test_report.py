"""``leukoedge report``: the self-contained HTML page, checked as text and in a real
headless Chromium (the one browser fixture, tests/browser.py): it renders with no console
error and no request leaving the file, its pictures load, and every figure on it equals
``evaluate --json``'s."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.errors import MissingExtraError

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
OOF = REPO / "docs" / "cv" / "full" / "gap-oof.csv"
DOCS_SHOT = REPO / "docs" / "img" / "report.png"


def invoke(*args: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def at(report: dict[str, Any], path: str) -> Any:
    """The value at a data-metric path (``metrics.weighted_f1``, ``patients.3.cells``)."""
    v: Any = report
    for part in path.split("."):
        v = v[int(part)] if isinstance(v, list) else v[part]
    return v


def same(page_value: str, json_value: Any) -> bool:
    if page_value == "null":
        return json_value is None
    x = float(page_value)
    return json_value is not None and math.isclose(x, float(json_value), rel_tol=0,
                                                   abs_tol=1e-12)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A model calibrated on the out-of-fold predictions of folds 0-2 (target sensitivity
    0.95): the report of folds 3-4 then shows before/after calibration."""
    out = tmp_path_factory.mktemp("report") / "cal.onnx"
    r = invoke("calibrate", tiny_model, "--from-predictions", OOF, "--folds", "0,1,2",
               "--target-sensitivity", "0.95", "--out", out)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def real_report(calibrated: Path, shared_data: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The report of the real cells of folds 3-4, and evaluate's JSON of the same rows."""
    d = tmp_path_factory.mktemp("real-report")
    args = (OOF, "--folds", "3,4", "--model", calibrated, "--resamples", "300", "--seed", "7")
    page = d / "report.html"
    r = invoke("report", *args, "--images-root", shared_data, "--out", page, "--cells", "6")
    assert r.exit_code == 0, r.output
    r = invoke("evaluate", "--from-predictions", *args, "--json")
    assert r.exit_code == 0, r.output
    return page, json.loads(r.stdout)


def test_page_is_self_contained_and_its_figures_are_evaluate_s(
        real_report: tuple[Path, dict[str, Any]]) -> None:
    page, rep = real_report
    text = page.read_text()
    assert "default-src 'none'" in text  # the CSP: nothing but data: may load
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert len(re.findall(r"""src="data:image/""", text)) >= 3 + 4 * 6
    assert "<script" not in text
    found = re.findall(r'data-metric="([^"]+)" data-value="([^"]*)"', text)
    assert len(found) > 40
    for path, value in found:
        assert same(value, at(rep, path)), (path, value, at(rep, path))
    for needed in ("metrics.weighted_f1", "intervals.sensitivity_all.low",
                   "intervals.roc_auc.high", "calibration.ece", "calibration.brier",
                   "calibration.log_loss", "metrics.confusion.matrix.1.1",
                   "intervals.resamples", "intervals.seed"):
        assert needed in dict(found), needed
    for fig in ("fig-histogram", "fig-roc", "fig-reliability"):
        assert f'id="{fig}"' in text
    for montage in ("all", "hem", "uncertain", "misclassified"):
        assert f'id="montage-{montage}" data-count="6"' in text


def test_report_in_a_real_browser(browser: Any, real_report: tuple[Path, dict[str, Any]],
                                  tmp_path: Path) -> None:
    page, rep = real_report
    browser.open(page.as_uri())
    d = browser.driver
    assert d.title == "leukoedge report"
    assert browser.console_errors() == []
    assert browser.external_requests() == []
    # every picture decoded (a broken data: URI has naturalWidth 0)
    widths = d.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)")
    assert len(widths) >= 3 + 4 * 6 and min(widths) > 0, widths
    # what a person sees: the headline figures as rendered text, equal to evaluate's
    shown = d.execute_script(
        "return Array.from(document.querySelectorAll('[data-metric]'))"
        ".map(e => [e.dataset.metric, e.dataset.value, e.innerText])")
    assert len(shown) > 40
    for path, value, text in shown:
        want = at(rep, path)
        assert same(value, want), (path, value, want)
        if want is not None and isinstance(want, float):
            digits = len(text.split(".")[1]) if "." in text else 0
            assert float(text) == pytest.approx(want, abs=0.51 * 10 ** -digits), path
    heading = d.find_element("css selector", "#patients h2").text
    assert heading == "Per patient"
    rows = d.find_elements("css selector", "#patients tr[data-patient]")
    assert len(rows) == len(rep["patients"])
    shot = browser.screenshot(tmp_path / "report.png", 1280, 2900)
    assert shot.stat().st_size > 10_000
    if os.environ.get("LEUKOEDGE_UPDATE_DOCS_IMG") == "1":
        shutil.copyfile(shot, DOCS_SHOT)


def test_report_without_labels_shows_what_needs_none(tiny_model: Path, real_cells: Path,
                                                     tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in real_cells.rglob("*.bmp"):  # no all/ hem/ folders, no _all/_hem suffix
        shutil.copyfile(p, flat / p.name.replace("_all", "").replace("_hem", ""))
    rows = tmp_path / "rows.csv"
    assert invoke("classify", flat, "--model", tiny_model, "--out", rows).exit_code == 0
    page = tmp_path / "r.html"
    r = invoke("report", rows, "--model", tiny_model, "--out", page)
    assert r.exit_code == 0, r.output
    text = page.read_text()
    assert 'id="fig-histogram"' in text
    for absent in ('id="fig-roc"', 'id="fig-reliability"', 'id="confusion"',
                   'id="montage-misclassified"', "intervals."):
        assert absent not in text
    assert "No labels" in text
    assert 'id="montage-uncertain" data-count="12"' in text
    assert text.count("<tr data-patient=") == 6
    # with the labels the same rows get every figure
    page2 = tmp_path / "r2.html"
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(
        f"{p.name.replace('_all', '').replace('_hem', '')},"
        f"{'all' if '_all' in p.name else 'hem'}\n" for p in real_cells.rglob("*.bmp")))
    r = invoke("report", rows, "--model", tiny_model, "--labels", labels, "--out", page2,
               "--resamples", "50")
    assert r.exit_code == 0, r.output
    assert 'id="fig-roc"' in page2.read_text()


def test_report_refuses_to_overwrite_and_names_its_extra(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "r.html"
    page.write_text("mine")
    r = invoke("report", OOF, "--folds", "4", "--out", page)
    assert r.exit_code == 2 and page.read_text() == "mine"
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    from leukoedge.report import require_matplotlib

    with pytest.raises(MissingExtraError) as exc:
        require_matplotlib()
    assert "leukoedge[report]" in str(exc.value)
    r = invoke("report", OOF, "--folds", "4", "--out", tmp_path / "x.html")
    assert r.exit_code == 3 and "leukoedge[report]" in r.stderr
    assert not (tmp_path / "x.html").exists()


def test_thumbnails_blend_the_heatmap_the_rows_name(shared_cells: Path, tmp_path: Path) -> None:
    import numpy as np

    from leukoedge.report import thumbnail

    cell = next(shared_cells.rglob("*.bmp"))
    plain = thumbnail(cell)
    hm = tmp_path / "h.npy"
    np.save(hm, np.outer(np.arange(20.0), np.ones(20)))
    assert plain is not None and plain.startswith("data:image/jpeg;base64,")
    blended = thumbnail(cell, hm)
    assert blended is not None and blended != plain
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not numpy")
    assert thumbnail(cell, bad) == plain  # an unreadable heatmap: the cell alone
    assert thumbnail(tmp_path / "missing.bmp") is None


def test_report_shows_drift_per_patient_when_rows_carry_it(shared_cells: Path,
                                                           tmp_path: Path) -> None:
    """Rows of a model with drift statistics (the shipped one): the page has the drift
    section, and its figures are drift.summary's of the rows with the model's flag."""
    import csv

    from leukoedge.drift import from_spec, summary
    from leukoedge.models import DEFAULT_MODEL
    from leukoedge.session import SessionConfig, load_model

    pred = tmp_path / "p.csv"
    assert invoke("classify", shared_cells, "--model", DEFAULT_MODEL, "--out", pred
                  ).exit_code == 0
    page = tmp_path / "r.html"
    r = invoke("report", pred, "--model", DEFAULT_MODEL, "--out", page)
    assert r.exit_code == 0, r.output
    with open(pred, newline="") as fh:
        rows = list(csv.DictReader(fh))
    stats = from_spec(load_model(DEFAULT_MODEL, SessionConfig(provider="cpu")).spec)
    assert stats is not None
    want = summary([x["patient"] for x in rows], [float(x["drift"]) for x in rows],
                   stats.patient_flag)
    assert want is not None
    text = page.read_text()
    assert 'id="drift"' in text and want.line.split(":")[0] in text
    found = dict(re.findall(r'data-metric="(drift\.[^"]+)" data-value="([^"]*)"', text))
    assert len(found) == 1 + 3 * len(want.patients)
    for path, value in found.items():
        assert same(value, at({"drift": want.to_json()}, path)), (path, value)
