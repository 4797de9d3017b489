"""The training plugin's CLI commands, one module per command group, assembled here:
``train`` (:mod:`.train`), ``export`` and ``parity`` (:mod:`.export`), ``cv`` (:mod:`.cv`).

Each command returns an exit code and raises :class:`leukoedge.errors.LeukoedgeError` on
bad input; :func:`leukoedge.plugins.load_plugins` wraps every command a plugin adds in the
CLI's error guard, so nothing here does. No torch import here.
"""

from __future__ import annotations

from typing import Any


def register(app: Any) -> None:
    """Add train, export, parity and the cv group to the leukoedge CLI."""
    from . import cv, export, train

    app.command(name="train")(train.train)
    app.command(name="export")(export.export)
    app.command(name="parity")(export.parity)
    app.add_typer(cv.app, name="cv")
