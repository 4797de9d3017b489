"""Plugins, found through the ``leukoedge.plugins`` entry-point group: commands and
named capabilities.

An entry point names a plugin object (usually a module) with up to two hooks, in the way
llm's ``register_commands``/``register_models`` work:

- ``register_commands(app)`` adds Typer commands. The CLI calls it once, guarded: a broken
  plugin is a one-line note, never a failed ``leukoedge``.
- ``register_capabilities(register)`` calls ``register(name, "module:attribute")`` for each
  capability it provides (:mod:`leukoedge.capabilities` lists the names the runtime uses).
  The registry is filled on the first lookup, and a capability's module is imported only
  when that capability is looked up, so a plugin's heavy imports (torch) happen only when
  they are needed, like zarr's codec registries.

An entry point that names a plain callable is an older plugin's ``register(app)``: it adds
commands only. A plugin must leave torch unimported until one of its commands runs or one
of its capabilities is looked up. When no plugin provides ``train``, ``export`` and
``parity``, the CLI adds placeholders that say which extra to install; an absent capability
raises :class:`~leukoedge.errors.MissingExtraError` naming its extra.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from .errors import MissingExtraError, PluginError, first_line

GROUP = "leukoedge.plugins"
TRAIN_COMMANDS = ("train", "export", "parity")
TRAIN_EXTRA_HINT = "pip install 'leukoedge[train,cpu]' (or [train,gpu] on a CUDA machine)"
EXTRA_HINTS = {"train": TRAIN_EXTRA_HINT}

#: ``register(name, target)``: target is ``"module:attribute"`` (imported on first lookup)
#: or the object itself
RegisterCapability = Callable[[str, Any], None]


@dataclass
class PluginInfo:
    name: str
    value: str
    distribution: str | None
    loaded: bool = False
    error: str | None = None
    capabilities: list[str] = field(default_factory=list)


def entry_points() -> list[Any]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name)


def _hooks(obj: Any) -> tuple[Callable[[Any], None] | None,
                              Callable[[RegisterCapability], None] | None]:
    commands = getattr(obj, "register_commands", None)
    capabilities = getattr(obj, "register_capabilities", None)
    if commands is None and capabilities is None and callable(obj):
        return obj, None  # an older plugin: register(app) adds commands
    if commands is None and capabilities is None:
        raise PluginError("has neither register_commands nor register_capabilities")
    return commands, capabilities


def _load(ep: Any) -> tuple[PluginInfo, Any]:
    dist = getattr(getattr(ep, "dist", None), "name", None)
    info = PluginInfo(ep.name, ep.value, dist)
    obj: Any = None
    try:
        obj = ep.load()
        _hooks(obj)
        info.loaded = True
    except ImportError as exc:
        info.error = f"cannot import {ep.value}: {first_line(exc)}"
    except (AttributeError, PluginError) as exc:
        info.error = f"{ep.value}: {first_line(exc)}"
    return info, obj


def _guard_commands(group: Any, commands_before: int = 0, groups_before: int = 0) -> None:
    """Wrap the commands (and sub-groups' commands) a plugin added to ``group`` after the
    first ``commands_before`` / ``groups_before`` in the CLI's error guard (once each)."""
    from .cli import GUARDED, guarded

    for cmd in group.registered_commands[commands_before:]:
        if cmd.callback is not None and not getattr(cmd.callback, GUARDED, False):
            cmd.callback = guarded(cmd.callback)
    for sub in group.registered_groups[groups_before:]:
        if sub.typer_instance is not None:
            _guard_commands(sub.typer_instance)


def load_plugins(app: Any) -> list[PluginInfo]:
    """Call every plugin's ``register_commands(app)`` and wrap what it added in the CLI's
    error guard (:func:`leukoedge.cli.guarded`: an error is one line and its exit code, never
    a traceback), so a plugin need not; a broken plugin is reported, not fatal."""
    infos = []
    for ep in entry_points():
        info, obj = _load(ep)
        if info.loaded:
            commands, _ = _hooks(obj)
            before = (len(getattr(app, "registered_commands", [])),
                      len(getattr(app, "registered_groups", [])))
            try:
                if commands is not None:
                    commands(app)
                    if hasattr(app, "registered_commands"):
                        _guard_commands(app, *before)
            except ImportError as exc:
                info.loaded, info.error = False, f"cannot import {ep.value}: {first_line(exc)}"
            except AttributeError as exc:
                info.loaded, info.error = False, f"{ep.value}: {first_line(exc)}"
        infos.append(info)
    return infos


class Registry:
    """Capabilities by name, from every plugin's ``register_capabilities``; filled on first
    use, each target imported on its first lookup."""

    def __init__(self) -> None:
        self._targets: dict[str, tuple[Any, str]] | None = None  # name -> (target, plugin)
        self._resolved: dict[str, Any] = {}
        self.infos: list[PluginInfo] = []

    def _fill(self) -> dict[str, tuple[Any, str]]:
        if self._targets is not None:
            return self._targets
        targets: dict[str, tuple[Any, str]] = {}
        infos = []
        for ep in entry_points():
            info, obj = _load(ep)
            infos.append(info)
            if not info.loaded:
                continue
            _, hook = _hooks(obj)
            if hook is None:
                continue

            def register(name: str, target: Any, _plugin: str = ep.name,
                         _info: PluginInfo = info) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"capability name {name!r} is not a string")
                targets.setdefault(name, (target, _plugin))  # first plugin (by name) wins
                _info.capabilities.append(name)

            try:
                hook(register)
            except (ImportError, AttributeError, PluginError) as exc:
                info.loaded, info.error = False, f"{ep.value}: {first_line(exc)}"
        self._targets, self.infos = targets, infos
        return targets

    def names(self) -> dict[str, str]:
        """Capability -> the plugin that provides it (loads the registry, imports no target)."""
        return {n: p for n, (_, p) in sorted(self._fill().items())}

    def lookup(self, name: str, needed_by: str, extra: str) -> Any:
        """The capability ``name``, imported now if it is a ``module:attribute`` string.

        Absent, or its module not importable: :class:`MissingExtraError` naming ``extra``.
        """
        if name in self._resolved:
            return self._resolved[name]
        hint = EXTRA_HINTS.get(extra, f"pip install 'leukoedge[{extra}]'")
        entry = self._fill().get(name)
        if entry is None:
            broken = "; ".join(f"plugin {i.name} did not load: {i.error}"
                               for i in self.infos if i.error)
            raise MissingExtraError(
                f"'leukoedge {needed_by}' needs the {name} of the '{extra}' extra's plugin, "
                f"which is not installed" + (f" ({broken})" if broken else ""), hint)
        target, plugin = entry
        if isinstance(target, str):
            target = _import_target(target, name, needed_by, hint)
        if not callable(target):
            raise MissingExtraError(f"plugin {plugin} registered '{name}' as something "
                                    f"that cannot be called ({type(target).__name__})", hint)
        self._resolved[name] = target
        return target


