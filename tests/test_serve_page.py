"""The workstation page at ``/``, in a real headless Chromium against a real ``leukoedge
serve`` on a loopback port: the 43 real cells are uploaded through the page's file picker
(the code path a drop uses too), and the calls read from the rendered page equal
``leukoedge classify``'s; the per-patient view, filters, sorting and the CSV follow; no
console error and no request leaves the machine. A larger drop checks that the grid draws
one page, not every cell.

Screenshots go to a temporary folder, or to ``docs/img/`` with
``LEUKOEDGE_PAGE_SCREENSHOTS=1``; ``LEUKOEDGE_PAGE_MODEL`` serves another model than the
test one. The large drop has ``LEUKOEDGE_PAGE_DROP`` cells (240 by default, for CI);
docs/serve.md gives the time of a 2,000-cell drop measured with::

    LEUKOEDGE_PAGE_DROP=2000 .venv/bin/python -m pytest -q -s tests/test_serve_page.py -k large
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from browser import Browser  # noqa: E402
from test_serve_live import Served  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from leukoedge.cli import assemble  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = 120  # app.js: cells drawn at once


@pytest.fixture(scope="module")
def cells(shared_cells: Path) -> list[Path]:
    return sorted(shared_cells.rglob("*.bmp"))


@pytest.fixture(scope="module")
def page_model(model_dir: Path, cells: list[Path]) -> Path:
    """A 32-px mean-brightness model that splits the 43 cells at their median (both calls);
    ``LEUKOEDGE_PAGE_MODEL`` names another (the screenshots in docs use the shipped one)."""
    from onnx_models import mean_brightness_model, save

    if os.environ.get("LEUKOEDGE_PAGE_MODEL"):
        return Path(os.environ["LEUKOEDGE_PAGE_MODEL"])

    from leukoedge.preprocess import preprocess

    means = [float(preprocess(p, 32).mean()) for p in cells]
    return save(mean_brightness_model(32, centre=float(np.median(means)), scale=1.0),
                model_dir / "page.onnx")


@pytest.fixture(scope="module")
def reference(cells: list[Path], page_model: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, Any]]:
    """``leukoedge classify`` on the same files: its CSV columns and rows by file name."""
    out = tmp_path_factory.mktemp("page-ref") / "ref.csv"
    r = CliRunner().invoke(assemble(), ["classify", *map(str, cells), "--model",
                                        str(page_model), "--out", str(out)])
    assert r.exit_code == 0, r.output
    reader = csv.DictReader(io.StringIO(out.read_text()))
    rows = {Path(row["path"]).name: row for row in reader}
    assert reader.fieldnames is not None
    assert {row["label"] for row in rows.values()} == {"all", "hem"}
    return list(reader.fieldnames), rows


@pytest.fixture(scope="module")
def server(page_model: Path) -> Iterator[Served]:
    s = Served("--model", str(page_model))
    yield s
    assert s.stop() == 0, "".join(s.lines)


def shots_dir(tmp_path: Path) -> Path:
    return ROOT / "docs" / "img" if os.environ.get("LEUKOEDGE_PAGE_SCREENSHOTS") else tmp_path


def wait_for(browser: Browser, script: str, timeout: float, what: str) -> Any:
    """Poll a JavaScript expression until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.driver.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > deadline:
            stats = browser.driver.execute_script("return JSON.stringify(window.leukoedge)")
            raise AssertionError(f"timed out waiting for {what}: {stats}")
        time.sleep(0.1)


def open_page(browser: Browser, server: Served) -> None:
    browser.open(f"http://127.0.0.1:{server.port}/")
    browser.driver.set_window_size(1280, 900)
    wait_for(browser, "document.getElementById('model').textContent.includes('.onnx')", 30,
             "the model line")


def upload(browser: Browser, paths: list[Path], timeout: float) -> dict[str, Any]:
    """Pick the files with the page's file input; wait until the page says it is done."""
    from selenium.webdriver.common.by import By

    browser.driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
    wait_for(browser, "window.leukoedge.state === 'done'", timeout, "the page to finish")
    stats: dict[str, Any] = json.loads(browser.driver.execute_script(
        "return JSON.stringify(window.leukoedge)"))
    return stats


