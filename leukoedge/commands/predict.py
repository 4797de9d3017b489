"""``classify`` and ``evaluate``: images in, rows and metrics out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from ..console import err, escape, note, out
from ..errors import EXIT_OK, EXIT_SOME_FAILED, DataError
from ..output import ResultWriter, atomic_write_text, check_output_location, escape_path
from .common import open_model, progress_bar

# numpy-using modules (classify, data, evaluate) are imported inside the commands, so
# that ``leukoedge --help`` stays fast (docs/performance.md).
if TYPE_CHECKING:
    from ..classify import Prediction, RunStats
    from ..engines.parts import PartWriter
    from ..evaluate import Report
    from ..session import Model
    from ..spec import ModelSpec

from .options import (
    BatchOpt,
    LabelsOpt,
    ModelOpt,
    Paths,
    ProviderOpt,
    ThreadsOpt,
    ThresholdOpt,
    WorkersOpt,
)

OutOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Result file: .csv, or .jsonl for JSON Lines.")]
FormatOpt = Annotated[str | None, typer.Option(
    "--format", help="csv or jsonl (default: from the --out extension); parquet: --out is a "
    "folder of part files (the scale extra).", show_default=False)]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="local (this process) or ray (a Ray cluster; the scale extra).")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="With --engine ray: 'auto' or the cluster's address (default: a "
    "local cluster on this machine).", show_default=False)]
ActorsOpt = Annotated[int | None, typer.Option(
    "--actors", min=1, help="With --engine ray: model actors (default: one per node, or one "
    "per --gpus-per-actor GPUs).", show_default=False)]
GpusPerActorOpt = Annotated[float, typer.Option(
    "--gpus-per-actor", min=0.0, help="With --engine ray: GPUs reserved by each actor.")]


def check_engine(engine: str, address: str | None, actors: int | None, gpus: float) -> None:
    from ..errors import UsageError

    if engine not in ("local", "ray"):
        raise UsageError(f"unknown engine {engine!r}", "choose local or ray")
    if engine != "ray" and (address is not None or actors is not None or gpus):
        raise UsageError("--ray-address, --actors and --gpus-per-actor need --engine ray")
    if engine == "ray":  # a missing extra is said before anything is written
        from ..engines.ray_engine import import_ray

        import_ray()


def open_writer(out_file: Path, fmt: str | None, resume: bool,
                overwrite: bool) -> ResultWriter | PartWriter:
    """CSV/JSON Lines into one file, or Parquet part files into a folder (--format parquet)."""
    if fmt == "parquet":
        from ..engines.parts import PartWriter

        return PartWriter(out_file, resume=resume, overwrite=overwrite)
    return ResultWriter(out_file, fmt, resume=resume, overwrite=overwrite)


def classify(
    paths: Paths,
    model: ModelOpt = None,
    out_file: OutOpt = Path("predictions.csv"),
    fmt: FormatOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run: "
                                         "skip the files already in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing --out.")] = False,
    provider: ProviderOpt = "auto",
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    labels: LabelsOpt = None,
    threshold: ThresholdOpt = None,
    cam: Annotated[Path | None, typer.Option(
        "--cam", help="Write each image's heatmap overlay (PNG, original size) under this "
        "folder, mirroring the inputs' paths; the row's 'heatmap' names it. Needs a model "
        "exported with --cam.", show_default=False)] = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
    gpus_per_actor: GpusPerActorOpt = 0.0,
) -> int:
    """Classify every image under PATHS as ALL or HEM; rows go to --out as they come."""
    from ..classify import classify_files
    from ..data import collect

    check_engine(engine, ray_address, actors, gpus_per_actor)
    items = collect(paths, labels)
    check_output_location(out_file, paths)
    m = open_model(model, provider, threads, threshold)
    overlays = None
    if cam is not None:
        from ..errors import UsageError
        from ..heatmap import OverlayWriter

        check_output_location(cam, paths)
        if not m.has_cam:
            raise UsageError(f"--cam: {m.path} has no heatmap output",
                             "export the model with 'leukoedge export --cam'")
        overlays = OverlayWriter(cam, paths, m.spec.crop_fraction, overwrite or resume)
        if not (resume or overwrite):
            overlays.refuse_existing(it.path for it in items)
    with open_writer(out_file, fmt, resume, overwrite) as writer:
        if resume and writer.done:
            note(f"resuming {out_file}: {len(writer.done)} rows already there")
        todo = len(items)
        if writer.done:
            todo -= sum(1 for it in items if escape_path(it.path) in writer.done)
        with progress_bar(todo, "classify") as advance:
            if engine == "ray":
                from ..engines.ray_engine import RayOptions, classify_ray

                stats = classify_ray(m, items, writer, batch_size, workers, advance,
                                     RayOptions(ray_address, actors, gpus_per_actor),
                                     threads, overlays)
            else:
                stats = classify_files(m, items, writer, batch_size, workers, advance,
                                       overlays)
    _summary(stats, m, out_file, len(items))
    _drift(stats, writer.previous_rows, m)
    return EXIT_SOME_FAILED if stats.errors else EXIT_OK


def _drift(stats: RunStats, previous: list[dict[str, Any]], m: Model) -> None:
    """Per patient: median drift score and share of cells above 1.0 (this run's rows and a
    resumed file's), and the one line naming drifted patients."""
    if m.drift is None:
        return
    from ..drift import summary

    pairs = list(stats.drift)
    for r in previous:
        try:
            score = float(str(r.get("drift") or ""))
        except ValueError:
            continue
        patient = r.get("patient")
        pairs.append((str(patient) if patient else None, score))
    print_drift(summary([p for p, _ in pairs], [s for _, s in pairs], m.drift.patient_flag))


def print_drift(summary: dict[str, Any] | None) -> None:
    """The per-patient drift table and its one line (flagged patients: on stderr)."""
    if summary is None:
        return
    t = Table(title="drift per patient (1.0 = the 95th percentile of the training cells)",
              title_justify="left")
    for c in ("patient", "cells", "median drift", "cells > 1.0", "drifted"):
        t.add_column(c, justify="left" if c == "patient" else "right")
    for r in summary["patients"]:
        t.add_row(escape(r["patient"]), str(r["cells"]), f"{r['median']:.2f}",
                  f"{r['share_above']:.0%}", "[red]yes[/red]" if r["flagged"] else "no")
    out.print(t)
    (err if summary["flagged"] else out).print(escape(summary["line"]))


def _summary(stats: RunStats, m: Model, out_file: Path, total: int) -> None:
    t = Table(title="leukoedge classify", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    classified = stats.files - stats.errors
    t.add_row("model", escape(str(m.path)))
    t.add_row("provider", m.provider)
    t.add_row("files found", str(total))
    if stats.skipped:
        t.add_row("already done (resume)", str(stats.skipped))
    t.add_row("classified", str(classified))
    t.add_row("  ALL", str(stats.positives))
    t.add_row("  HEM", str(classified - stats.positives))
    t.add_row("errors", f"[red]{stats.errors}[/red]" if stats.errors else "0")
    t.add_row("speed", f"{stats.images_per_second:.1f} images/s")
    t.add_row("results", escape(str(out_file)))
    out.print(t)
    for e in stats.error_examples:
        err.print(f"[red]error:[/red] {escape(e)}")
    if stats.errors > len(stats.error_examples):
        err.print(f"... and {stats.errors - len(stats.error_examples)} more error rows "
                  f"in {escape(str(out_file))}")


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
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace existing output files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    provider: ProviderOpt = "auto",
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
) -> int:
    """Classify labelled images and report accuracy, weighted F1, AUC, calibration (ECE,
    Brier, log-loss), 95% intervals by patient, per patient..."""
    from ..classify import predict_stream
    from ..data import collect
    from ..evaluate import build_report

    if from_predictions is not None:
        if paths:
            from ..errors import UsageError

            raise UsageError("give images or --from-predictions, not both")
        rep = evaluate_predictions(from_predictions, model, labels, threshold, folds,
                                   resamples, seed)
        return _finish(rep, report, overwrite, as_json)
    if not paths:
        from ..errors import UsageError

        raise UsageError("no images given", "leukoedge evaluate IMAGES..., or "
                         "leukoedge evaluate --from-predictions FILE")
    if folds is not None:
        from ..errors import UsageError

        raise UsageError("--folds selects rows of a predictions file",
                         "use it with --from-predictions")
    items = collect(paths, labels)
    if not any(it.label is not None for it in items):
        raise DataError("no labels found for these images",
                        "put them under all/ and hem/ folders, name them *_all/*_hem, "
                        "or pass --labels C-NMC_test_prelim_phase_data_labels.csv")
    for target in (report, predictions):
        if target is not None:
            check_output_location(target, paths)
    if (report is not None and predictions is not None
            and report.absolute() == predictions.absolute()):
        from ..errors import UsageError

        raise UsageError("--report and --predictions name the same file",
                         "the report would replace the rows; choose two files")
    if report is not None and report.exists() and not overwrite:
        from ..errors import OutputExistsError

        raise OutputExistsError(f"report {report} already exists",
                                "add --overwrite or choose another --report")
    m = open_model(model, provider, threads, threshold)
    writer = ResultWriter(predictions, overwrite=overwrite) if predictions else None
    preds: list[Prediction] = []
    try:
        with progress_bar(len(items), "evaluate") as advance:
            def on_batch(batch: list[Prediction]) -> None:
                if writer is not None:
                    writer.write([p.row for p in batch])
                advance(len(batch))

            preds = list(predict_stream(m, items, batch_size, workers, on_batch=on_batch))
    finally:
        if writer is not None:
            writer.close()
    rep = build_report(preds, m, resamples, seed)
    return _finish(rep, report, overwrite, as_json)


def _finish(rep: Report, report: Path | None, overwrite: bool, as_json: bool) -> int:
    from ..evaluate import clean

    if report is not None and report.exists() and not overwrite:
        from ..errors import OutputExistsError

        raise OutputExistsError(f"report {report} already exists",
                                "add --overwrite or choose another --report")
    for w in rep["warnings"]:
        err.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if report is not None:
        atomic_write_text(report, json.dumps(clean(rep), indent=2) + "\n")
    if as_json:
        out.print_json(json.dumps(clean(rep)))
    else:
        print_report(rep)
        if report is not None:
            note(f"report written to {report}")
    return EXIT_SOME_FAILED if rep["errors"] else EXIT_OK


def spec_for_predictions(model: Path | None, threshold: float | None) -> tuple[str, ModelSpec]:
    """The spec that scores a predictions file: the model's (read and checked against its
    graph, never run), or without --model temperature 1 and threshold 0.5."""
    from ..session import SessionConfig, load_model
    from ..spec import ModelSpec

    if model is None:
        note("no --model: scoring the rows' logits at temperature 1, threshold 0.5")
        spec = ModelSpec(architecture="unknown", input_size=8)
        name = "(none)"
    else:
        spec = load_model(model, SessionConfig(provider="cpu", threads=1)).spec
        name = str(model)
    if threshold is not None:
        spec = spec.with_updates(threshold=threshold)
    return name, spec


def evaluate_predictions(path: Path, model: Path | None, labels: Path | None,
                         threshold: float | None, folds: str | None, resamples: int,
                         seed: int) -> Report:
    from ..errors import DataError
    from ..evaluate import report_of
    from ..predictions import read_predictions
    from .calibrate import parse_folds

    ps = read_predictions(path, labels, parse_folds(folds))
    if not any(t is not None for t in ps.truth):
        raise DataError(f"{path}: no row has a label",
                        "give --labels FILE, or rows whose paths lie in all/ and hem/")
    name, spec = spec_for_predictions(model, threshold)
    if not ps.has_logits and spec.temperature != 1.0:
        note("the rows carry no logits: their prob_all is used as written, without this "
             "model's temperature")
    return report_of(ps.scores(spec), spec, model=name, provider="(predictions file)",
                     files=ps.files, error_rows=ps.errors, resamples=resamples, seed=seed,
                     from_file=True)


def _f(x: object) -> str:
    return "-" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def print_report(rep: Report) -> None:
    mt = rep["metrics"]
    head = Table(title="leukoedge evaluate", show_header=False, title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("model", escape(rep["model"]))
    head.add_row("files / errors / unlabelled",
                 f"{rep['files']} / {rep['errors']} / {rep['unlabelled']}")
    if mt:
        head.add_row("images scored", str(mt["n"]))
        for k in ("weighted_f1", "accuracy", "balanced_accuracy", "sensitivity_all",
                  "specificity_all", "roc_auc", "majority_rate"):
            iv = (rep["intervals"] or {}).get(k)
            ci = f"  (95% CI {iv['low']:.4f}-{iv['high']:.4f})" if iv else ""
            head.add_row(k.replace("_", " "), _f(mt[k]) + ci)
    cal = rep["calibration"]
    if cal:
        head.add_row("temperature", f"{rep['temperature']:.4f}")
        before = cal.get("uncalibrated")
        for k in ("ece", "brier", "log_loss"):
            was = f"  (temperature 1: {before[k]:.4f})" if before else ""
            head.add_row(k.replace("_", " ") if k != "ece" else "ECE (15 bins)",
                         f"{cal[k]:.4f}{was}")
    iv = rep["intervals"]
    if iv:
        head.add_row("intervals", f"patient bootstrap stratified by class: {iv['resamples']} "
                     f"resamples, seed {iv['seed']}, {iv['patients_all']} ALL + "
                     f"{iv['patients_hem']} HEM patients")
    out.print(head)
    if mt:
        pc = Table(title="per class", title_justify="left")
        for c in ("class", "precision", "recall", "F1", "support"):
            pc.add_column(c, justify="right" if c != "class" else "left")
        for name, v in mt["per_class"].items():
            pc.add_row(name.upper(), _f(v["precision"]), _f(v["recall"]), _f(v["f1"]),
                       str(v["support"]))
        out.print(pc)
        cm = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
        cm.add_column("")
        cm.add_column("HEM", justify="right")
        cm.add_column("ALL", justify="right")
        for name, row in zip(("HEM", "ALL"), mt["confusion"]["matrix"]):
            cm.add_row(name, str(row[0]), str(row[1]))
        out.print(cm)
    if rep["patients"]:
        pt = Table(title="per patient", title_justify="left")
        for c in ("patient", "truth", "cells", "pred ALL", "mean P(ALL)", "accuracy", "vote"):
            pt.add_column(c)
        for r in rep["patients"]:
            pt.add_row(r["patient"], r["true_label"] or "-", str(r["cells"]),
                       str(r["predicted_all"]), _f(r["mean_prob_all"]), _f(r["accuracy"]),
                       r["vote"])
        out.print(pt)
    pv = rep["patient_vote"]
    if pv:
        out.print(f"patient-level vote: {pv['patients']} patients, accuracy "
                  f"{pv['accuracy']:.4f}, weighted F1 {pv['weighted_f1']:.4f}")
    print_drift(rep.get("drift"))
    if rep["errors"]:
        err.print(f"[red]{rep['errors']} files could not be read[/red] (not in the metrics):")
        for e in rep["error_rows"][:5]:
            err.print(f"  {escape(e['error'])}")
