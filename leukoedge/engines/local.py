"""The local engine: this process, decoding overlapped with inference
(:func:`leukoedge.classify.predict_stream`), rows written batch by batch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..classify import Prediction, RowSink, RunStats, predict_stream, tally

if TYPE_CHECKING:
    from ..data import Item
    from ..heatmap import OverlayWriter
    from ..session import Model


def classify_files(
    model: Model,
    items: Iterable[Item],
    writer: RowSink,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overlays: OverlayWriter | None = None,
) -> RunStats:
    """Classify ``items`` and write each batch's rows through ``writer`` as it finishes.

    Every item given is run: a resumed run passes what :func:`leukoedge.engines.pending`
    left. ``overlays``: heatmap overlays are written too (:func:`predict_stream`).
    """
    stats = RunStats()

    def on_batch(preds: list[Prediction]) -> None:
        rows = [p.row for p in preds]
        writer.write(rows)
        tally(stats, rows, model.spec.positive)
        if progress is not None:
            progress(len(preds))

    t0 = time.perf_counter()
    try:
        for _ in predict_stream(model, items, batch_size, workers, on_batch=on_batch,
                                overlays=overlays):
            pass
    finally:
        stats.seconds = time.perf_counter() - t0
    return stats


@dataclass(frozen=True)
class LocalEngine:
    """:class:`leukoedge.engines.Engine` in this process."""

    batch_size: int = 32
    workers: int | None = None
    overlays: OverlayWriter | None = None

    def run(self, model: Model, items: Sequence[Item], writer: RowSink,
            progress: Callable[[int], None] | None = None) -> RunStats:
        return classify_files(model, items, writer, self.batch_size, self.workers, progress,
                              self.overlays)
