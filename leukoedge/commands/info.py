"""``info``: one model's spec, interface, opset, size and provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..console import escape, facts_table, out
from ..errors import EXIT_OK, SpecError
from .options import JsonOpt

if TYPE_CHECKING:
    from rich.table import Table

#: the spec's fields shown always, then those written only when not at their default
_SPEC_FIELDS = ("architecture", "input_size", "crop_fraction", "interpolation",
                "input_layout", "labels", "positive", "threshold", "mean", "std",
                "data_fingerprint", "train_images", "created_at", "tool_version",
                "schema_version", "metrics", "notes")
_OPTIONAL_FIELDS = ("precision", "temperature", "outputs", "tta", "training", "calibration",
                    "extensions")


def info(
    model: Annotated[Path | None, typer.Argument(
        help="An ONNX model file \\[default: the model classify would use: the newest in "
             "exported/, else the shipped one].", show_default=False)] = None,
    as_json: JsonOpt = False,
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
        out.print(_table(model, d))
    if d["spec"] is None:
        raise SpecError(str(d["spec_error"]))
    return EXIT_OK


def _parameters(d: dict[str, Any]) -> str:
    """The network's parameters, and what the file stores besides them."""
    text = f"{d['parameters']:,} in the network ({d['parameters_source']})"
    other = d["stored_values"] - d["parameters"]
    if other > 0:
        what = (f"{d['copies']:,} in copies of its weights (a heatmap output's own)"
                if d["copies"] else "")
        rest = other - d["copies"]
        if rest > 0:
            what += (", " if what else "") + f"{rest:,} other constants"
        text += f"; the file stores {d['stored_values']:,} numbers: besides them {what}"
    return text


def _table(model: Path, d: dict[str, Any]) -> Table:
    t = facts_table(f"model {escape(str(model))}", [
        ("size", f"{d['size_bytes'] / 1e6:.2f} MB"),
        ("parameters", _parameters(d)),
        ("sha256", d["sha256"]),
        ("opsets", ", ".join(f"{k} {v}" for k, v in d["opsets"].items())),
        ("ir version / producer", f"{d['ir_version']} / {escape(d['producer'])}")])
    for i in d["inputs"]:
        t.add_row("input", f"{escape(i['name'])}: {i['type']} {i['shape']}")
    for o in d["outputs"]:
        t.add_row("output", f"{escape(o['name'])}: {o['type']} {o['shape']}")
    spec = d["spec"]
    if not spec:
        t.add_row("spec", f"[red]{escape(str(d['spec_error']))}[/red]")
        return t
    for k in _SPEC_FIELDS:
        t.add_row(f"spec.{k}", escape(str(spec[k])))
    for k in _OPTIONAL_FIELDS:
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
    return t


def weights_text(w: dict[str, Any]) -> str:
    """``spec.training["weights"]`` in one line: the package, its file and sha256 (or what
    the run started from)."""
    if w.get("package"):
        return (f"{w['package']} {w.get('version', '')}: {w.get('file', '')}, sha256 "
                f"{w.get('sha256', '?')} ({w.get('licence', 'licence not recorded')})")
    return str(w.get("source", "not recorded"))


def provenance_rows(training: dict[str, Any]) -> list[tuple[str, str]]:
    """``spec.training`` as table rows: data, patients, recipe, cross-validated figures."""
    rows: list[tuple[str, str]] = []
    if training.get("data"):
        rows.append(("trained on", str(training["data"])))
    pats = training.get("patients") or []
    if pats:
        rows.append(("training patients", f"{len(pats)}: {', '.join(map(str, pats))}"))
    weights = training.get("weights") or {}
    if weights:
        rows.append(("backbone weights", weights_text(weights)))
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
