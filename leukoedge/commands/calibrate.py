"""``calibrate``: a temperature and an operating point, written into a copy of the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..console import escape, facts_table, out
from ..errors import EXIT_OK, UsageError
from ..output import refuse_existing
from .common import warn
from .options import (
    BatchOpt,
    FoldsOpt,
    JsonOpt,
    LabelsOpt,
    OverwriteOpt,
    PrecisionOpt,
    ProviderOpt,
    ThreadsOpt,
    WorkersOpt,
)

if TYPE_CHECKING:
    from ..calibrate import Calibration, Cells, Rule
    from ..session import Model

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
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
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
    from ..calibrate import cells_from_predictions, training_patients_warning, write_calibrated
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
    refuse_existing(out_file, overwrite)
    m = load_model(model, SessionConfig(provider=provider, threads=threads,
                                        precision=precision))
    if from_predictions is not None:
        cells = cells_from_predictions(from_predictions, labels, folds)
    else:
        assert data is not None
        cells = _from_images(m, data, labels, batch_size, workers)
    said = training_patients_warning(cells.patients, m.spec.training.get("patients") or (),
                                     from_predictions is not None)
    if said:
        warn(said)
    got = write_calibrated(model, m.spec, out_file, cells, rule, patient_rule)
    assert got.fitted is not None
    if as_json:
        out.print_json(json.dumps({"model": str(out_file), **got.fitted.as_dict(),
                                   "spec_calibration": got.spec.calibration}))
    else:
        print_calibration(got.fitted, out_file)
    return EXIT_OK


def _patient_rule_only(model: Path, rule_file: Path, out_file: Path, overwrite: bool) -> int:
    """``calibrate MODEL --patient-rule RULE.json --out NEW.onnx``: the same model with the
    rule in its spec, nothing else changed."""
    from ..calibrate import write_calibrated
    from ..patient import from_spec
    from ..session import SessionConfig, load_model

    refuse_existing(out_file, overwrite)
    m = load_model(model, SessionConfig(provider="cpu", threads=1))
    got = write_calibrated(model, m.spec, out_file, None, patient_rule=rule_file)
    out.print(f"patient rule written into {escape(str(out_file))}: "
              f"{escape(from_spec(got.spec).describe())}")
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


def _from_images(m: Model, data: list[Path], labels: Path | None, batch_size: int,
                 workers: int | None) -> Cells:
    """The labelled images through the model, with a progress bar."""
    from ..calibrate import cells_from_images, labelled_images
    from .common import progress_bar

    items = labelled_images(data, labels)
    with progress_bar(len(items), "calibrate") as advance:
        cells = cells_from_images(m, items, data, batch_size, workers, progress=advance)
    if cells.left_out:
        warn(f"{cells.left_out} images could not be read and are left out")
    return cells


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