def _import_target(target: str, name: str, needed_by: str, hint: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except ModuleNotFoundError as exc:
        missing = (exc.name or module).split(".")[0]
        raise MissingExtraError(f"'leukoedge {needed_by}' needs {missing}, which is not "
                                f"installed", hint) from exc
    except ImportError as exc:
        raise MissingExtraError(f"'leukoedge {needed_by}': its {name} ({target}) cannot be "
                                f"imported ({first_line(exc)})", hint) from exc
    except AttributeError as exc:
        raise MissingExtraError(f"'leukoedge {needed_by}': the plugin's {name} ({target}) "
                                f"does not exist", hint) from exc
    return obj


_registry = Registry()


def registry() -> Registry:
    return _registry


def lookup(name: str, needed_by: str, extra: str) -> Any:
    """Module-level :meth:`Registry.lookup` on the one registry of this process."""
    return _registry.lookup(name, needed_by, extra)



def missing_extra_message(command: str) -> str:
    return f"'leukoedge {command}' needs the training plugin, which is not installed"


def require_torch(command: str) -> None:
    """Raise MissingExtraError unless torch and torchvision can be imported."""
    from importlib.util import find_spec

    missing = [m for m in ("torch", "torchvision", "onnx") if find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"'leukoedge {command}' needs {', '.join(missing)}, which is not installed",
            TRAIN_EXTRA_HINT)
