"""``leukoedge serve``: classification over HTTP with dynamic batching, safe by default.

The subpackage uses the library (the loaded :class:`~leukoedge.session.Model`, the one
preprocessing function, the prediction row of :mod:`leukoedge.output`) and knows nothing of
the command line; ``leukoedge/commands/serve.py`` turns flags into a call to
:func:`leukoedge.serve.server.serve`.

- :mod:`.batcher`: images of concurrent requests are queued and run together on the one
  session, up to ``max_batch`` images or ``max_wait_ms``;
- :mod:`.multipart`: request bodies parsed in memory (never spooled to disk), with limits;
- :mod:`.security`: Host header check and bearer token (constant-time compare);
- :mod:`.metrics`: Prometheus text;
- :mod:`.app`: the ASGI application (FastAPI);
- :mod:`.server`: uvicorn, signals and draining.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart); docs/serve.md.
"""

from __future__ import annotations

from ..errors import MissingExtraError

SERVE_EXTRA_HINT = "pip install 'leukoedge[serve]'"


def require_extra() -> None:
    """Fail with the install line when the serve extra is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"leukoedge serve needs the serve extra ({exc.name} is not "
                                "installed)", SERVE_EXTRA_HINT) from exc
