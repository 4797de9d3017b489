"""The ASGI application: ``POST /v1/classify``, ``GET /v1/model``, ``/healthz``,
``/metrics``, ``/openapi.json``, and the workstation page at ``/`` (:mod:`.page`).

Every image of a request is decoded in the worker pool by the one preprocessing function
(:func:`leukoedge.preprocess.preprocess_for`, from memory), queued on the
:class:`~.batcher.Batcher`, and answered as a prediction row (:class:`leukoedge.output.Row`:
the same fields as ``classify`` writes, ``path`` named ``name`` here), in request order.
A bad image is an error entry in its row, as in ``classify``; the request still succeeds.
``?heatmaps=1`` (a model with a ``cam`` output, ``/v1/model`` says ``heatmaps: true``)
adds each cell's overlay as a ``data:`` PNG in ``heatmap``; without it no map is computed.

No documentation page is served (FastAPI's ``/docs`` loads scripts from a CDN); the
schema is at ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .. import __version__
from ..classify import default_workers, error_text, scored_row
from ..data import patient_of
from ..errors import ImageError, LeukoedgeError, RequestError
from ..heatmap import data_url
from ..output import COLUMNS, DECIMALS, TEXT_COLUMNS, Row, escape_path
from ..preprocess import preprocess_for
from ..session import Model
from .batcher import Batcher, Scored
from .metrics import Metrics
from .multipart import Part, parse
from .page import PAGE_PATHS, add_page
from .security import OPEN_PATHS, Guard, require_token

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how many may be served at once."""

    max_request_bytes: int = 16 * MiB  # whole body; 413 above (a real cell is 0.6 MB)
    max_images: int = 64  # file parts per request; 413 above
    max_fields: int = 16  # other form fields per request; 400 above
    max_concurrent: int = 64  # classification requests in flight; 429 above
    body_seconds: float = 60.0  # a body not received within this is refused (408)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True)
class Settings:
    max_batch: int = 32
    max_wait_ms: float = 5.0
    workers: int | None = None  # decoding threads; None: the cores present, at most 8
    limits: Limits = field(default_factory=Limits)
    hosts: frozenset[str] | None = None  # accepted Host headers; None: any
    token: str | None = None  # bearer token; None: none asked for
    min_cells: int | None = None  # --min-cells: overrides the model's patient rule
    #: the address the server listens on: anything but loopback needs ``token``
    bind: str = "127.0.0.1"