def rendered_cells(browser: Browser) -> list[dict[str, str]]:
    cells: list[dict[str, str]] = browser.driver.execute_script("""
        return [...document.querySelectorAll('#grid li.cell')].map((li) => ({
          path: li.dataset.path, name: li.dataset.name, label: li.dataset.label,
          prob: li.dataset.prob, patient: li.dataset.patient, text: li.innerText,
          src: li.querySelector('img').getAttribute('src') || ''}));""")
    return cells


def select(browser: Browser, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.driver.find_element(By.ID, element_id)).select_by_value(value)


def thumbnails_drawn(browser: Browser) -> None:
    wait_for(browser, "[...document.querySelectorAll('#grid img')].every("
                      "(i) => i.getAttribute('src') && i.complete)", 60, "the thumbnails")


def test_page_is_served_from_package_data_with_no_other_origin(tiny_model: Path) -> None:
    """``/`` and its two files come from the package; the policy allows only this server;
    with a token the page loads without it (it holds no data) and the API still asks."""
    from fastapi.testclient import TestClient

    from leukoedge.serve.app import Settings, create_app
    from leukoedge.serve.page import STATIC
    from leukoedge.session import load_model

    token = "page-token-of-some-length"
    app = create_app(load_model(tiny_model), Settings(hosts=None, token=token))
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        html = page.text
        assert 'src="/static/app.js"' in html and 'href="/static/app.css"' in html
        assert "http://" not in html and "https://" not in html  # nothing from elsewhere
        for name, media in STATIC.items():
            r = c.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"] == media, name
            assert "//cdn" not in r.text and "fonts.googleapis" not in r.text
        ok = {"authorization": f"Bearer {token}"}
        for other in ("/static/page.py", "/static/..%2Fapp.py", "/static/"):
            assert c.get(other).status_code == 401  # not the page's: the token rule holds
            assert c.get(other, headers=ok).status_code == 404, other
        assert c.get("/v1/model").status_code == 401  # the API still needs the token
        assert c.get("/v1/model", headers=ok).status_code == 200
        # every control of the page has a label

        ids = set(re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', html))
        labelled = set(re.findall(r'<label[^>]*\bfor="([^"]+)"', html))
        assert ids and ids <= labelled, ids - labelled


def test_page_calls_equal_classify(browser: Browser, server: Served, cells: list[Path],
                                   reference: tuple[list[str], dict[str, Any]],
                                   page_model: Path, tmp_path: Path) -> None:
    columns, ref = reference
    shots = shots_dir(tmp_path)
    open_page(browser, server)
    assert "No cells yet" in browser.driver.find_element("id", "status").text
    browser.screenshot(shots / "serve-page-empty.png")

    stats = upload(browser, cells, 180)
    assert stats["done"] == stats["total"] == len(cells) == 43
    assert stats["errors"] == 0

    # the calls as the page shows them: data attributes and the visible text
    shown = rendered_cells(browser)
    assert len(shown) == len(cells)
    assert sorted(c["name"] for c in shown) == sorted(ref)
    for c in shown:
        want = ref[c["name"]]
        assert c["label"] == want["label"], c
        assert abs(float(c["prob"]) - float(want["prob_all"])) <= 1e-6, (c, want)
        assert c["patient"] == want["patient"]
        assert c["text"].split()[0] == want["label"].upper(), c  # the call in words, too
    thumbnails_drawn(browser)
    browser.screenshot(shots / "serve-page-results.png", height=1300)

    # CSV: classify's columns, in its order; the same calls and numbers
    text: str = browser.driver.execute_script("return window.leukoedge.csv()")
    reader = csv.DictReader(io.StringIO(text))
    got = list(reader)
    assert reader.fieldnames == columns
    assert len(got) == len(cells)
    for row in got:
        want = ref[Path(row["path"]).name]
        for col in columns[1:]:  # every column but the path (the page has no full path)
            assert row[col] == want[col], (col, row, want)

    # filter by call, then sort by probability
    n_hem = sum(1 for r in ref.values() if r["label"] == "hem")
    select(browser, "f-call", "hem")
    hem = rendered_cells(browser)
    assert len(hem) == n_hem and {c["label"] for c in hem} == {"hem"}
    select(browser, "f-call", "")
    select(browser, "sort", "prob-desc")
    probs = [float(c["prob"]) for c in rendered_cells(browser)]
    assert probs == sorted(probs, reverse=True) and len(probs) == len(cells)

    # per-patient view: the server's summary (POST /v1/patients), the same calls and
    # numbers as classify --patients-out on the same cells, never a vote in JavaScript
    select(browser, "view", "patients")
    wait_for(browser, "document.querySelectorAll('#patients tbody tr[data-summary]').length > 0",
             60, "the patient summary from the server")
    table: list[dict[str, Any]] = browser.driver.execute_script("""
        return [...document.querySelectorAll('#patients tbody tr')].map((tr) => Object.assign(
          JSON.parse(tr.dataset.summary), {shown: tr.children[7].textContent}));""")
    pout = tmp_path / "patients.csv"
    r = CliRunner().invoke(assemble(), ["classify", *map(str, cells), "--model",
                                        str(page_model), "--out", str(tmp_path / "p.csv"),
                                        "--patients-out", str(pout)])
    assert r.exit_code == 0, r.output
    want = list(csv.DictReader(io.StringIO(pout.read_text())))
    assert [t["patient"] for t in table] == [w["patient"] for w in want]
    for t, w in zip(table, want):
        for k in ("cells", "errors", "called_all"):
            assert t[k] == int(w[k]), (k, t, w)
        for k in ("share_all", "share_all_low", "share_all_high", "mean_prob_all"):
            assert abs(t[k] - float(w[k])) <= 6e-5, (k, t, w)
        assert t["call"] == w["call"] and t["reason"] == w["reason"], (t, w)
        assert t["shown"] == w["call"], t
    assert any(t["call"] == "none" for t in table)
    expected: dict[str, list[str]] = {}
    for row in ref.values():
        expected.setdefault(row["patient"], []).append(row["label"])
    browser.screenshot(shots / "serve-page-patients.png")

    # a patient's "Show cells" button filters the grid to that patient
    first = table[0]["patient"]
    browser.driver.find_element(
        "css selector", f"#patients tr[data-patient='{first}'] button").click()
    only = rendered_cells(browser)
    assert len(only) == len(expected[first]) and {c["patient"] for c in only} == {first}

    assert browser.console_errors() == []
    assert browser.external_requests() == []


def test_drop_folder_picker_and_keyboard(
        browser: Browser, server: Served, cells: list[Path],
        reference: tuple[list[str], dict[str, Any]], tmp_path: Path) -> None:
    """Files dropped on the drop zone (a DragEvent carrying them) are classified as picked
    ones are; a drop outside the zone does not navigate away from the page; the folder
    picker sends the images under a folder with their paths; Tab reaches every control."""
    _, ref = reference
    open_page(browser, server)
    picked = cells[:2] + cells[-2:]
    payload = [{"name": p.name, "b64": base64.b64encode(p.read_bytes()).decode()}
               for p in picked]
    browser.driver.execute_script("""
        const dt = new DataTransfer();
        for (const f of arguments[0]) {
          const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
          dt.items.add(new File([bytes], f.name, {type: "image/bmp"}));
        }
        document.body.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                            cancelable: true}));
        document.getElementById("drop").dispatchEvent(
          new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));""",
                                  payload)
    wait_for(browser, "window.leukoedge.state === 'done'", 60, "the dropped cells")
    shown = {c["name"]: c for c in rendered_cells(browser)}
    assert sorted(shown) == sorted(p.name for p in picked)
    for name, c in shown.items():
        assert c["label"] == ref[name]["label"]
        assert abs(float(c["prob"]) - float(ref[name]["prob_all"])) <= 1e-6
    assert browser.driver.current_url.endswith(f":{server.port}/")

    # the folder picker: every image under the folder, by path; other files left out
    from selenium.webdriver.common.by import By

    folder = tmp_path / "smear"
    (folder / "sub").mkdir(parents=True)
    for p in picked:
        shutil.copyfile(p, folder / "sub" / p.name)
    (folder / "notes.txt").write_text("not a cell")
    browser.driver.find_element(By.ID, "folder").send_keys(str(folder))
    wait_for(browser, f"window.leukoedge.state === 'done' && window.leukoedge.done === "
                      f"{2 * len(picked)}", 60, "the folder's cells")
    paths = sorted(c["path"] for c in rendered_cells(browser))
    assert paths == sorted([p.name for p in picked] + [f"smear/sub/{p.name}" for p in picked])

    # keyboard: Tab reaches the drop zone, both pickers and every control, in page order
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.driver.execute_script("document.activeElement.blur()")
    seen: list[str] = []
    for _ in range(30):
        ActionChains(browser.driver).send_keys(Keys.TAB).perform()
        seen.append(browser.driver.execute_script("return document.activeElement.id"))
    order = ["drop", "files", "folder", "view", "f-call", "f-min", "f-max", "f-patient",
             "sort", "download", "clear"]
    assert [i for i in seen if i in order][:len(order)] == order, seen
    assert browser.console_errors() == []
    assert browser.external_requests() == []


PIXEL_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
             "2mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")

