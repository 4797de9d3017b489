"""Entry point: ``register(app)`` adds ``train``, ``export`` and ``parity`` to the CLI.

Must stay light: no torch import here (``leukoedge --help`` stays fast and works without
the train extra). Each command imports its module, which imports torch, when it runs.
"""

from __future__ import annotations

from typing import Any


def register(app: Any) -> None:
    from . import commands

    commands.register(app)
