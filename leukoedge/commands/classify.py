"""``classify``: images in, one row per image out, as they come."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..console import err, escape, facts_table, note, out
from ..errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from ..output import check_output_location, refuse_existing, write_patients
from .common import (
    open_model,
    print_drift,
    print_patients,
    progress_bar,
    view_of_model,
)
from .options import (
    BatchOpt,
    LabelsOpt,
    MinCellsOpt,
    ModelOpt,
    OverwriteOpt,
    Paths,
    PrecisionOpt,
    ProviderOpt,
    ThreadsOpt,
    ThresholdOpt,
    WorkersOpt,
)

# numpy-using modules (classify, data, heatmap) are imported inside the command, so that
# ``leukoedge --help`` stays fast (docs/performance.md).
if TYPE_CHECKING:
    from ..classify import RunStats
    from ..data import Item
    from ..engines import Engine
    from ..heatmap import OverlayWriter
    from ..session import Model

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
    """``--engine`` and the Ray flags agree; a missing Ray is said before anything runs."""
    from ..engines import ENGINES

    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", "choose local or ray")
    if engine != "ray" and (address is not None or actors is not None or gpus):
        raise UsageError("--ray-address, --actors and --gpus-per-actor need --engine ray")
    if engine == "ray":  # a missing extra is said before anything is written
        from ..engines.ray_engine import import_ray

        import_ray()


def classify(
    paths: Paths,
    model: ModelOpt = None,
    out_file: OutOpt = Path("predictions.csv"),
    fmt: FormatOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted run: "
                                         "skip the files already in --out.")] = False,
    overwrite: OverwriteOpt = False,
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = "f32",
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
    patients_out: Annotated[Path | None, typer.Option(
        "--patients-out", help="Also write the per-patient summary here (.csv, or .jsonl "
        "for JSON Lines): cells, share called ALL with its interval, drift, call.",
        show_default=False)] = None,
    min_cells: MinCellsOpt = None,
) -> int:
    """Classify every image under PATHS as ALL or HEM; rows go to --out as they come."""
    from ..classify import drift_of_run
    from ..data import collect
    from ..engines import pending
    from ..output import open_rows
    from ..provenance import record_model

    check_engine(engine, ray_address, actors, gpus_per_actor)
    items = collect(paths, labels)
    check_output_location(out_file, paths)
    _check_patients_out(patients_out, out_file, paths, resume, overwrite)
    m = open_model(model, provider, threads, threshold, precision)
    view = view_of_model(m, min_cells)
    overlays = None if cam is None else open_overlays(cam, paths, items, m, resume, overwrite)
    with open_rows(out_file, fmt, resume, overwrite) as writer:
        if resume and writer.done:
            note(f"resuming {out_file}: {len(writer.done)} rows already there")
        if fmt != "parquet":
            said = record_model(out_file, m, resumed=bool(resume and writer.done))
            if said:
                note(said)
        work = pending(items, writer.done)
        run = _engine(engine, batch_size, workers, overlays, threads,
                      (ray_address, actors, gpus_per_actor))
        with progress_bar(len(work.todo), "classify") as advance:
            stats = run.run(m, work.todo, writer, advance)
        stats.skipped = work.skipped
    _summary(stats, m, out_file, len(items))
    previous = getattr(writer, "previous_rows", [])
    if m.drift is not None:
        print_drift(drift_of_run(stats, previous, m.drift.patient_flag, view.rule.min_cells))
    for r in previous:
        stats.patients.add_record(r, m.spec.positive)
    rows = stats.patients.summaries(view)
    print_patients(rows, view)
    if patients_out is not None:
        write_patients(patients_out, rows)
        note(f"per-patient summary written to {patients_out}")
    return EXIT_SOME_FAILED if stats.errors else EXIT_OK


def _engine(name: str, batch_size: int, workers: int | None, overlays: OverlayWriter | None,
            threads: int | None, ray: tuple[str | None, int | None, float]) -> Engine:
    """The engine ``--engine`` names, with its settings (``ray``: --ray-address, --actors,
    --gpus-per-actor, checked by :func:`check_engine`)."""
    if name == "ray":
        from ..engines.ray_engine import RayEngine, RayOptions

        return RayEngine(batch_size, workers, RayOptions(*ray), threads, overlays, note)
    from ..engines.local import LocalEngine

    return LocalEngine(batch_size, workers, overlays)


def _check_patients_out(path: Path | None, out_file: Path, paths: list[Path], resume: bool,
                        overwrite: bool) -> None:
    """--patients-out: outside the inputs, not --out, not replaced without --overwrite or
    --resume (a resumed run rewrites it over all its rows)."""
    if path is None:
        return
    check_output_location(path, paths)
    if path.absolute() == out_file.absolute():
        raise UsageError("--patients-out and --out name the same file", "choose two files")
    refuse_existing(path, resume or overwrite,
                    "add --overwrite, or choose another --patients-out")


def open_overlays(cam: Path, paths: list[Path], items: list[Item], m: Model, resume: bool,
                  overwrite: bool) -> OverlayWriter:
    """``--cam``: where the heatmap overlays go; the model must have a heatmap output."""
    from ..heatmap import OverlayWriter

    check_output_location(cam, paths)
    if not m.has_cam:
        raise UsageError(f"--cam: {m.path} has no heatmap output",
                         "export the model with 'leukoedge export --cam'")
    overlays = OverlayWriter(cam, paths, m.spec.crop_fraction, overwrite or resume)
    if not (resume or overwrite):
        overlays.refuse_existing(it.path for it in items)
    return overlays


def _summary(stats: RunStats, m: Model, out_file: Path, total: int) -> None:
    t = facts_table("leukoedge classify")
    classified = stats.files - stats.errors
    t.add_row("model", escape(str(m.path)))
    t.add_row("provider", f"{m.provider} ({m.precision})" if m.provider == "openvino"
              else m.provider)
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