CONTRAST = """
    const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
    const lum = (c) => { const v = rgb(c).slice(0, 3).map((x) => { x /= 255;
      return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
      return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
    const bg = (el) => { for (; el; el = el.parentElement) {
      const c = getComputedStyle(el).backgroundColor;
      if (rgb(c).length < 4 || rgb(c)[3] > 0) return c; } return 'rgb(255, 255, 255)'; };
    return [...document.querySelectorAll(arguments[0])].map((el) => {
      const a = lum(getComputedStyle(el).color), b = lum(bg(el));
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      return [el.className || el.id || el.tagName, ratio];
    });"""


def test_heatmap_overlay_drift_and_contrast(browser: Browser, server: Served,
                                            cells: list[Path]) -> None:
    """Rows carrying a heatmap (an image URL) and a drift score: the overlay switch turns
    on, draws one overlay per cell, and the drift is shown beside the call. (The server's
    rows carry no heatmap yet, so the answer is amended in the page's fetch.) Text of the
    calls, names, status and controls has a contrast of at least 4.5:1 (WCAG AA)."""
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    browser.driver.execute_script("""
        const real = window.fetch;
        window.fetch = async (url, init) => {
          const resp = await real(url, init);
          if (!String(url).endsWith('/v1/classify') || !resp.ok) return resp;
          const body = await resp.json();
          for (const r of body.results) { r.heatmap = arguments[0]; r.drift = 0.25; }
          return new Response(JSON.stringify(body), {status: 200,
            headers: {'Content-Type': 'application/json'}});
        };""", PIXEL_PNG)
    upload(browser, cells[:3], 60)
    assert browser.driver.find_element(By.ID, "heat").is_enabled()
    assert browser.driver.execute_script("return document.querySelectorAll('img.heat').length") == 0
    browser.driver.find_element(By.ID, "heat").click()
    assert browser.driver.execute_script("return document.querySelectorAll('img.heat').length") == 3
    assert all("drift 0.25" in c["text"] for c in rendered_cells(browser))
    ratios = browser.driver.execute_script(
        CONTRAST, ".call, .name, .cell div, #status, #counts, label, button, select, caption")
    assert ratios and all(r >= 4.5 for _, r in ratios), [x for x in ratios if x[1] < 4.5]
    assert browser.console_errors() == []
    assert browser.external_requests() == []


