"""``calibrate``: a temperature and an operating point, written into a copy of the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..console import err, escape, out
from ..errors import EXIT_OK, OutputExistsError, UsageError
from .options import BatchOpt, LabelsOpt, ProviderOpt, ThreadsOpt, WorkersOpt

if TYPE_CHECKING:
    from ..calibrate import Calibration

FoldsOpt = Annotated[str | None, typer.Option(
    "--folds", help="Only the rows of these folds (comma-separated) of a predictions file "
                    "with a 'fold' column, e.g. 0,1,2.", show_default=False)]
FromPredictionsOpt = Annotated[Path | None, typer.Option(
    "--from-predictions", help="Fit on this predictions file's logits (classify's rows, or "
                               "out-of-fold predictions) instead of running the model.",
    show_default=False)]


def parse_folds(folds: str | None) -> list[str] | None:
    if folds is None:
        return None
    parts = [f.strip() for f in folds.split(",") if f.strip()]
    if not parts:
        raise UsageError("--folds names no fold", "e.g. --folds 0,1,2")
    return parts


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


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
    batch_size: BatchOpt = 32,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
) -> int:
    """Fit a temperature (NLL) and pick a threshold on labelled cells; write the model
    with them in its spec. Default threshold rule: best weighted F1."""
    import numpy as np

    from ..calibrate import Rule, calibrate, calibrated_spec, write_model
    from ..session import SessionConfig, load_model

    if target_sensitivity is not None and target_specificity is not None:
        raise UsageError("--target-sensitivity and --target-specificity contradict each "
                         "other", "choose one operating point")
    rule = (Rule("sensitivity", target_sensitivity) if target_sensitivity is not None
            else Rule("specificity", target_specificity) if target_specificity is not None
            else Rule())
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
    m = load_model(model, SessionConfig(provider=provider, threads=threads))
    spec = m.spec
    if from_predictions is not None:
        from ..predictions import read_predictions

        ps = read_predictions(from_predictions, labels, parse_folds(folds))
        if not ps.has_logits:
            from ..errors import DataError

            raise DataError(f"{from_predictions}: the rows carry no logit for every cell",
                            "classify with this release (it writes the logit column)")
        keep = [i for i, t in enumerate(ps.truth) if t is not None]
        logits = np.asarray([ps.logits[i] for i in keep])
        y = np.asarray([ps.truth[i] for i in keep], dtype=np.int64)
        patients = sorted({p for i in keep if (p := ps.patients[i])})
        fp = ps.fingerprint()
        source = f"predictions {from_predictions.name}" + (f" folds {folds}" if folds else "")
    else:
        from ..classify import predict_stream
        from ..data import collect, fingerprint
        from .common import progress_bar

        assert data is not None
        items = [it for it in collect(data, labels) if it.label is not None]
        if not items:
            from ..errors import DataError

            raise DataError("no labelled image to calibrate on",
                            "put them under all/ and hem/ folders, or pass --labels")
        with progress_bar(len(items), "calibrate") as advance:
            preds = list(predict_stream(m, items, batch_size, workers,
                                        on_batch=lambda b: advance(len(b))))
        ok = [p for p in preds if p.row.error is None and p.row.logit is not None]
        if len(ok) < len(preds):
            warn(f"{len(preds) - len(ok)} images could not be read and are left out")
        logits = np.asarray([p.row.logit for p in ok], dtype=np.float64)
        y = np.asarray([p.item.label for p in ok], dtype=np.int64)
        patients = sorted({p.item.patient for p in ok if p.item.patient})
        fp = fingerprint(p.item for p in ok)
        source = "images " + ", ".join(str(d) for d in data)[:200]
    trained = sorted(set(patients) & set(spec.training.get("patients") or ()))
    if trained:
        shown = f"{', '.join(trained[:8])}{', ...' if len(trained) > 8 else ''}"
        why = ("if these logits are this model's (not out-of-fold), they are over-confident "
               "and the temperature will be too low" if from_predictions is not None else
               "their logits are over-confident, so the temperature will be too low")
        warn(f"calibrating on {len(trained)} patients the model was trained on ({shown}): "
             f"{why}")
    cal = calibrate(spec, logits, y, patients, rule)
    new = calibrated_spec(spec, cal, fp, source)
    write_model(model, out_file, new)
    load_model(out_file, SessionConfig(provider="cpu", threads=1))  # reads back, verified
    if as_json:
        out.print_json(json.dumps({"model": str(out_file), **cal.as_dict(),
                                   "spec_calibration": new.calibration}))
    else:
        print_calibration(cal, out_file)
    return EXIT_OK


def _f(x: float) -> str:
    return f"{x:.4f}"


def print_calibration(cal: Calibration, out_file: Path) -> None:
    t = Table(title="leukoedge calibrate", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("cells / ALL / HEM", f"{cal.cells} / {cal.cells_all} / {cal.cells_hem}")
    t.add_row("patients", str(len(cal.patients)))
    t.add_row("temperature", f"{cal.temperature:.4f}")
    t.add_row("NLL before / after", f"{_f(cal.nll_at_1)} / {_f(cal.nll)}")
    t.add_row("ECE before / after", f"{_f(cal.before['ece'])} / {_f(cal.after['ece'])}")
    t.add_row("Brier before / after", f"{_f(cal.before['brier'])} / {_f(cal.after['brier'])}")
    t.add_row("threshold rule", cal.rule.describe())
    t.add_row("threshold P(ALL)", f"{cal.threshold:.6f} (logit {cal.logit_threshold:.4f})")
    for k in ("sensitivity_all", "specificity_all", "weighted_f1"):
        t.add_row(f"{k.replace('_', ' ')} (calibration cells)", _f(cal.at_threshold[k]))
    t.add_row("written", escape(str(out_file)))
    out.print(t)
    out.print("[dim]figures on the calibration cells; evaluate on other patients to judge "
              "them[/dim]")
