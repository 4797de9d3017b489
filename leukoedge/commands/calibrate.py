"""``calibrate``: a temperature and an operating point, written into a copy of the model."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..console import escape, facts_table, out
from ..errors import EXIT_OK, DataError, OutputExistsError, UsageError
from .common import parse_folds, warn
from .options import (
    BatchOpt,
    FoldsOpt,
    LabelsOpt,
    PrecisionOpt,
    ProviderOpt,
    ThreadsOpt,
    WorkersOpt,
)

if TYPE_CHECKING:
    import numpy as np

    from ..calibrate import Calibration, Rule
    from ..session import Model
    from ..spec import ModelSpec

FromPredictionsOpt = Annotated[Path | None, typer.Option(
    "--from-predictions", help="Fit on this predictions file's logits (classify's rows, or "
                               "out-of-fold predictions) instead of running the model.",
    show_default=False)]


def calibrate(
    model: Annotated[Path, typer.Argument(help="The ONNX model to calibrate.",
                                          show_default=False)],
    data: Annotated[list[Path] | None, typer.Argument(
        help="Labelled images (files or folders) to calibrate on; not with "
             "--from-predictions.", show_default=False)] = None,
    out_file: Annotated[Path, typer.Option(
        "--out", "-o", help="The calibrated model to write (the same graph, updated spec).",
        show_default=False)] = Path("calibrated.onnx"),
    from_predictions: FromPredictionsOpt = None,
    target_sensitivity: Annotated[float | None, typer.Option(
        "--target-sensitivity", min=0.0, max=1.0,
        help="Largest threshold whose sensitivity (ALL recall) reaches this on the "
             "calibration cells.", show_default=False)] = None,
    target_specificity: Annotated[float | None, typer.Option(
        "--target-specificity", min=0.0, max=1.0,
        help="Smallest threshold whose specificity (HEM recall) reaches this.",
        show_default=False)] = None,
    labels: LabelsOpt = None,
    folds: FoldsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing --out.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was fitted as JSON.")]
    = False,
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = "f32",
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    patient_rule: Annotated[Path | None, typer.Option(
        "--patient-rule", help="Put this patient rule (the JSON scripts/patient_rule.py "
        "writes, or a bare rule object) into the spec's extensions['leukoedge.patient']; "
        "alone (no images, no --from-predictions) nothing else changes.",
        show_default=False)] = None,
) -> int:
    """Fit a temperature (NLL) and pick a threshold on labelled cells; write the model
    with them in its spec. Default threshold rule: best weighted F1."""
    from ..calibrate import calibrate, calibrated_spec, write_model
    from ..session import SessionConfig, load_model

    rule = _rule(target_sensitivity, target_specificity)
    if patient_rule is not None and from_predictions is None and not data:
        return _patient_rule_only(model, patient_rule, out_file, overwrite)
    if (from_predictions is None) == (not data):
        raise UsageError("give labelled images or --from-predictions FILE (one of them)",
                         "leukoedge calibrate MODEL IMAGES --out NEW.onnx, or "
                         "leukoedge calibrate MODEL --from-predictions FILE --out NEW.onnx")
    if folds is not None and from_predictions is None:
        raise UsageError("--folds selects rows of a predictions file",
                         "use it with --from-predictions")
    if out_file.exists() and not overwrite:
        raise OutputExistsError(f"{out_file} already exists",
                                "add --overwrite or choose another --out")
    m = load_model(model, SessionConfig(provider=provider, threads=threads,
                                        precision=precision))
    if from_predictions is not None:
        cells = _from_predictions(from_predictions, labels, folds)
    else:
        assert data is not None
        cells = _from_images(m, data, labels, batch_size, workers)
    _warn_training_patients(cells.patients, m.spec.training.get("patients") or (),
                            from_predictions is not None)
    cal = calibrate(m.spec, cells.logits, cells.truth, cells.patients, rule)
    new = calibrated_spec(m.spec, cal, cells.fingerprint, cells.source)
    if patient_rule is not None:
        new = _with_patient_rule(new, patient_rule)
    write_model(model, out_file, new)
    load_model(out_file, SessionConfig(provider="cpu", threads=1))  # reads back, verified
    if as_json:
        out.print_json(json.dumps({"model": str(out_file), **cal.as_dict(),
                                   "spec_calibration": new.calibration}))
    else:
        print_calibration(cal, out_file)
    return EXIT_OK


def _with_patient_rule(spec: ModelSpec, path: Path) -> ModelSpec:
    """``spec`` with the rule of ``path`` under ``extensions["leukoedge.patient"]``."""
    from ..errors import SpecError
    from ..patient import EXTENSION_KEY, parse

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"--patient-rule {path}: not readable JSON") from exc
    if isinstance(raw, dict) and isinstance(raw.get("rule"), dict):
        raw = raw["rule"]  # scripts/patient_rule.py's output
    try:
        rule = parse(raw)
    except SpecError as exc:
        raise DataError(f"--patient-rule {path}: {exc.message}") from exc
    return spec.with_updates(extensions={**spec.extensions, EXTENSION_KEY: rule.to_json()})


def _patient_rule_only(model: Path, rule_file: Path, out_file: Path, overwrite: bool) -> int:
    """``calibrate MODEL --patient-rule RULE.json --out NEW.onnx``: the same model with the
    rule in its spec, nothing else changed."""
    from ..calibrate import write_model
    from ..patient import from_spec
    from ..session import SessionConfig, load_model

    if out_file.exists() and not overwrite:
        raise OutputExistsError(f"{out_file} already exists",
                                "add --overwrite or choose another --out")
    m = load_model(model, SessionConfig(provider="cpu", threads=1))
    write_model(model, out_file, _with_patient_rule(m.spec, rule_file))
    back = load_model(out_file, SessionConfig(provider="cpu", threads=1))  # verified
    out.print(f"patient rule written into {escape(str(out_file))}: "
              f"{escape(from_spec(back.spec).describe())}")
    return EXIT_OK


def _rule(target_sensitivity: float | None, target_specificity: float | None) -> Rule:
    from ..calibrate import Rule

    if target_sensitivity is not None and target_specificity is not None:
        raise UsageError("--target-sensitivity and --target-specificity contradict each "
                         "other", "choose one operating point")
    if target_sensitivity is not None:
        return Rule("sensitivity", target_sensitivity)
    if target_specificity is not None:
        return Rule("specificity", target_specificity)
    return Rule()


@dataclass
class _Cells:
    """The labelled cells to calibrate on: logits, truth (1 = ALL), their patients, the
    data's fingerprint and a description for the spec."""

    logits: np.ndarray
    truth: np.ndarray
    patients: list[str]
    fingerprint: str
    source: str


