"""``info`` (one model) and ``doctor`` (this machine)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..console import escape, out
from ..errors import EXIT_CANNOT_RUN, EXIT_OK, MissingExtraError, SpecError


def info(
    model: Annotated[Path | None, typer.Argument(
        help="An ONNX model file \\[default: the model classify would use: the newest in "
             "exported/, else the shipped one].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> int:
    """Show a model's spec, inputs and outputs, opset, size and data fingerprint."""
    from ..inspect_model import describe_model
    from .common import choose_model

    if model is None:
        model = choose_model()
    d = describe_model(model)
    if as_json:
        out.print_json(json.dumps(d))
    else:
        t = Table(title=f"model {escape(str(model))}", show_header=False, title_justify="left")
        t.add_column("what", style="bold")
        t.add_column("value")
        t.add_row("size", f"{d['size_bytes'] / 1e6:.2f} MB ({d['parameters']:,} parameters)")
        t.add_row("sha256", d["sha256"])
        t.add_row("opsets", ", ".join(f"{k} {v}" for k, v in d["opsets"].items()))
        t.add_row("ir version / producer", f"{d['ir_version']} / {escape(d['producer'])}")
        for i in d["inputs"]:
            t.add_row("input", f"{escape(i['name'])}: {i['type']} {i['shape']}")
        for o in d["outputs"]:
            t.add_row("output", f"{escape(o['name'])}: {o['type']} {o['shape']}")
        spec = d["spec"]
        if spec:
            for k in ("architecture", "input_size", "crop_fraction", "interpolation",
                      "input_layout", "labels", "positive", "threshold", "mean", "std",
                      "data_fingerprint", "train_images", "created_at", "tool_version",
                      "schema_version", "metrics", "notes"):
                t.add_row(f"spec.{k}", escape(str(spec[k])))
            for k in ("precision", "temperature", "outputs", "tta", "training",
                      "calibration", "extensions"):  # written only when not the default
                if k == "training" and spec.get(k):
                    for what, text in provenance_rows(spec[k]):
                        t.add_row(what, escape(text))
                elif k == "extensions" and "leukoedge.drift" in spec.get(k, {}):
                    from ..drift import describe

                    rest = {e: v for e, v in spec[k].items() if e != "leukoedge.drift"}
                    t.add_row("drift statistics", escape(describe(spec[k]["leukoedge.drift"])))
                    if rest:
                        t.add_row(f"spec.{k}", escape(json.dumps(rest)))
                elif k in spec:
                    t.add_row(f"spec.{k}", escape(json.dumps(spec[k])))
        else:
            t.add_row("spec", f"[red]{escape(str(d['spec_error']))}[/red]")
        out.print(t)
    if d["spec"] is None:
        raise SpecError(str(d["spec_error"]))
    return EXIT_OK


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> int:
    """Versions, which execution providers really load here (and why not), plugins and
    their capabilities."""
    from importlib import metadata

    from .. import __version__
    from ..plugins import entry_points, registry
    from ..session import cores, import_ort, ort_distribution, provider_load_problem

    versions = {"python": sys.version.split()[0], "leukoedge": __version__,
                "platform": platform.platform(), "cores": str(cores())}
    for dist in ("numpy", "pillow", "onnx", "typer", "rich", "torch", "torchvision"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    versions["onnxruntime"] = ort_distribution()
    providers: dict[str, str] = {}
    ok = True
    try:
        ort = import_ort()
        available = ort.get_available_providers()
        for p in ("cpu", "cuda", "tensorrt"):
            problem = provider_load_problem(ort, p)
            if problem is None and p != "cpu":
                problem = _probe_session(ort, p)
            providers[p] = "ok" if problem is None else problem
        versions["ort_available_providers"] = ", ".join(available)
    except MissingExtraError as exc:
        ok = False
        providers["cpu"] = str(exc)
    plugins = {e.name: e.value for e in entry_points()}
    capabilities = registry().names()  # imports each plugin's entry module, no target
    report = {"versions": versions, "providers": providers, "plugins": plugins,
              "capabilities": capabilities}
    if as_json:
        out.print_json(json.dumps(report))
    else:
        t = Table(title="leukoedge doctor", show_header=False, title_justify="left")
        t.add_column("what", style="bold")
        t.add_column("value")
        for k, v in versions.items():
            t.add_row(k, escape(v))
        for k, v in providers.items():
            t.add_row(f"provider {k}", "[green]ok[/green]" if v == "ok" else
                      f"[yellow]unavailable[/yellow]: {escape(v)}")
        for k, v in plugins.items() or {"(none)": "no plugin installed"}.items():
            t.add_row(f"plugin {k}", escape(v))
        if capabilities:
            t.add_row("capabilities", escape(", ".join(f"{c} ({p})"
                                                       for c, p in capabilities.items())))
        out.print(t)
    return EXIT_OK if ok else EXIT_CANNOT_RUN


def _probe_session(ort: object, provider: str) -> str | None:
    """Create a tiny session on ``provider``; None when it really runs there."""
    from onnx import TensorProto, helper

    from ..session import _ORT_NAMES, ort_errors

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    name = _ORT_NAMES[provider]
    try:
        sess = ort.InferenceSession(  # type: ignore[attr-defined]
            m.SerializeToString(), providers=[name, "CPUExecutionProvider"])
    except ort_errors(ort) as exc:  # type: ignore[arg-type]
        return f"session creation failed: {str(exc)[:200]}"
    if name not in sess.get_providers():
        return "the provider's library loads but the session fell back to the CPU " \
               "(no usable GPU or driver?)"
    return None


def provenance_rows(training: dict[str, Any]) -> list[tuple[str, str]]:
    """``spec.training`` as table rows: data, patients, recipe, cross-validated figures."""
    rows: list[tuple[str, str]] = []
    if training.get("data"):
        rows.append(("trained on", str(training["data"])))
    pats = training.get("patients") or []
    if pats:
        rows.append(("training patients", f"{len(pats)}: {', '.join(map(str, pats))}"))
    recipe = training.get("recipe") or {}
    if recipe:
        rows.append(("recipe", f"{recipe.get('name')}: {recipe.get('description', '')}"))
    cv = training.get("cv") or {}
    pooled = cv.get("pooled") or {}
    if pooled:
        figs = ", ".join(f"{label} {pooled[k]:.3f}" for k, label in (
            ("weighted_f1", "weighted F1"), ("roc_auc", "ROC AUC"),
            ("balanced_accuracy", "balanced accuracy"), ("sensitivity_all", "sensitivity"),
            ("specificity_all", "specificity")) if isinstance(pooled.get(k), (int, float)))
        folds = cv.get("folds") or []
        rows.append(("cross-validated (by patient)",
                     f"{figs} ({pooled.get('cells')} cells, out-of-fold, {len(folds)} folds; "
                     f"{cv.get('report', '')})"))
        if folds:
            rows.append(("per fold weighted F1", ", ".join(
                f"fold {f['fold']} {f['weighted_f1']:.3f}" for f in folds)))
    if training.get("command"):
        rows.append(("made by", str(training["command"])))
    return rows
