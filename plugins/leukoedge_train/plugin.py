"""Entry point of the training plugin (``leukoedge.plugins``: ``train = leukoedge_train.plugin``).

Two hooks, both light (no torch import here: ``leukoedge --help`` stays fast and works
without the train extra):

- ``register_commands(app)`` adds ``train``, ``export`` and ``parity``; each command imports
  its torch-using module when it runs.
- ``register_capabilities(register)`` names what the runtime may look up
  (:mod:`leukoedge.capabilities`) as ``module:attribute`` strings, imported on first lookup.
"""

from __future__ import annotations

from typing import Any


def register_commands(app: Any) -> None:
    from . import commands

    commands.register(app)


def register_capabilities(register: Any) -> None:
    register("trainer", "leukoedge_train.capabilities:trainer")
    register("exporter", "leukoedge_train.capabilities:exporter")
    register("torch_bench", "leukoedge_train.bench:torch_throughput")


def register(app: Any) -> None:
    """The commands hook under its former name (the entry point's value before 0.2)."""
    register_commands(app)


# An install made before the entry point named this module points at ``register``: the
# function carries both hooks, so such metadata keeps giving commands and capabilities.
register.register_commands = register_commands  # type: ignore[attr-defined]
register.register_capabilities = register_capabilities  # type: ignore[attr-defined]
