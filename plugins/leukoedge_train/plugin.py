"""Entry point of the training plugin (``leukoedge.plugins``: ``train = leukoedge_train.plugin``).

Two hooks, both light (no torch import here: ``leukoedge --help`` stays fast and works
without the train extra):

- ``register_commands(app)`` adds ``train``, ``export``, ``parity`` and ``cv``
  (:mod:`.commands`); each command imports its torch-using module when it runs, and
  ``load_plugins`` wraps them in the CLI's error guard.
- ``register_capabilities(register)`` names what the runtime may look up
  (:mod:`leukoedge.capabilities`) as ``module:attribute`` strings, imported on first lookup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

    from leukoedge.plugins import RegisterCapability


def register_commands(app: typer.Typer) -> None:
    from . import commands

    commands.register(app)


def register_capabilities(register: RegisterCapability) -> None:
    register("trainer", "leukoedge_train.capabilities:trainer")
    register("exporter", "leukoedge_train.capabilities:exporter")
    register("torch_bench", "leukoedge_train.torch_bench:torch_throughput")


class _FormerEntryPoint:
    """What an install made before the entry point named this module points at
    (``leukoedge_train.plugin:register``, before 0.2): called, it is the commands hook
    under its former name; it carries both hooks, so such metadata keeps giving commands
    and capabilities."""

    register_commands = staticmethod(register_commands)
    register_capabilities = staticmethod(register_capabilities)

    def __call__(self, app: typer.Typer) -> None:
        register_commands(app)


register = _FormerEntryPoint()
