"""``leukoedge cv folds|run|final|report``: cross-validation by patient (see :mod:`..cv`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from leukoedge.errors import EXIT_OK, UsageError

DataArg = Annotated[list[Path], typer.Argument(
    help="Folders of labelled cells with C-NMC names (fold_*/all|hem/*.bmp, "
         "as the C-NMC 2019 download unpacks).")]

app = typer.Typer(help="Cross-validation by patient: folds, out-of-fold runs, reports.",
                  no_args_is_help=True)


@app.command("folds")
def folds(
    data: DataArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folds CSV to write.")],
    k: Annotated[int, typer.Option("--k", min=2, max=20, help="Number of folds.")] = 5,
) -> int:
    """Assign every patient to one fold (stratified by class, balanced by patients)."""
    from leukoedge.console import out as stdout

    from .. import cv

    items = cv.labelled_items(data)
    assignment = cv.assign_folds(items, k)
    cv.write_folds(out, cv.folds_table(items, assignment))
    for r in cv.describe_folds(items, assignment):
        stdout.print(f"fold {r['fold']}: {r['cells']} cells ({r['all_cells']} ALL from "
                     f"{r['all_patients']} patients, {r['hem_cells']} HEM from "
                     f"{r['hem_patients']} patients)")
    stdout.print(f"wrote {out}", markup=False)
    return EXIT_OK


@app.command("run")
def run(
    data: DataArg,
    folds_file: Annotated[Path, typer.Option("--folds", help="Folds CSV from 'cv folds'.")],
    recipe: Annotated[str, typer.Option("--recipe", help="Recipe name (see docs/accuracy.md).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for fold runs and "
                                      "out-of-fold predictions.")],
    only: Annotated[str | None, typer.Option(
        "--only", help="Comma-separated folds to run, e.g. 0,1,2 [default: all].",
        show_default=False)] = None,
    screen: Annotated[bool, typer.Option(
        "--screen", help="Cheap screening: 64 px, 10 epochs.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
) -> int:
    """Train one model per fold and write out-of-fold logits; resumable (run it again)."""
    from leukoedge.plugins import require_torch

    require_torch("cv run")
    from leukoedge.console import note

    from .. import cv
    from ..recipes import get_recipe

    r = get_recipe(recipe)
    items = cv.labelled_items(data)
    assignment = cv.read_folds(folds_file)
    k = max(assignment.values()) + 1
    wanted = list(range(k)) if only is None else _parse_only(only, k)
    root = cv.common_root(data)
    cv.begin_run(out, r, screen, folds_file, data, cv.describe_folds(items, assignment))
    for f in wanted:
        note(f"cv {r.name}{' (screen)' if screen else ''}: fold {f} of {k}")
        res = cv.run_fold(items, assignment, f, recipe, out, root, screen, threads)
        if res.skipped:
            note(f"fold {f}: {res.oof} exists, skipped")
        else:
            note(f"fold {f}: {res.epochs} epochs in {res.seconds / 60:.1f} min -> {res.oof}")
        cv.write_report(out)
    return EXIT_OK


@app.command("final")
def final(
    data: DataArg,
    recipe: Annotated[str, typer.Option("--recipe", help="Recipe name (see docs/accuracy.md).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for the final model.")],
    cv_report: Annotated[Path | None, typer.Option(
        "--cv-report", help="The recipe's 'cv run' report.json: its figures go into the "
        "model's spec.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1)] = None,
) -> int:
    """Train a recipe on every patient (the model to ship); resumable (run it again)."""
    from leukoedge.plugins import require_torch

    require_torch("cv final")
    from leukoedge.console import out as stdout

    from .. import cv

    if cv_report is not None and not cv_report.is_file():
        raise UsageError(f"--cv-report {cv_report}: file not found",
                         "pass the report.json of 'leukoedge cv run' for this recipe")
    items = cv.labelled_items(data)
    command = " ".join(["leukoedge cv final", *map(str, data), "--recipe", recipe,
                        "--out", str(out)]
                       + (["--cv-report", str(cv_report)] if cv_report else []))
    last = cv.fit_final(items, recipe, out, cv.common_root(data), cv_report,
                        command, threads)
    stdout.print(f"final model: {last} (export it with: leukoedge export {last})",
                 markup=False)
    return EXIT_OK


@app.command("report")
def report(
    out: Annotated[Path, typer.Argument(help="A 'cv run' folder.")],
) -> int:
    """Pooled, per-fold and per-patient figures of the out-of-fold predictions."""
    from leukoedge.console import out as stdout

    from .. import cv

    cv.write_report(out)
    stdout.print((out / "report.md").read_text(), markup=False)
    return EXIT_OK


def _parse_only(text: str, k: int) -> list[int]:
    try:
        got = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UsageError(f"--only {text!r}: not a list of fold numbers") from None
    bad = [f for f in got if not 0 <= f < k]
    if bad or not got:
        raise UsageError(f"--only {text!r}: folds are 0..{k - 1}")
    return got
