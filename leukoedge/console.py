"""The two consoles (results to stdout, messages and progress to stderr) and the one
two-column table of the commands' summaries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """One informational line on stderr; ``message`` is plain text (a path with
    brackets in it is printed as is, not read as Rich markup)."""
    err.print(f"[dim]leukoedge:[/dim] {escape(message)}", markup=True, highlight=False)


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def facts_table(title: str, rows: Iterable[tuple[str, str]] = ()) -> Table:
    """A table of facts: a bold name and its value per row (Rich markup), no header, the
    title on the left; add more rows with ``add_row(name, value)``. The summaries of
    classify, evaluate, calibrate, info, doctor and demo use it (plugins may too)."""
    from rich.table import Table

    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value")
    for name, value in rows:
        t.add_row(name, value)
    return t
