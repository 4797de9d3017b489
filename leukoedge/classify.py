"""Streaming, batched classification of many files, decoding overlapped with inference.

Decoding runs in a small thread pool (Pillow releases the GIL while decoding and
resizing) a bounded number of batches ahead of the model, so memory stays flat however many
files there are, and the model is fed while the next batch decodes. Rows come out in input
order, one per file; a file that cannot be read becomes a row with an ``error``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .data import Item
from .errors import ImageError
from .output import Row, escape_path
from .preprocess import preprocess_for
from .session import Model, cores

if TYPE_CHECKING:
    from .heatmap import OverlayWriter


@dataclass
class Prediction:
    """One file's result (its row, the logit included), with the item it came from and so
    its truth when known (for ``evaluate``)."""

    item: Item
    row: Row


@dataclass
class RunStats:
    files: int = 0
    skipped: int = 0
    errors: int = 0
    positives: int = 0
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)
    #: (patient, drift score) of every classified cell that has a score
    drift: list[tuple[str | None, float]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def default_workers() -> int:
    return max(1, min(8, cores()))


def _decode(item: Item, spec: object) -> np.ndarray | ImageError:
    try:
        return preprocess_for(item.path, spec)
    except ImageError as exc:
        return exc


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for it in items:
        batch.append(it)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_stream(
    model: Model,
    items: Iterable[Item],
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = 2,
    on_batch: Callable[[list[Prediction]], None] | None = None,
    overlays: OverlayWriter | None = None,
) -> Iterator[Prediction]:
    """Yield one :class:`Prediction` per item, in order, with bounded memory.

    ``prefetch`` batches are decoded ahead of the one being run. ``on_batch`` (if given)
    sees each finished batch before its predictions are yielded.

    ``overlays`` (the model has a ``cam`` output): each classified image's heatmap overlay
    is drawn and written in the decode pool while the next batch runs, and its path goes
    into the row; a batch's rows are released once its overlays are written (at most one
    batch of maps waits: memory stays flat).
    """
    spec = model.spec
    threshold = spec.logit_threshold
    labels = spec.labels
    s = spec.input_size
    buf = np.empty((batch_size, s, s, 3), dtype=np.uint8)
    pending: deque[tuple[list[Item], list[Future[np.ndarray | ImageError]]]] = deque()
    batches = _batches(items, batch_size)
    #: a batch whose overlays are being written: its predictions and (row index, future)
    drawing: tuple[list[Prediction], list[tuple[int, Future[str | None]]]] | None = None

    def release(held: tuple[list[Prediction], list[tuple[int, Future[str | None]]]]
                ) -> list[Prediction]:
        preds, futures = held
        for j, fut in futures:
            preds[j].row.heatmap = fut.result()
        if on_batch is not None:
            on_batch(preds)
        return preds
    if model.provider in ("cuda", "tensorrt"):
        # the first run at a shape picks kernels (cuDNN) or builds an engine (TensorRT):
        # do it before the clock and the progress bar start, at the batch size used
        model.warm_up(batch_size)
    with ThreadPoolExecutor(max_workers=workers or default_workers(),
                            thread_name_prefix="leukoedge-decode") as pool:
        try:
            def submit_next() -> bool:
                batch = next(batches, None)
                if batch is None:
                    return False
                pending.append((batch, [pool.submit(_decode, it, spec) for it in batch]))
                return True

            for _ in range(prefetch + 1):
                if not submit_next():
                    break
            while pending:
                batch, futures = pending.popleft()
                submit_next()
                decoded = [f.result() for f in futures]
                arrays = [a for a in decoded if isinstance(a, np.ndarray)]
                logits = np.empty(0, dtype=np.float32)
                drift: np.ndarray | None = None
                maps: np.ndarray | None = None
                if arrays:
                    for j, arr in enumerate(arrays):
                        buf[j] = arr
                    logits, drift, maps = model.predict_all(buf[: len(arrays)],
                                                            cam=overlays is not None)
                probs = spec.probability(logits)  # once per batch, not per image
                out: list[Prediction] = []
                drawn: list[tuple[int, Future[str | None]]] = []
                k = 0
                for it, d in zip(batch, decoded):
                    patient = it.patient
                    if isinstance(d, ImageError):
                        row = Row(escape_path(it.path), patient, None, None, _one_line(d))
                        out.append(Prediction(it, row))
                        continue
                    logit = float(logits[k])
                    prob = float(probs[k])
                    score = None if drift is None else float(drift[k])
                    k += 1
                    if math.isnan(logit):  # NaN >= threshold is False: it would read "hem"
                        row = Row(escape_path(it.path), patient, None, None,
                                  "the model returned NaN for this image")
                        out.append(Prediction(it, row))
                        continue
                    label = labels[1] if logit >= threshold else labels[0]
                    row = Row(escape_path(it.path), patient, prob, label, None, logit,
                              drift=score if score is None or math.isfinite(score) else None)
                    if overlays is not None and maps is not None:
                        drawn.append((len(out), pool.submit(overlays.write, it.path,
                                                            maps[k - 1].copy())))
                    out.append(Prediction(it, row))
                if overlays is None:
                    if on_batch is not None:
                        on_batch(out)
                    yield from out
                    continue
                if drawing is not None:  # the previous batch's overlays ran meanwhile
                    yield from release(drawing)
                drawing = (out, drawn)
            if drawing is not None:
                held, drawing = drawing, None
                yield from release(held)
        finally:
            for _, futures in pending:
                for f in futures:
                    f.cancel()
            if drawing is not None:
                for _, fut in drawing[1]:
                    fut.cancel()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


def tally(stats: RunStats, rows: Iterable[Row], positive: str) -> None:
    """Count written rows into ``stats`` (every engine's summary comes from here)."""
    for row in rows:
        stats.files += 1
        if row.error:
            stats.errors += 1
            if len(stats.error_examples) < 5:
                stats.error_examples.append(row.error)
        elif row.label == positive:
            stats.positives += 1
        if row.drift is not None:
            stats.drift.append((row.patient, row.drift))


def classify_files(
    model: Model,
    items: Iterable[Item],
    writer: object,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    overlays: OverlayWriter | None = None,
) -> RunStats:
    """Classify ``items`` and write each batch's rows through ``writer`` as it finishes.

    Items whose path is in ``writer.done`` (a resumed run) are skipped. ``overlays``:
    heatmap overlays are written too (:func:`predict_stream`).
    """
    stats = RunStats()
    done: set[str] = writer.done  # type: ignore[attr-defined]

    def todo() -> Iterator[Item]:
        for it in items:
            if escape_path(it.path) in done:
                stats.skipped += 1
                continue
            yield it

    def on_batch(preds: list[Prediction]) -> None:
        rows = [p.row for p in preds]
        writer.write(rows)  # type: ignore[attr-defined]
        tally(stats, rows, model.spec.positive)
        if progress is not None:
            progress(len(preds))

    t0 = time.perf_counter()
    try:
        for _ in predict_stream(model, todo(), batch_size, workers, on_batch=on_batch,
                                overlays=overlays):
            pass
    finally:
        stats.seconds = time.perf_counter() - t0
    return stats

