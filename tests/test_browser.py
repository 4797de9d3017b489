"""The browser fixture itself: it renders a page, sees console errors and external requests."""

from __future__ import annotations

from pathlib import Path

from browser import Browser


def test_browser_renders_and_reports_errors_and_external_requests(
        browser: Browser, tmp_path: Path) -> None:
    clean = tmp_path / "clean.html"
    clean.write_text("<!doctype html><title>t</title><p id=x>hello</p>")
    browser.open(clean.as_uri())
    assert browser.driver.find_element("id", "x").text == "hello"
    assert browser.console_errors() == []
    assert browser.external_requests() == []

    dirty = tmp_path / "dirty.html"
    dirty.write_text("<!doctype html><title>t</title>"
                     "<img src='http://example.invalid/pixel.png'>"
                     "<script>console.error('boom')</script>")
    browser.open(dirty.as_uri())
    errors = browser.console_errors()
    assert any("boom" in e for e in errors), errors
    assert "http://example.invalid/pixel.png" in browser.external_requests()
