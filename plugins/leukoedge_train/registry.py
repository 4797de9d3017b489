"""Named things (architectures, recipes) looked up by name, timm-style: an unknown name
fails with one line that lists the known ones. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from leukoedge.errors import UsageError

T = TypeVar("T")


def pick(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``; a :class:`UsageError` naming ``what`` and the known names if absent."""
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown {what} {name!r}",
                         f"known: {', '.join(sorted(table))}") from None
