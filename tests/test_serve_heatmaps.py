"""Heatmaps from ``serve`` to the page (issue 30).

``POST /v1/classify?heatmaps=1`` answers each cell's overlay as a ``data:`` PNG when the
model has a ``cam`` output (the shipped model has one) and nothing without the flag; a
model without a map refuses the flag with one line. The served layer drawn over the image
is ``classify --cam``'s overlay. In Chromium: with the switch on, the page asks for the
maps and draws one over each real cell, also for cells classified while it was off; a
model without a map keeps the switch disabled and says why.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from leukoedge.heatmap import SERVED_SIDE, data_url, layer, overlay  # noqa: E402
from leukoedge.models import __file__ as _models_init  # noqa: E402
from leukoedge.serve.app import Settings, create_app  # noqa: E402
from leukoedge.session import load_model  # noqa: E402

SHIPPED = Path(_models_init).parent / "default.onnx"
BASE = "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def cells(shared_cells: Path) -> list[Path]:
    return sorted(shared_cells.rglob("*.bmp"))[:3]


def files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (p.name, p.read_bytes(), "image/bmp")) for p in paths]


def png_of(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    img = Image.open(io.BytesIO(base64.b64decode(url[len(prefix):])))
    img.load()
    return img


@pytest.fixture(scope="module")
def shipped_client() -> Iterator[TestClient]:
    app = create_app(load_model(SHIPPED), Settings(hosts=None))
    with TestClient(app, base_url=BASE) as c:
        yield c


def test_heatmaps_only_when_asked(shipped_client: TestClient, cells: list[Path]) -> None:
    c = shipped_client
    assert c.get("/v1/model").json()["heatmaps"] is True
    plain = c.post("/v1/classify", files=files(cells))
    assert plain.status_code == 200
    assert [r["heatmap"] for r in plain.json()["results"]] == [None] * len(cells)
    asked = c.post("/v1/classify?heatmaps=1", files=files(cells))
    assert asked.status_code == 200
    rows = asked.json()["results"]
    assert [r["name"] for r in rows] == [p.name for p in cells]
    # the same answers, with a map each
    for a, b in zip(rows, plain.json()["results"]):
        assert a["logit"] == pytest.approx(b["logit"], abs=1e-5) and a["label"] == b["label"]
    for r, p in zip(rows, cells):
        img = png_of(r["heatmap"])
        w, h = Image.open(p).size
        assert img.mode == "RGBA" and max(img.size) == min(SERVED_SIDE, max(w, h))
        alpha = np.asarray(img)[..., 3]
        assert alpha.max() > 0 and alpha.min() == 0  # drawn somewhere, clear elsewhere
    # a bad image is still an error row, with no map
    bad = c.post("/v1/classify?heatmaps=true",
                 files=[("image", ("bad.bmp", b"not an image", "image/bmp"))])
    assert bad.status_code == 200 and bad.json()["results"][0]["heatmap"] is None
    assert bad.json()["results"][0]["error"]
    wrong = c.post("/v1/classify?heatmaps=perhaps", files=files(cells[:1]))
    assert wrong.status_code == 400 and "heatmaps must be" in wrong.json()["error"]


def test_a_model_without_a_map_refuses_the_flag(tiny_model: Path, cells: list[Path]) -> None:
    app = create_app(load_model(tiny_model), Settings(hosts=None))
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/v1/model").json()["heatmaps"] is False
        r = c.post("/v1/classify?heatmaps=1", files=files(cells[:1]))
        assert r.status_code == 400 and "has no heatmap output" in r.json()["error"]
        assert c.post("/v1/classify", files=files(cells[:1])).status_code == 200


def test_the_served_layer_over_the_image_is_classify_s_overlay(cells: list[Path]) -> None:
    rng = np.random.default_rng(0)
    cam = rng.normal(size=(12, 12))
    rgb = np.asarray(Image.open(cells[0]).convert("RGB"))
    h, w = rgb.shape[:2]
    lay = layer(cam, w, h, 0.75).astype(np.float64)
    a = lay[..., 3:] / 255.0
    composed = rgb * (1 - a) + lay[..., :3] * a
    assert np.abs(composed - overlay(rgb, cam, 0.75)).max() <= 1.5  # rounding of 8 bits
    url = data_url(cells[0].read_bytes(), cam, 0.75)
    assert url is not None and png_of(url).size == (SERVED_SIDE, SERVED_SIDE)
    assert data_url(b"not an image", cam, 0.75) is None


# -- the page, in Chromium -------------------------------------------------------------


def test_page_draws_served_heatmaps_over_real_cells(browser, cells: list[Path]) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from test_serve_live import Served
    from test_serve_page import open_page, upload, wait_for

    s = Served("--model", str(SHIPPED))
    try:
        open_page(browser, s)
        heat = browser.driver.find_element(By.ID, "heat")
        wait_for(browser, "!document.getElementById('heat').disabled", 30, "the switch")
        assert browser.driver.find_element(By.ID, "heat-why").text == ""
        # cells classified with the switch off carry no map; switching on fetches them
        upload(browser, cells[:2], 120)
        assert browser.driver.execute_script(
            "return document.querySelectorAll('img.heat').length") == 0
        heat.click()
        # the switch on: new cells are asked for with their maps
        browser.driver.find_element(By.ID, "files").send_keys(str(cells[2]))
        wait_for(browser, "window.leukoedge.done === 3 && window.leukoedge.state === 'done'",
                 120, "the third cell")
        drawn = wait_for(browser, """(() => {
            const hs = [...document.querySelectorAll('#grid li.cell img.heat')];
            if (hs.length !== 3 || !hs.every((h) => h.complete && h.naturalWidth > 0)) return null;
            return hs.map((h) => {
              const under = h.parentElement.querySelector('img:not(.heat)').getBoundingClientRect();
              const r = h.getBoundingClientRect();
              const c = document.createElement('canvas');
              c.width = h.naturalWidth; c.height = h.naturalHeight;
              const g = c.getContext('2d');
              g.drawImage(h, 0, 0);
              const px = g.getImageData(0, 0, c.width, c.height).data;
              let opaque = 0;
              for (let i = 3; i < px.length; i += 4) if (px[i] > 0) opaque += 1;
              return {src: h.getAttribute('src').slice(0, 22), opaque: opaque,
                      same: Math.abs(r.left - under.left) < 1 && Math.abs(r.top - under.top) < 1
                            && Math.abs(r.width - under.width) < 1,
                      w: r.width};
            });
          })()""", 60, "an overlay over each cell")
        for d in drawn:
            assert d["src"] == "data:image/png;base64,", d
            assert d["opaque"] > 0 and d["same"] and d["w"] > 0, d
        urls = [u for u in browser.requested_urls() if "/v1/classify" in u]
        assert any(u.endswith("/v1/classify?heatmaps=1") for u in urls), urls
        assert any(u.endswith("/v1/classify") for u in urls), urls  # the switch was off
        # the CSV does not carry the pictures
        text = browser.driver.execute_script("return window.leukoedge.csv()")
        assert "data:image" not in text
        assert browser.console_errors() == []
        assert browser.external_requests() == []
    finally:
        assert s.stop() == 0, "".join(s.lines)


def test_page_without_a_map_keeps_the_switch_off_and_says_why(  # type: ignore[no-untyped-def]
        browser, tiny_model: Path) -> None:
    from selenium.webdriver.common.by import By
    from test_serve_live import Served
    from test_serve_page import open_page

    s = Served("--model", str(tiny_model))
    try:
        open_page(browser, s)
        assert not browser.driver.find_element(By.ID, "heat").is_enabled()
        why = browser.driver.find_element(By.ID, "heat-why").text
        assert "no heatmap output" in why and "--cam" in why
        assert browser.console_errors() == []
    finally:
        assert s.stop() == 0, "".join(s.lines)