def test_a_server_with_a_token_gets_it_from_the_page(
        browser: Browser, page_model: Path, cells: list[Path],
        reference: tuple[list[str], dict[str, Any]], tmp_path: Path) -> None:
    """The page loads without the token, asks for it when the API answers 401, sends it,
    and then classifies; before that, nothing was classified."""
    from selenium.webdriver.common.by import By

    _, ref = reference
    token = "a-token-for-the-page-test-0123456789"
    token_file = tmp_path / "token.txt"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    s = Served("--model", str(page_model), "--token-file", str(token_file))
    try:
        browser.open(f"http://127.0.0.1:{s.port}/")
        wait_for(browser, "!document.getElementById('token-box').hidden", 30, "the token box")
        picked = cells[:3]
        browser.driver.find_element(By.ID, "files").send_keys(
            "\n".join(str(p) for p in picked))
        wait_for(browser, "window.leukoedge.state === 'stopped'", 30, "the 401 to stop it")
        assert browser.driver.execute_script("return window.leukoedge.done") == 0
        browser.driver.find_element(By.ID, "token").send_keys(token)
        browser.driver.find_element(By.ID, "token-retry").click()
        wait_for(browser, "window.leukoedge.state === 'done'", 60, "the page to finish")
        wait_for(browser, "document.getElementById('model').textContent.includes('.onnx')", 30,
                 "the model line")
        shown = {c["name"]: c["label"] for c in rendered_cells(browser)}
        assert shown == {p.name: ref[p.name]["label"] for p in picked}
        # the only console errors are the two refused API calls before the token was given
        errors = browser.console_errors()
        assert len(errors) == 2 and all("401" in e for e in errors), errors
        assert browser.external_requests() == []
    finally:
        browser.driver.execute_script("sessionStorage.clear()")
        assert s.stop() == 0, "".join(s.lines)