def _from_predictions(path: Path, labels: Path | None, folds: str | None) -> _Cells:
    import numpy as np

    from ..predictions import read_predictions

    ps = read_predictions(path, labels, parse_folds(folds))
    if not ps.has_logits:
        raise DataError(f"{path}: the rows carry no logit for every cell",
                        "classify with this release (it writes the logit column)")
    keep = [i for i, t in enumerate(ps.truth) if t is not None]
    return _Cells(
        logits=np.asarray([ps.logits[i] for i in keep]),
        truth=np.asarray([ps.truth[i] for i in keep], dtype=np.int64),
        patients=sorted({p for i in keep if (p := ps.patients[i])}),
        fingerprint=ps.fingerprint(),
        source=f"predictions {path.name}" + (f" folds {folds}" if folds else ""))


def _from_images(m: Model, data: list[Path], labels: Path | None, batch_size: int,
                 workers: int | None) -> _Cells:
    import numpy as np

    from ..classify import predict_stream
    from ..data import collect, fingerprint
    from .common import progress_bar

    items = [it for it in collect(data, labels) if it.label is not None]
    if not items:
        raise DataError("no labelled image to calibrate on",
                        "put them under all/ and hem/ folders, or pass --labels")
    with progress_bar(len(items), "calibrate") as advance:
        preds = list(predict_stream(m, items, batch_size, workers,
                                    on_batch=lambda b: advance(len(b))))
    ok = [p for p in preds if p.row.error is None and p.row.logit is not None]
    if len(ok) < len(preds):
        warn(f"{len(preds) - len(ok)} images could not be read and are left out")
    return _Cells(
        logits=np.asarray([p.row.logit for p in ok], dtype=np.float64),
        truth=np.asarray([p.item.label for p in ok], dtype=np.int64),
        patients=sorted({p.item.patient for p in ok if p.item.patient}),
        fingerprint=fingerprint(p.item for p in ok),
        source="images " + ", ".join(str(d) for d in data)[:200])


def _warn_training_patients(patients: list[str], trained_on: Iterable[object],
                            from_predictions: bool) -> None:
    """Calibrating on the model's own training patients makes the temperature too low."""
    trained = sorted(set(patients) & set(trained_on))
    if trained:
        shown = f"{', '.join(trained[:8])}{', ...' if len(trained) > 8 else ''}"
        why = ("if these logits are this model's (not out-of-fold), they are over-confident "
               "and the temperature will be too low" if from_predictions else
               "their logits are over-confident, so the temperature will be too low")
        warn(f"calibrating on {len(trained)} patients the model was trained on ({shown}): "
             f"{why}")


def _f(x: float) -> str:
    return f"{x:.4f}"


def print_calibration(cal: Calibration, out_file: Path) -> None:
    t = facts_table("leukoedge calibrate", [
        ("cells / ALL / HEM", f"{cal.cells} / {cal.cells_all} / {cal.cells_hem}"),
        ("patients", str(len(cal.patients))),
        ("temperature", f"{cal.temperature:.4f}"),
        ("NLL before / after", f"{_f(cal.nll_at_1)} / {_f(cal.nll)}"),
        ("ECE before / after", f"{_f(cal.before.ece)} / {_f(cal.after.ece)}"),
        ("Brier before / after", f"{_f(cal.before.brier)} / {_f(cal.after.brier)}"),
        ("threshold rule", cal.rule.describe()),
        ("threshold P(ALL)", f"{cal.threshold:.6f} (logit {cal.logit_threshold:.4f})")])
    for k in ("sensitivity_all", "specificity_all", "weighted_f1"):
        t.add_row(f"{k.replace('_', ' ')} (calibration cells)", _f(cal.at_threshold[k]))
    t.add_row("written", escape(str(out_file)))
    out.print(t)
    out.print("[dim]figures on the calibration cells; evaluate on other patients to judge "
              "them[/dim]")
