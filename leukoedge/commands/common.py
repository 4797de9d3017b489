"""What several commands share: opening the model, the progress bar, ``--folds``, the
spec that scores a predictions file, warnings and the drift table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..console import err, escape, note, out
from ..errors import UsageError
from ..spec import EXPORTED

if TYPE_CHECKING:  # session imports numpy: loaded when a command runs, not for --help
    from rich.progress import Task
    from rich.text import Text

    from ..session import Model
    from ..spec import ModelSpec


def open_model(model: Path | None, provider: str, threads: int | None,
               threshold: float | None = None) -> Model:
    from ..session import SessionConfig, load_model

    path = model if model is not None else choose_model()
    m = load_model(path, SessionConfig(provider=provider, threads=threads))
    for n in m.notes:
        note(n)
    if threshold is not None:
        m.spec = m.spec.with_updates(threshold=threshold)
    return m


def choose_model() -> Path:
    """No ``--model``: the newest model in ``exported/``, else the shipped model."""
    from ..models import default_model
    from ..session import newest_model

    if any(EXPORTED.glob("*.onnx")):
        path = newest_model(EXPORTED)
        note(f"using the newest model in {EXPORTED}/: {path.name}")
        return path
    shipped = default_model()
    if shipped is None:
        return newest_model(EXPORTED)  # raises: no model anywhere, says what to do
    note(f"using the shipped model {shipped} (trained on real C-NMC cells; "
         "'leukoedge info' describes it)")
    return shipped


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
    """``--folds 0,1,2`` -> ``["0", "1", "2"]``; None when not given."""
    if folds is None:
        return None
    parts = [f.strip() for f in folds.split(",") if f.strip()]
    if not parts:
        raise UsageError("--folds names no fold", "e.g. --folds 0,1,2")
    return parts


def warn(message: str) -> None:
    """One warning line on stderr (plain text)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")


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


def print_drift(summary: dict[str, Any] | None) -> None:
    """The per-patient drift table and its one line (flagged patients: on stderr)."""
    if summary is None:
        return
    from rich.table import Table

    t = Table(title="drift per patient (1.0 = the 95th percentile of the training cells)",
              title_justify="left")
    for c in ("patient", "cells", "median drift", "cells > 1.0", "drifted"):
        t.add_column(c, justify="left" if c == "patient" else "right")
    for r in summary["patients"]:
        t.add_row(escape(r["patient"]), str(r["cells"]), f"{r['median']:.2f}",
                  f"{r['share_above']:.0%}", "[red]yes[/red]" if r["flagged"] else "no")
    out.print(t)
    (err if summary["flagged"] else out).print(escape(summary["line"]))
