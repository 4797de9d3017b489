"""Helpers the commands share: opening the model, collecting items, the progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import err, note

if TYPE_CHECKING:  # session imports numpy: loaded when a command runs, not for --help
    from ..session import Model

EXPORTED = Path("exported")


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

        def render(self, task):  # type: ignore[no-untyped-def]
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
