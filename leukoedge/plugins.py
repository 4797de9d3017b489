"""Training plugins, found through the ``leukoedge.plugins`` entry-point group.

A plugin is a function ``register(app: typer.Typer) -> None`` that adds commands. Loading
is a guarded call made once by the CLI, never an import side effect, and a plugin must
leave torch unimported until one of its commands runs. When no plugin provides ``train``, ``export``
and ``parity``, placeholder commands say which extra to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

GROUP = "leukoedge.plugins"
TRAIN_COMMANDS = ("train", "export", "parity")
TRAIN_EXTRA_HINT = "pip install 'leukoedge[train,cpu]' (or [train,gpu] on a CUDA machine)"


@dataclass
class PluginInfo:
    name: str
    value: str
    distribution: str | None
    loaded: bool = False
    error: str | None = None


def entry_points() -> list[Any]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name)


def load_plugins(app: Any) -> list[PluginInfo]:
    """Call every plugin's ``register(app)``; a broken plugin is reported, not fatal."""
    infos = []
    for ep in entry_points():
        dist = getattr(getattr(ep, "dist", None), "name", None)
        info = PluginInfo(ep.name, ep.value, dist)
        try:
            register = ep.load()
            register(app)
            info.loaded = True
        except ImportError as exc:
            info.error = f"cannot import {ep.value}: {exc}"
        except AttributeError as exc:
            info.error = f"{ep.value}: {exc}"
        infos.append(info)
    return infos


def missing_extra_message(command: str) -> str:
    return f"'leukoedge {command}' needs the training plugin, which is not installed"


def require_torch(command: str) -> None:
    """Raise MissingExtraError unless torch and torchvision can be imported."""
    from importlib.util import find_spec

    from .errors import MissingExtraError

    missing = [m for m in ("torch", "torchvision", "onnx") if find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"'leukoedge {command}' needs {', '.join(missing)}, which is not installed",
            TRAIN_EXTRA_HINT)
