"""``demo``: the whole job on built-in data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table

from ..console import err, escape, facts_table, note, out
from ..errors import EXIT_OK, MissingExtraError


def demo(
    workdir: Annotated[Path, typer.Option(
        "--workdir", help="Where everything goes; an existing non-empty folder is never "
        "reused (a -2, -3 ... suffix is added).")] = Path("leukoedge-demo"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data and training.")] = 0,
    pipeline: Annotated[bool, typer.Option(
        "--pipeline/--no-pipeline", help="Also run part 2, the training pipeline on "
        "synthetic cells (needs the train extra).")] = True,
) -> int:
    """The shipped model on real cells, then synthesise, train, export, check parity,
    classify and evaluate: about 1 min on 2 idle CPU cores, mostly training; longer on a
    busy machine (docs/demo.md)."""
    from ..demo import unused_workdir
    from ..models import default_model

    wd = unused_workdir(workdir)
    t0 = time.perf_counter()
    shipped = default_model()
    if shipped is None:
        note("part 1 skipped: this installation has no shipped model "
             "(leukoedge/models/default.onnx)")
    else:
        _part1(wd, shipped)
    if pipeline:
        from ..capabilities import exporter, trainer

        try:
            trainer("demo")
            exporter("demo")
        except MissingExtraError as exc:
            note(f"part 2 (training pipeline) skipped: {exc}")
        else:
            _part2(wd, epochs, seed)
    out.print(f"total {time.perf_counter() - t0:.0f} s; everything is in {escape(str(wd))}")
    return EXIT_OK


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _part1(wd: Path, shipped: Path) -> None:
    from ..demo import shipped_demo

    err.print("[bold cyan]part 1: the shipped model on the real cells shipped with "
              "leukoedge[/bold cyan]")
    t0 = time.perf_counter()
    res = shipped_demo(wd, shipped)
    tr: dict[str, Any] = res.training
    recipe = tr.get("recipe", {}).get("name", "?")
    cv = tr.get("cv", {})
    pooled = cv.get("pooled", {})
    lines = [f"Model: {escape(str(res.model))} ({escape(str(recipe))} recipe), trained on "
             f"{escape(str(tr.get('data', 'real C-NMC cells')))}."]
    if pooled:
        lines.append(
            f"[bold]Cross-validated by patient[/bold] ({len(cv.get('folds', []))} folds, "
            f"{pooled.get('cells')} cells, each predicted by a model that never saw its "
            f"patient): weighted F1 [bold]{pooled['weighted_f1']:.3f}[/bold], ROC AUC "
            f"{pooled['roc_auc']:.3f}, sensitivity {pooled['sensitivity_all']:.3f}, "
            f"specificity {pooled['specificity_all']:.3f}. Expect about this on new "
            "patients; it varies from patient to patient (docs/accuracy.md).")
    lines.append("Research software, [bold red]not a diagnostic device[/bold red].")
    out.print(Panel("\n".join(lines), title="leukoedge demo: the shipped model",
                    expand=False), soft_wrap=False)
    t = Table(title="real C-NMC cells shipped with leukoedge", title_justify="left")
    for col in ("cell", "truth", "call", "P(ALL)", "patient in training",
                "out-of-fold P(ALL)"):
        t.add_column(col)
    for c in res.cells:
        call = c.error or (c.call or "-").upper()
        ok = c.call is not None and c.call == c.truth
        style = "green" if ok else "red"
        t.add_row(escape(Path(c.name).name), (c.truth or "?").upper(),
                  f"[{style}]{escape(call)}[/]", _pct(c.prob_all),
                  "yes: optimistic" if c.training_patient else "no", _pct(c.oof_prob_all))
    out.print(t, soft_wrap=False)
    seen = sum(c.training_patient for c in res.cells)
    right = sum(c.call == c.truth for c in res.cells)
    oof_right = sum((c.oof_prob_all is not None) and ((c.oof_prob_all >= 0.5) ==
                                                     (c.truth == "all")) for c in res.cells)
    out.print(f"{right}/{len(res.cells)} called right by the shipped model; {seen} of these "
              f"cells come from its training patients, so that count is optimistic. The "
              f"cross-validation models that never saw their patients (out-of-fold) called "
              f"{oof_right}/{len(res.cells)} right. Twelve cells are a taste, not a test. "
              f"({time.perf_counter() - t0:.1f} s; rows in {escape(str(res.predictions))})")


def _part2(wd: Path, epochs: int, seed: int) -> None:
    from ..demo import DemoConfig, run_demo

    err.print(Panel(
        "Part 2 trains a small model on [bold]synthetic[/bold] cells for a minute or two. It "
        "shows the training pipeline working end to end (train, export, parity, classify, "
        "evaluate); that model is [bold red]not a diagnostic model[/bold red].",
        title="leukoedge demo: the training pipeline", expand=False), soft_wrap=False)
    t0 = time.perf_counter()
    res = run_demo(wd / "pipeline", DemoConfig(epochs=epochs, seed=seed),
                   say=lambda s: err.print(f"[bold cyan]{escape(s)}[/bold cyan]"))
    total = time.perf_counter() - t0
    f = res.facts
    m = f.heldout["metrics"]
    t = facts_table("leukoedge demo: the pipeline on synthetic cells")
    t.add_row("validation weighted F1 (synthetic, by patient)",
              f"{f.val_weighted_f1:.3f} (best epoch {f.best_epoch})")
    if m is not None:
        auc = "-" if m.roc_auc is None else f"{m.roc_auc:.3f}"
        t.add_row("held-out synthetic patients",
                  f"{m.n} cells: accuracy {m.accuracy:.3f}, weighted F1 "
                  f"{m.weighted_f1:.3f}, ROC AUC {auc}")
    pv = f.heldout["patient_vote"]
    if pv is not None:
        t.add_row("patient-level vote", f"{pv.patients} patients, accuracy "
                  f"{pv.accuracy:.3f}")
    t.add_row("parity ONNX vs PyTorch", f"max |diff| {f.parity_max_abs_diff:.2g} on "
              f"{f.parity_images} real cells: pass")
    t.add_row("provider", f.provider)
    t.add_row("time", ", ".join(f"{k} {v:.0f} s" for k, v in res.steps.items())
              + f"; total {total:.0f} s")
    t.add_row("everything is in", escape(str(res.workdir)))
    out.print(t)
    out.print("Next: leukoedge classify YOUR_CELLS (the shipped model), or train your own: "
              "leukoedge train scratch C-NMC_training_data")
