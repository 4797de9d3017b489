"""``report``: a predictions file -> one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import note
from ..errors import EXIT_OK
from ..output import refuse_existing
from .common import parse_folds, say, warn
from .options import FoldsOpt, LabelsOpt, MinCellsOpt, OverwriteOpt, ThresholdOpt


def report(
    predictions: Annotated[Path, typer.Argument(
        help="A predictions file: classify's rows (.csv/.jsonl), or out-of-fold predictions "
             "with logits.", show_default=False)],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")]
    = Path("report.html"),
    labels: LabelsOpt = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="The model whose spec (temperature, threshold, drift flag, "
        "patient rule) scores the rows; default: the model recorded in the file's "
        ".meta.json, else temperature 1, threshold 0.5 and no drift flag.",
        show_default=False)] = None,
    folds: FoldsOpt = None,
    images_root: Annotated[Path | None, typer.Option(
        "--images-root", help="Folder the rows' relative paths start from (default: the "
        "predictions file's folder).", show_default=False)] = None,
    title: Annotated[str, typer.Option("--title", help="The page's title.")]
    = "leukoedge report",
    cells: Annotated[int, typer.Option("--cells", min=0, max=200,
                                       help="Cells per thumbnail montage.")] = 12,
    resamples: Annotated[int, typer.Option(
        "--resamples", min=0, max=100_000,
        help="Patient-bootstrap resamples for the 95% intervals (0: none).")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    threshold: ThresholdOpt = None,
    overwrite: OverwriteOpt = False,
    min_cells: MinCellsOpt = None,
) -> int:
    """Write an HTML report of a predictions file: figures with intervals, histograms, ROC,
    reliability, confusion, per patient, thumbnails (needs the report extra)."""
    from ..evaluate import report_from_predictions
    from ..report import require_matplotlib, write_report

    require_matplotlib()
    refuse_existing(out_file, overwrite)
    got = report_from_predictions(predictions, model=model, labels=labels,
                                  threshold=threshold, folds=parse_folds(folds),
                                  resamples=resamples, seed=seed, min_cells=min_cells)
    say(got.messages)
    for w in got.report["warnings"]:
        warn(w)
    size = write_report(out_file, got, title=title, images_root=images_root,
                        per_montage=cells)
    note(f"report written to {out_file} ({size / 1e6:.1f} MB)")
    return EXIT_OK
