"""Engines run ``classify``'s model over many files and write the rows through a writer:
the local one (:mod:`.local`, this process) and Ray (:mod:`.ray_engine`, a cluster; the
scale extra). One contract (:class:`Engine`): items in, rows out through a
:class:`~leukoedge.classify.RowSink`, progress reported by callback, the summary returned
(:class:`~leukoedge.classify.RunStats`). Which rows are already done is decided once, by
:func:`pending`, before an engine is chosen; engines run what they are given.

Each engine imports its heavy dependency (Ray, pyarrow) only when it is used: ``import
leukoedge`` and the local commands never load them (tests/test_no_torch.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..classify import RowSink, RunStats
    from ..data import Item
    from ..session import Model

#: the engines ``classify --engine`` knows
ENGINES = ("local", "ray")


class Engine(Protocol):
    """Classify ``items`` with ``model``; each finished batch's rows go through
    ``writer`` (in input order) and its size to ``progress``."""

    def run(self, model: Model, items: Sequence[Item], writer: RowSink,
            progress: Callable[[int], None] | None = None) -> RunStats: ...


@dataclass(frozen=True)
class Pending:
    """The items still to classify, and how many were skipped as already done."""

    todo: list[Item]
    skipped: int


def pending(items: Iterable[Item], done: Collection[str]) -> Pending:
    """The one place that decides which items a resumed run skips: those whose (escaped)
    path is among the rows already written (``writer.done``)."""
    from ..output import escape_path

    todo: list[Item] = []
    skipped = 0
    for it in items:
        if escape_path(it.path) in done:
            skipped += 1
        else:
            todo.append(it)
    return Pending(todo, skipped)
