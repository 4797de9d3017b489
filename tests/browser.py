"""One headless-browser fixture for every page test (the serve page, the HTML report).

Debian's ``chromium`` and ``chromium-driver`` packages, driven by Selenium (their own
browser downloads cannot work offline). The browser runs with every proxy pointed at a
closed loopback port, so a request that would leave the machine fails, and the test reads
the browser's network log to name it: :meth:`Browser.external_requests` lists every URL
that is not ``file:``, ``data:``, ``blob:``, ``about:`` or loopback HTTP.

When the browser is missing, a test using it fails when ``CI`` is set (CI installs it:
``.ci/run``) and skips with the install command otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
INSTALL = "apt-get install chromium chromium-driver && pip install selenium"
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome", "devtools"}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _first(paths: tuple[str, ...], env: str) -> str | None:
    given = os.environ.get(env)
    if given:
        return given if Path(given).is_file() else None
    return next((p for p in paths if Path(p).is_file()), shutil.which(Path(paths[0]).name))


def missing_browser(why: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    from conftest import missing

    missing(f"headless browser unavailable ({why}); install with: {INSTALL}")


@dataclass
class Browser:
    driver: Any
    _seen_log: list[dict[str, Any]] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.drain()
        self._seen_log.clear()
        self.driver.get(url)

    def drain(self) -> None:
        """Move the driver's network log into ``_seen_log``."""
        for entry in self.driver.get_log("performance"):
            try:
                self._seen_log.append(json.loads(entry["message"])["message"])
            except (KeyError, ValueError):
                continue

    def requested_urls(self) -> list[str]:
        self.drain()
        return [m["params"]["request"]["url"] for m in self._seen_log
                if m.get("method") == "Network.requestWillBeSent"]

    def external_requests(self) -> list[str]:
        """URLs the page asked for that would leave this machine."""
        out = []
        for url in self.requested_urls():
            u = urlparse(url)
            if u.scheme in LOCAL_SCHEMES:
                continue
            if u.scheme in ("http", "https", "ws", "wss") and (u.hostname or "") in LOOPBACK:
                continue
            out.append(url)
        return out

    def console_errors(self) -> list[str]:
        """Console messages of level SEVERE since the last call (errors, failed loads)."""
        return [f"{e.get('level')}: {e.get('message')}" for e in self.driver.get_log("browser")
                if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path, width: int = 1280, height: int = 900) -> Path:
        self.driver.set_window_size(width, height)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A headless Chromium for the whole test session."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_browser("the selenium package is not installed")
    chromium = _first(CHROMIUM_CANDIDATES, "LEUKOEDGE_CHROMIUM")
    driver_bin = _first(DRIVER_CANDIDATES, "LEUKOEDGE_CHROMEDRIVER")
    if not chromium or not driver_bin:
        missing_browser(f"chromium: {chromium or 'not found'}, "
                        f"chromedriver: {driver_bin or 'not found'}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps",
                "--allow-file-access-from-files",
                # anything that would leave the machine goes to a closed port and fails;
                # loopback is bypassed (Chromium's default), so a local server is reached
                "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
