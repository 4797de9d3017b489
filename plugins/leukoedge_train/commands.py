"""CLI commands of the training plugin (filled in by the training work)."""

from __future__ import annotations

from typing import Any


def register(app: Any) -> None:
    """Add train/export/parity; until they exist, the runtime's placeholders stay."""
    return None
