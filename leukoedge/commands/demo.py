"""``demo``: the whole job on built-in data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from ..console import err, escape, out
from ..errors import EXIT_OK


def demo(
    workdir: Annotated[Path, typer.Option(
        "--workdir", help="Where everything goes; an existing non-empty folder is never "
        "reused (a -2, -3 ... suffix is added).")] = Path("leukoedge-demo"),
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data and training.")] = 0,
) -> int:
    """Synthesise cells, train, export, check parity, classify and evaluate: ~5 min on a CPU."""
    from ..capabilities import exporter, trainer
    from ..demo import DemoConfig, run_demo, unused_workdir

    trainer("demo")  # without the train extra: say so before anything is written
    exporter("demo")
    wd = unused_workdir(workdir)
    err.print(Panel(
        "This demo trains a small model on [bold]synthetic[/bold] cells for a couple of "
        "minutes. It shows the pipeline working end to end; the model is [bold red]not a "
        "diagnostic model[/bold red] and its predictions on real cells mean nothing.",
        title="leukoedge demo", expand=False))
    t0 = time.perf_counter()
    res = run_demo(wd, DemoConfig(epochs=epochs, seed=seed),
                   say=lambda s: err.print(f"[bold cyan]{escape(s)}[/bold cyan]"))
    total = time.perf_counter() - t0
    f = res.facts
    m = f["heldout"]["metrics"]
    t = Table(title="leukoedge demo: summary", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    t.add_row("validation weighted F1 (synthetic, by patient)",
              f"{f['val_weighted_f1']:.3f} (best epoch {f['best_epoch']})")
    t.add_row("held-out synthetic patients",
              f"{m['n']} cells: accuracy {m['accuracy']:.3f}, weighted F1 "
              f"{m['weighted_f1']:.3f}, ROC AUC {m['roc_auc']:.3f}")
    pv = f["heldout"]["patient_vote"]
    if pv:
        t.add_row("patient-level vote", f"{pv['patients']} patients, accuracy "
                  f"{pv['accuracy']:.3f}")
    t.add_row("parity ONNX vs PyTorch", f"max |diff| {f['parity_max_abs_diff']:.2g} on "
              f"{f['parity_images']} real cells: pass")
    t.add_row("real C-NMC cells classified", f"{f['real_cells']} ({f['real_predicted_all']} "
              f"called ALL, {f['real_errors']} errors) - not meaningful, see above")
    t.add_row("provider", f["provider"])
    t.add_row("time", ", ".join(f"{k} {v:.0f} s" for k, v in res.steps.items())
              + f"; total {total:.0f} s")
    t.add_row("everything is in", escape(str(wd)))
    out.print(t)
    out.print(f"Next: leukoedge classify YOUR_CELLS --model {escape(str(wd / 'model.onnx'))}"
              " (after training on real data: leukoedge train scratch C-NMC_training_data)")
    return EXIT_OK
