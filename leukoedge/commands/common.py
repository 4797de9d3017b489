"""What several commands share: opening the model, the progress bar, ``--folds``,
warnings and a library call's messages, the drift and patient tables."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import err, escape, note, out

if TYPE_CHECKING:  # session imports numpy: loaded when a command runs, not for --help
    from rich.progress import Task
    from rich.text import Text

    from ..drift import DriftSummary
    from ..evaluate import Message
    from ..patient import PatientSummary, PatientView
    from ..session import Model


def open_model(model: Path | None, provider: str, threads: int | None,
               threshold: float | None = None, precision: str = "f32",
               spin: bool = True) -> Model:
    from ..session import SessionConfig, load_model

    path = model if model is not None else choose_model()
    m = load_model(path, SessionConfig(provider=provider, threads=threads,
                                       precision=precision, spin=spin))
    for n in m.notes:
        note(n)
    if threshold is not None:
        m.spec = m.spec.with_updates(threshold=threshold)
    return m


def choose_model() -> Path:
    """No ``--model``: :func:`leukoedge.session.choose_model`, saying which it took."""
    from ..session import choose_model as choose

    path, said = choose()
    note(said)
    return path


@contextmanager
def progress_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with images/s on stderr (silent when stderr is no terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Rate(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task: Task) -> Text:
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:6.1f} img/s" if speed else "   -- img/s", style="cyan")

    progress = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), Rate(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


def parse_folds(folds: str | None) -> list[str] | None:
    """``--folds 0,1,2`` -> ``["0", "1", "2"]`` (:func:`leukoedge.predictions.parse_folds`,
    imported here when used: it brings numpy)."""
    from ..predictions import parse_folds as parse

    return parse(folds)


def warn(message: str) -> None:
    """One warning line on stderr (plain text)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


def print_drift(summary: DriftSummary | None) -> None:
    """The per-patient drift table and its one line (flagged patients: on stderr)."""
    if summary is None:
        return
    from rich.table import Table

    t = Table(title="drift per patient (1.0 = the 95th percentile of the training cells)",
              title_justify="left")
    for c in ("patient", "cells", "median drift", "cells > 1.0", "drifted"):
        t.add_column(c, justify="left" if c == "patient" else "right")
    for r in summary.patients:
        t.add_row(escape(r.patient), str(r.cells), f"{r.median:.2f}",
                  f"{r.share_above:.0%}", "[red]yes[/red]" if r.flagged
                  else f"no ({r.note})" if r.note else "no")
    out.print(t)
    (err if summary.flagged else out).print(escape(summary.line))


def view_of_model(m: Model, min_cells: int | None) -> PatientView:
    """The patient view of a loaded model: its rule (``--min-cells`` applied) and its drift
    flag."""
    from ..patient import model_view

    return model_view(m.spec, None if m.drift is None else m.drift.patient_flag, min_cells)


def say(messages: Iterable[Message]) -> None:
    """A library call's notes and warnings, in order, on stderr."""
    for m in messages:
        (warn if m.warning else note)(m.text)


def print_patients(rows: list[PatientSummary], view: PatientView,
                   truth: dict[str, int] | None = None) -> None:
    """The per-patient table (leukoedge.patient's columns) and the rule in one line."""
    from rich.table import Table

    t = Table(title="per patient (share called ALL with its 95% Wilson interval)",
              title_justify="left")
    scored = any(r.drift is not None for r in rows)  # no drift column without scores
    cols = ["patient", *(["truth"] if truth else []), "cells", "errors", "called ALL",
            "share ALL (95% CI)", "mean P(ALL)", *(["median drift"] if scored else []),
            "call", "reason"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("patient", "truth", "call", "reason")
                     else "right")
    for r in rows:
        share = "-" if r.share_all is None else \
            f"{r.share_all:.2f} ({r.share_all_low:.2f}-{r.share_all_high:.2f})"
        tr = [] if not truth else [("ALL" if truth[r.patient] else "HEM")
                                   if r.patient in truth else "-"]
        call = {"ALL": "[red]ALL[/red]", "HEM": "[blue]HEM[/blue]"}.get(r.call, "none")
        t.add_row(escape(r.patient), *tr, str(r.cells), str(r.errors), str(r.called_all),
                  share, "-" if r.mean_prob_all is None else f"{r.mean_prob_all:.3f}",
                  *([("-" if r.drift is None else f"{r.drift:.2f}")] if scored else []),
                  call, escape(r.reason))
    out.print(t)
    out.print(f"patient rule: {escape(view.rule.describe())} (docs/usage.md, \"Patients\")")
