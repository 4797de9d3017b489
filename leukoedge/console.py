"""The two consoles: results to stdout, messages and progress to stderr."""

from __future__ import annotations

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """One informational line on stderr; ``message`` is plain text (a path with
    brackets in it is printed as is, not read as Rich markup)."""
    err.print(f"[dim]leukoedge:[/dim] {escape(message)}", markup=True, highlight=False)


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)