class Service:
    """The model, the batcher, the decoding pool and the metrics of one server."""

    def __init__(self, model: Model, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.metrics = Metrics()
        self.batcher = Batcher(model, settings.max_batch, settings.max_wait_ms / 1000.0,
                               on_batch=self.metrics.batch_done, coming=self.decoding)
        self.pool: ThreadPoolExecutor | None = None
        self._decoding = 0  # images accepted and not yet queued for the model
        self._lock = threading.Lock()

    def decoding(self) -> int:
        return self._decoding

    def _count(self, n: int) -> None:
        with self._lock:
            self._decoding += n

    def start(self) -> None:
        if self.pool is not None:
            return
        self.pool = ThreadPoolExecutor(max_workers=self.settings.workers or default_workers(),
                                       thread_name_prefix="leukoedge-decode")
        self.batcher.start()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.batcher.close()

    def _decode_and_queue(self, data: bytes | bytearray, name: str, cam: bool = False
                          ) -> Future[Scored] | ImageError:
        try:
            stream = io.BytesIO(data)
            stream.name = name  # what ImageError messages call the image
            try:
                array = preprocess_for(stream, self.model.spec)
            except ImageError as exc:
                return exc
            return self.batcher.submit(array, cam)  # queued before it stops counting as coming
        finally:
            self._count(-1)

    async def classify(self, images: list[tuple[str, bytes | bytearray]],
                       heatmaps: bool = False) -> list[Row]:
        """One row per ``(name, bytes)``, in order; with ``heatmaps`` (a model with a
        ``cam`` output) each row's ``heatmap`` is its overlay as a ``data:`` PNG
        (:func:`leukoedge.heatmap.data_url`, drawn in the worker pool)."""
        assert self.pool is not None, "Service.start() first"
        loop = asyncio.get_running_loop()
        self._count(len(images))
        queued = [loop.run_in_executor(self.pool, self._decode_and_queue, data, name,
                                       heatmaps)
                  for name, data in images]
        results: list[Scored | ImageError] = []
        for q in queued:
            r = await q
            if isinstance(r, ImageError):
                results.append(r)
            else:
                scored: Scored = await asyncio.wrap_future(r)
                results.append(scored)
        rows = rows_for(self.model, [name for name, _ in images], results)
        if heatmaps:
            await self._draw_heatmaps(images, results, rows)
        return rows

    async def _draw_heatmaps(self, images: list[tuple[str, bytes | bytearray]],
                             results: list[Scored | ImageError], rows: list[Row]) -> None:
        loop = asyncio.get_running_loop()
        crop = self.model.spec.crop_fraction
        drawn = [(row, loop.run_in_executor(self.pool, data_url, bytes(data), r.cam, crop))
                 for (_, data), r, row in zip(images, results, rows)
                 if not isinstance(r, ImageError) and r.cam is not None and not row.error]
        for row, url in drawn:
            row.heatmap = await url


def rows_for(model: Model, names: list[str], results: list[Scored | ImageError]) -> list[Row]:
    """Prediction rows as ``classify`` makes them (:func:`leukoedge.classify.scored_row`):
    the probability from the spec (:meth:`ModelSpec.probability`), the label from the
    logit threshold, NaN as an error."""
    spec = model.spec
    logits = [r.logit for r in results if not isinstance(r, ImageError)]
    probs = spec.probability(np.asarray(logits, dtype=np.float32)).tolist()
    rows: list[Row] = []
    k = 0
    for name, r in zip(names, results):
        patient = patient_of(name)
        if isinstance(r, ImageError):
            rows.append(Row(name, patient, None, None, error_text(r)))
            continue
        prob = float(probs[k])
        k += 1
        rows.append(scored_row(name, patient, r.logit, prob, r.drift, spec))
    return rows


def row_json(row: Row) -> dict[str, Any]:
    d = row.as_dict()
    return {"name": d.pop("path"), **d}


def image_name(filename: str | None, index: int) -> str:
    """The name an uploaded image is answered under: the last component of its file name
    (a path-like name is never used as a path: nothing is written anywhere), escaped as
    result rows escape paths, at most 255 characters; ``image-<n>`` when it has none."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = escape_path(base)[:255]
    return base if base not in ("", ".", "..") else f"image-{index + 1}"


def _json(status: int, payload: object, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


_CLASSIFY_BODY = {
    "parameters": [{
        "name": "heatmaps", "in": "query", "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "Add each cell's heatmap overlay (a data: PNG) to its row; only for "
                       "a model with a heatmap output (GET /v1/model: heatmaps).",
    }],
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {"image": {"type": "array",
                                     "items": {"type": "string", "format": "binary"}}},
        }}},
    },
}


def create_app(model: Model, settings: Settings | None = None) -> Guard:
    """The ASGI application serving ``model`` (wrapped in the Host/token guard).

    The service (batcher thread, decoding pool) starts and stops with the app's lifespan,
    so run it under a server or ``with TestClient(app)``. A ``settings.bind`` that is not
    loopback without a token is refused (UsageError: :func:`security.require_token`).
    """
    cfg = settings or Settings()
    require_token(cfg.bind, cfg.token)
    service = Service(model, cfg)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    api = FastAPI(title="leukoedge", version=__version__, docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="ALL vs HEM classification of segmented B-lymphoid cells.")
    add_routes(api, Handlers(service))
    add_page(api)
    api.state.service = service
    return Guard(api, cfg.hosts, cfg.token, OPEN_PATHS | PAGE_PATHS)


def add_routes(api: FastAPI, h: Handlers) -> None:
    """The JSON API: ``/v1/classify``, ``/v1/model``, ``/healthz``, ``/metrics``."""
    api.post("/v1/classify", response_class=Response, openapi_extra=_CLASSIFY_BODY,
             summary="Classify one or many images (multipart/form-data file parts)"
             )(h.classify)
    api.post("/v1/patients", response_class=Response,
             summary="The per-patient summary (leukoedge.patient) of a list of rows"
             )(h.patients)
    api.get("/v1/model", summary="The model's spec, provider and the server's limits"
            )(h.model_info)
    api.get("/healthz", summary="Liveness")(h.healthz)
    api.get("/metrics", summary="Prometheus metrics (text format)")(h.metrics)


class Handlers:
    """The routes of one :class:`Service`. ``classify`` counts the requests in flight
    (refused with 429 above ``max_concurrent``) and answers every refusal as JSON
    ``{"error": ...}`` with its status."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.limits = service.settings.limits
        self.in_flight = 0

    async def classify(self, request: Request) -> Response:
        limits, metrics = self.limits, self.service.metrics
        if self.in_flight >= limits.max_concurrent:
            metrics.request_done(429)
            return _json(429, {"error": f"too many requests in flight (the limit is "
                                        f"{limits.max_concurrent}); retry shortly"},
                         {"Retry-After": "1"})
        self.in_flight += 1
        metrics.in_flight = self.in_flight
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await self._classify(request)
            status = resp.status_code
            return resp
        finally:
            self.in_flight -= 1
            metrics.in_flight = self.in_flight
            metrics.request_done(status, time.perf_counter() - t0)

    async def _classify(self, request: Request) -> Response:
        """Read and parse the body, classify its images: the rows, or why not."""
        heatmaps = _flag(request.query_params.get("heatmaps"))
        if heatmaps is None:
            return _json(400, {"error": "heatmaps must be 1 or 0 (true/false)"})
        if heatmaps and not self.service.model.has_cam:
            return _json(400, {"error": f"{self.service.model.path.name} has no heatmap "
                                        "output (export it with 'leukoedge export --cam')"})
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            data = bytes(body)
            body.clear()  # one copy at a time: the bytes, then the bytes and the parts
            parts = parse(data, request.headers.get("content-type", ""),
                          self.limits.max_images, self.limits.max_fields)
        except RequestError as exc:
            return _json(exc.status, {"error": exc.message})
        del data  # the parts hold the images now
        images = _images(parts)
        if not images:
            return _json(400, {"error": "no image in the request (send file parts, "
                                        "e.g. curl -F image=@cell.bmp)"})
        try:
            rows = await self.service.classify(images, heatmaps)
        except LeukoedgeError as exc:  # the model failed: not the images' fault
            return _json(500, {"error": exc.message})
        errors = sum(1 for r in rows if r.error)
        self.service.metrics.images_done(len(rows), errors)
        return _json(200, {"results": [row_json(r) for r in rows]})

    async def _body(self, request: Request) -> bytearray | Response:
        """The whole body, or the refusal: a bad or too large Content-Length, a body over
        the limit (413), one not received within ``body_seconds`` (408), a client gone."""
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return _json(400, {"error": "invalid Content-Length"})
            if int(declared) > limit:
                return _json(413, {"error": f"request too large ({declared} bytes; the limit "
                                            f"is {limit})"})
        body = bytearray()

        async def receive() -> Response | None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > limit:
                    return _json(413, {"error": f"request too large (over the limit of "
                                                f"{limit} bytes)"})
            return None

        try:
            # a client trickling its body must not hold a slot of --max-concurrent forever
            refused = await asyncio.wait_for(receive(), self.limits.body_seconds)
        except ClientDisconnect:
            return _json(400, {"error": "the client went away before sending the whole body"})
        except asyncio.TimeoutError:
            return _json(408, {"error": f"the body did not arrive within "
                                        f"{self.limits.body_seconds:g} s"})
        return body if refused is None else refused

    async def patients(self, request: Request) -> Response:
        """``{"rows": [{patient, label, prob_all, error, drift}, ...]}`` (rows as
        /v1/classify answers them) -> ``{"columns", "patients", "rule", ...}``: the same
        summary as ``classify --patients-out``, with this model's rule and drift flag."""
        from ..patient import COLUMNS, model_view, summarize_records

        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            payload = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            return _json(400, {"error": "the body must be JSON: {\"rows\": [...]}"})
        rows = payload.get("rows") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return _json(400, {"error": "the body must be JSON: {\"rows\": [objects]}"})
        model = self.service.model
        view = model_view(model.spec, None if model.drift is None else model.drift.patient_flag,
                          self.service.settings.min_cells)
        summary = summarize_records(rows, view, model.spec.positive)
        return _json(200, {"columns": list(COLUMNS),
                           "patients": [r.to_json() for r in summary], **view.to_json()})

    async def model_info(self) -> Response:
        model, cfg = self.service.model, self.service.settings
        return _json(200, {
            "model": model.path.name,
            "provider": model.provider,
            "spec": model.spec.to_dict(),
            "heatmaps": model.has_cam,  # whether /v1/classify?heatmaps=1 is answered
            # the rows' columns and CSV format (the page's download: classify's CSV)
            "rows": {"columns": list(COLUMNS), "decimals": DECIMALS,
                     "text_columns": list(TEXT_COLUMNS)},
            "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms},
            "limits": asdict(self.limits),
            "version": __version__,
        })

    async def healthz(self) -> Response:
        return _json(200, {"status": "ok"})

    async def metrics(self) -> Response:
        return Response(self.service.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


def _flag(value: str | None) -> bool | None:
    """A query flag: absent, 0/false/no -> False; 1/true/yes -> True; else None."""
    if value is None:
        return False
    v = value.strip().lower()
    return True if v in ("1", "true", "yes") else False if v in ("", "0", "false", "no") \
        else None


def _images(parts: list[Part]) -> list[tuple[str, bytes | bytearray]]:
    files = [p for p in parts if p.filename is not None]
    return [(image_name(p.filename, i), p.data) for i, p in enumerate(files)]