def test_large_drop_draws_one_page(browser: Browser, server: Served, cells: list[Path],
                                   reference: tuple[list[str], dict[str, Any]],
                                   tmp_path: Path) -> None:
    """LEUKOEDGE_PAGE_DROP cells (copies of the real ones under C-NMC names of 8 patients):
    every one classified, as classify called its original; one page of the grid drawn."""
    _, ref = reference
    n = int(os.environ.get("LEUKOEDGE_PAGE_DROP", "240"))
    drop = tmp_path / "drop"
    drop.mkdir()
    paths: list[Path] = []
    want = {"all": 0, "hem": 0}
    for k in range(n):
        src = cells[k % len(cells)]
        kind = ref[src.name]["label"]
        want[kind] += 1
        dst = drop / f"UID_{k % 8 + 1}_{k}_1_{src.stem.rsplit('_', 1)[-1]}.bmp"
        try:
            os.link(src, dst)  # no copy of the bytes when the file system allows
        except OSError:
            shutil.copyfile(src, dst)
        paths.append(dst)

    open_page(browser, server)
    t0 = time.perf_counter()
    stats = upload(browser, paths, max(120.0, n * 0.5))
    wall = time.perf_counter() - t0
    assert stats["done"] == stats["total"] == n and stats["errors"] == 0
    rows = browser.driver.execute_script("return window.leukoedge.rows()")
    got = {"all": 0, "hem": 0}
    for row in rows:
        got[row["label"]] += 1
    assert got == want
    drawn = browser.driver.execute_script(
        "return [document.querySelectorAll('#grid li').length,"
        " document.querySelectorAll('#grid img').length]")
    assert drawn == [min(n, PAGE_SIZE)] * 2
    # the next page holds the next cells
    if n > PAGE_SIZE:
        browser.driver.find_element("id", "next").click()
        assert len(rendered_cells(browser)) == min(n - PAGE_SIZE, PAGE_SIZE)
    assert browser.console_errors() == []
    assert browser.external_requests() == []
    print(f"\npage drop: {n} cells in {stats['elapsedMs'] / 1000:.1f} s on the page "
          f"({wall:.1f} s with the file picker), {stats['requests']} requests, "
          f"longest main-thread stall {stats['maxStallMs']:.0f} ms, "
          f"{stats['longTasks']} long tasks (> 50 ms), the longest "
          f"{stats['longestTaskMs']:.0f} ms")
