"""``evaluate``: labelled images (or a predictions file) in, metrics out (the report
:mod:`leukoedge.evaluate` builds, printed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..console import err, escape, facts_table, note, out
from ..errors import EXIT_OK, EXIT_SOME_FAILED, DataError, UsageError
from ..output import check_output_location, refuse_existing
from .common import (
    open_model,
    parse_folds,
    print_drift,
    print_patients,
    progress_bar,
    say,
    view_of_model,
    warn,
)
from .options import (
    BatchOpt,
    JsonOpt,
    LabelsOpt,
    MinCellsOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    ProviderOpt,
    ThreadsOpt,
    ThresholdOpt,
    WorkersOpt,
)

# numpy-using modules (classify, data, evaluate) are imported inside the command, so that
# ``leukoedge --help`` stays fast (docs/performance.md).
if TYPE_CHECKING:
    from ..classify import Prediction
    from ..data import Item
    from ..evaluate import Metrics, Report
    from ..session import Model


def evaluate(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="Image files or folders (searched recursively); not with --from-predictions.",
        show_default=False)] = None,
    model: ModelOpt = None,
    labels: LabelsOpt = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write the full report as JSON here.", show_default=False)] = None,
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Also write the per-image rows here (.csv/.jsonl).",
        show_default=False)] = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = "f32",
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    threshold: ThresholdOpt = None,
    from_predictions: Annotated[Path | None, typer.Option(
        "--from-predictions", help="Score this predictions file (classify's rows, or "
        "out-of-fold predictions with logits) instead of running the model; --model then "
        "only gives the spec (temperature, threshold).", show_default=False)] = None,
    folds: Annotated[str | None, typer.Option(
        "--folds", help="With --from-predictions: only the rows of these folds "
        "(comma-separated).", show_default=False)] = None,
    resamples: Annotated[int, typer.Option(
        "--resamples", min=0, max=100_000,
        help="Patient-bootstrap resamples for the 95% intervals (0: none).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    min_cells: MinCellsOpt = None,
) -> int:
    """Classify labelled images and report accuracy, weighted F1, AUC, calibration (ECE,
    Brier, log-loss), 95% intervals by patient, per patient..."""
    from ..data import collect
    from ..evaluate import build_report

    if from_predictions is not None:
        if paths:
            raise UsageError("give images or --from-predictions, not both")
        from ..evaluate import report_from_predictions

        got = report_from_predictions(from_predictions, model=model, labels=labels,
                                      threshold=threshold, folds=parse_folds(folds),
                                      resamples=resamples, seed=seed, min_cells=min_cells,
                                      need_labels=True)
        say(got.messages)
        return _finish(got.report, report, overwrite, as_json)
    if not paths:
        raise UsageError("no images given", "leukoedge evaluate IMAGES..., or "
                         "leukoedge evaluate --from-predictions FILE")
    if folds is not None:
        raise UsageError("--folds selects rows of a predictions file",
                         "use it with --from-predictions")
    items = collect(paths, labels)
    if not any(it.label is not None for it in items):
        raise DataError("no labels found for these images",
                        "put them under all/ and hem/ folders, name them *_all/*_hem, "
                        "or pass --labels C-NMC_test_prelim_phase_data_labels.csv")
    _check_outputs(paths, report, predictions, overwrite)
    m = open_model(model, provider, threads, threshold, precision)
    preds = _predict(m, items, predictions, overwrite, batch_size, workers)
    return _finish(build_report(preds, m, resamples, seed, view_of_model(m, min_cells)),
                   report, overwrite, as_json)


def _check_outputs(paths: list[Path], report: Path | None, predictions: Path | None,
                   overwrite: bool) -> None:
    """--report and --predictions: outside the inputs, two files, no report replaced
    without --overwrite; checked before the model runs."""
    for target in (report, predictions):
        if target is not None:
            check_output_location(target, paths)
    if (report is not None and predictions is not None
            and report.absolute() == predictions.absolute()):
        raise UsageError("--report and --predictions name the same file",
                         "the report would replace the rows; choose two files")
    _refuse_existing_report(report, overwrite)


def _refuse_existing_report(report: Path | None, overwrite: bool) -> None:
    if report is not None:
        refuse_existing(report, overwrite, "add --overwrite or choose another --report",
                        what="report ")


def _predict(m: Model, items: list[Item], predictions: Path | None, overwrite: bool,
             batch_size: int, workers: int | None) -> list[Prediction]:
    """Every item through the model, with a progress bar; rows to --predictions as they
    come."""
    from ..evaluate import predict_images

    with progress_bar(len(items), "evaluate") as advance:
        return predict_images(m, items, predictions, overwrite, batch_size, workers, advance)


def _finish(rep: Report, report: Path | None, overwrite: bool, as_json: bool) -> int:
    from ..evaluate import report_json, write_report_json

    _refuse_existing_report(report, overwrite)
    for w in rep["warnings"]:
        warn(w)
    if report is not None:
        write_report_json(report, rep)
    if as_json:
        out.print_json(json.dumps(report_json(rep)))
    else:
        print_report(rep)
        if report is not None:
            note(f"report written to {report}")
    return EXIT_SOME_FAILED if rep["errors"] else EXIT_OK


def _f(x: object) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def print_report(rep: Report) -> None:
    """The report as tables: the figures, per class, confusion, per patient, drift."""
    _print_head(rep)
    mt = rep["metrics"]
    if mt is not None:
        _print_classes(mt)
    if rep["patient_calls"]:
        _print_patient_view(rep)
    print_drift(rep.get("drift"))
    if rep["errors"]:
        err.print(f"[red]{rep['errors']} files could not be read[/red] (not in the metrics):")
        for e in rep["error_rows"][:5]:
            err.print(f"  {escape(e['error'])}")


def _print_patient_view(rep: Report) -> None:
    """The per-patient table (leukoedge.patient) with the truth, and the figures over
    patients."""
    from ..patient import PatientSummary, PatientView, parse

    rows = [PatientSummary(**r) for r in rep["patient_calls"]]
    pr = rep["patient_rule"]
    view = PatientView(parse(pr["rule"]), pr["drift_flag"], pr["flag_note"])
    truth = {r["patient"]: 1 if r["true_label"] == "all" else 0 for r in rep["patients"]
             if r["true_label"] is not None}
    print_patients(rows, view, truth or None)
    pm = rep["patient_metrics"]
    if pm is not None:
        out.print(f"patients: {pm.patients} with a truth, {pm.called} called; "
                  f"accuracy among called {_f(pm.accuracy_called)}, sensitivity "
                  f"{_f(pm.sensitivity)}, specificity {_f(pm.specificity)}, no call "
                  f"{_f(pm.no_call_share)}")


def _print_head(rep: Report) -> None:
    """The figures with their intervals, and the calibration."""
    from ..evaluate import INTERVAL_METRICS

    mt = rep["metrics"]
    head = facts_table("leukoedge evaluate", [
        ("model", escape(rep["model"])),
        ("files / errors / unlabelled", f"{rep['files']} / {rep['errors']} / "
                                        f"{rep['unlabelled']}")])
    ivs = rep["intervals"]
    if mt is not None:
        head.add_row("images scored", str(mt.n))
        for k, v in (("weighted_f1", mt.weighted_f1), ("accuracy", mt.accuracy),
                     ("balanced_accuracy", mt.balanced_accuracy),
                     ("sensitivity_all", mt.sensitivity_all),
                     ("specificity_all", mt.specificity_all), ("roc_auc", mt.roc_auc),
                     ("majority_rate", mt.majority_rate)):
            iv = ivs.of(k) if ivs is not None and k in INTERVAL_METRICS else None
            ci = f"  (95% CI {iv.low:.4f}-{iv.high:.4f})" if iv is not None else ""
            head.add_row(k.replace("_", " "), _f(v) + ci)
    cal = rep["calibration"]
    if cal is not None:
        head.add_row("temperature", f"{rep['temperature']:.4f}")
        before = cal.uncalibrated
        for k, now, then in (("ece", cal.ece, None if before is None else before.ece),
                             ("brier", cal.brier, None if before is None else before.brier),
                             ("log_loss", cal.log_loss,
                              None if before is None else before.log_loss)):
            was = f"  (temperature 1: {then:.4f})" if then is not None else ""
            head.add_row(k.replace("_", " ") if k != "ece" else "ECE (15 bins)",
                         f"{now:.4f}{was}")
    if ivs is not None:
        head.add_row("intervals", f"patient bootstrap stratified by class: {ivs.resamples} "
                     f"resamples, seed {ivs.seed}, {ivs.patients_all} ALL + "
                     f"{ivs.patients_hem} HEM patients")
    out.print(head)


def _print_classes(mt: Metrics) -> None:
    """Per class figures and the confusion matrix."""
    from rich.table import Table

    pc = Table(title="per class", title_justify="left")
    for c in ("class", "precision", "recall", "F1", "support"):
        pc.add_column(c, justify="right" if c != "class" else "left")
    for name, v in mt.per_class.items():
        pc.add_row(name.upper(), _f(v.precision), _f(v.recall), _f(v.f1), str(v.support))
    out.print(pc)
    cm = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    cm.add_column("")
    cm.add_column("HEM", justify="right")
    cm.add_column("ALL", justify="right")
    for name, row in zip(("HEM", "ALL"), mt.confusion.matrix):
        cm.add_row(name, str(row[0]), str(row[1]))
    out.print(cm)
