"""The workstation page at ``/``: plain HTML, CSS and JavaScript shipped as package data
(``leukoedge/serve/static/``), no build step, nothing loaded from elsewhere.

The page talks only to this server (``/v1/model``, ``/v1/classify``); its
Content-Security-Policy says so to the browser too, so a page that tried to reach another
host (a CDN, a web font) would be stopped and the attempt shown as a console error.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

#: the page's files and their media types; nothing else is served from the folder
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
#: only this server; images from the dropped files (blob:) and inline heatmaps (data:)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
#: paths the page needs without a token (they hold no data; the API calls still need it)
PAGE_PATHS = frozenset({"/", *(f"/static/{name}" for name in STATIC)})


def read_static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def add_page(api: FastAPI) -> None:
    """``GET /`` (the page) and ``GET /static/<file>`` (its script and style sheet)."""
    files = {name: read_static(name) for name in STATIC}  # read once, at start

    @api.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(files["index.html"], media_type=STATIC["index.html"], headers=HEADERS)

    @api.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files:
            return Response(b'{"error": "no such file"}', status_code=404,
                            media_type="application/json")
        return Response(files[name], media_type=STATIC[name], headers=HEADERS)
