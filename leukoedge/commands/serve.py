"""``serve``: classification over HTTP (the ``serve`` extra); docs/serve.md."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from ..console import escape, note
from ..errors import EXIT_OK
from .common import open_model
from .options import MinCellsOpt, ModelOpt, ProviderOpt, WorkersOpt
from .options import PrecisionOpt  # noqa: I001

ServeThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="Inference threads (default: the cores present but one, left "
    "to the event loop and the decoding threads).", show_default=False)]


def serve_threads() -> int:
    """The default inference threads of ``serve``: the cores present but one (at least
    one). The server's event loop (HTTP, multipart) and decoding threads need a core too;
    with all of them given to onnxruntime, a light model's throughput fell by a quarter
    (docs/serve.md, "Measured")."""
    from ..session import cores

    return max(1, cores() - 1)


def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but loopback needs --token-file.")]
        = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="TCP port (0: a free one).")] = 8000,
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = "f32",
    max_batch: Annotated[int, typer.Option(
        "--max-batch", min=1, max=4096, help="Most images per model run.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(
        "--max-wait-ms", min=0.0, max=10_000.0,
        help="Longest wait for more images before a batch runs.")] = 5.0,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="File holding the bearer token clients must send "
        "(required unless --host is loopback).", show_default=False)] = None,
    max_request_mb: Annotated[int, typer.Option(
        "--max-request-mb", min=1, max=4096, help="Largest request body (MiB).")] = 16,
    max_images: Annotated[int, typer.Option(
        "--max-images", min=1, max=4096, help="Most images per request.")] = 64,
    max_concurrent: Annotated[int, typer.Option(
        "--max-concurrent", min=1, max=100_000,
        help="Most classification requests in flight; more get 429.")] = 64,
    threads: ServeThreadsOpt = None,
    workers: WorkersOpt = None,
    min_cells: MinCellsOpt = None,
) -> int:
    """Serve the model over HTTP: POST /v1/classify (multipart images), GET /v1/model,
    /healthz, /metrics, /openapi.json. Stops cleanly (exit 0) on SIGTERM or Ctrl-C."""
    from ..serve import require_extra
    from ..serve.security import allowed_hosts, is_loopback, read_token, require_token

    require_extra()
    token = None
    if token_file is not None:
        got = read_token(token_file)
        for n in got.notes:
            note(n)
        token = got.token
    require_token(host, token)  # before the model loads; create_app checks it again
    from ..serve.app import Limits, Settings, create_app
    from ..serve.server import bind, run

    # onnxruntime's threads do not spin while idle: they would take the cores from the
    # event loop and the decoders between batches
    m = open_model(model, provider,
                   serve_threads() if threads is None else threads, precision=precision,
                   spin=False)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    settings = Settings(
        max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers,
        limits=Limits(max_request_bytes=max_request_mb * 1024 * 1024, max_images=max_images,
                      max_concurrent=max_concurrent),
        hosts=allowed_hosts(host, bound_port), token=token, min_cells=min_cells,
        bind=host)
    m.warm_up(max_batch)
    app = create_app(m, settings)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}"

    def ready() -> None:
        if not is_loopback(host):
            note("clients must send 'Authorization: Bearer <token>'; this server speaks "
                 "plain HTTP: TLS belongs to a reverse proxy in front of it")
        note(f"serving {escape(m.path.name)} ({m.spec.architecture}, {m.provider}) on "
             f"{escape(url)}; batches of up to {max_batch}, {max_wait_ms:g} ms wait; "
             "stop with Ctrl-C or SIGTERM")

    stopped_by = run(app, sock, on_ready=ready)
    if stopped_by is not None:
        note(f"stopped by {signal.Signals(stopped_by).name} after answering the requests "
             "in flight")
    return EXIT_OK
