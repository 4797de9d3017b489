"""``doctor``: this machine: versions, the execution providers that really run here (and
why not), plugins and their capabilities."""

from __future__ import annotations

import json
import platform
import sys

from ..console import escape, facts_table, out
from ..errors import EXIT_CANNOT_RUN, EXIT_OK, MissingExtraError, first_line
from .options import JsonOpt


def doctor(
    as_json: JsonOpt = False,
) -> int:
    """Versions, which execution providers really load here (and why not), plugins and
    their capabilities."""
    from ..ov_session import ov_status
    from ..plugins import entry_points, registry
    from ..session import import_ort, provider_status

    versions = _versions()
    providers: dict[str, str] = {}
    ok = True
    try:
        ort = import_ort()
        providers = provider_status(ort)
        versions["ort_available_providers"] = ", ".join(ort.get_available_providers())
    except MissingExtraError as exc:
        ok = False
        providers["cpu"] = first_line(exc)
    openvino = ov_status()  # version, devices, bf16 (and why not); never chosen by auto
    providers["openvino"] = openvino.pop("openvino")
    plugins = {e.name: e.value for e in entry_points()}
    capabilities = registry().names()  # imports each plugin's entry module, no target
    if as_json:
        out.print_json(json.dumps({"versions": versions, "providers": providers,
                                   "openvino": openvino,
                                   "plugins": plugins, "capabilities": capabilities}))
    else:
        t = facts_table("leukoedge doctor", [(k, escape(v)) for k, v in versions.items()])
        for k, v in providers.items():
            t.add_row(f"provider {k}", "[green]ok[/green]" if v == "ok" else
                      f"[yellow]unavailable[/yellow]: {escape(v)}")
        for k, v in openvino.items():
            t.add_row(k, escape(v))
        for k, v in plugins.items() or {"(none)": "no plugin installed"}.items():
            t.add_row(f"plugin {k}", escape(v))
        if capabilities:
            t.add_row("capabilities", escape(", ".join(f"{c} ({p})"
                                                       for c, p in capabilities.items())))
        out.print(t)
    return EXIT_OK if ok else EXIT_CANNOT_RUN


def _versions() -> dict[str, str]:
    """Python, leukoedge, the platform, the cores, and the versions of the libraries."""
    from importlib import metadata

    from .. import __version__
    from ..session import cores, ort_distribution

    versions = {"python": sys.version.split()[0], "leukoedge": __version__,
                "platform": platform.platform(), "cores": str(cores())}
    for dist in ("numpy", "pillow", "onnx", "typer", "rich", "torch", "torchvision"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["onnxruntime"] = ort_distribution()
    return versions
