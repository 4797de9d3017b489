"""Streaming, batched classification of many files, decoding overlapped with inference.

Decoding runs in a small thread pool (Pillow releases the GIL while decoding and
resizing) a bounded number of batches ahead of the model, so memory stays flat however many
files there are, and the model is fed while the next batch decodes. Rows come out in input
order, one per file; a file that cannot be read becomes a row with an ``error``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .data import Item
from .errors import ImageError
from .output import Row, escape_path
from .patient import PatientTally
from .preprocess import preprocess_for
from .session import Model, cores
from .spec import ModelSpec

if TYPE_CHECKING:
    from .drift import DriftSummary
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
    #: every written row, per patient (leukoedge.patient: the end-of-run patient table)
    patients: PatientTally = field(default_factory=PatientTally)

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


def default_workers() -> int:
    return max(1, min(8, cores()))


def _decode(item: Item, spec: ModelSpec) -> np.ndarray | ImageError:
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


#: the ``error`` of a row whose logit is NaN (NaN >= threshold is False: it would read "hem")
NAN_ERROR = "the model returned NaN for this image"


def error_text(exc: ImageError) -> str:
    """The ``error`` column of an image that cannot be read: the whole of its ImageError
    (our message, naming the image, the reason and the hint) on one line, at most 300
    characters. Not :func:`leukoedge.errors.first_line`: the message is ours, and its
    200-character cut would let a long path push the reason out."""
    return " ".join(str(exc).split())[:300]


def scored_row(path: str, patient: str | None, logit: float, prob: float,
               drift: float | None, spec: ModelSpec) -> Row:
    """The row of one image the model scored: the label from the logit threshold, the
    probability as given (:meth:`ModelSpec.probability`), a non-finite drift score left
    out, and a NaN logit an error row. The one place a model output becomes a row
    (``classify``, ``serve`` and the Ray engine all come here)."""
    if math.isnan(logit):
        return Row(path, patient, None, None, NAN_ERROR)
    label = spec.labels[1] if logit >= spec.logit_threshold else spec.labels[0]
    ok = drift is not None and math.isfinite(drift)
    return Row(path, patient, prob, label, None, logit, drift=drift if ok else None)


class RowSink(Protocol):
    """Where a run's rows go (:class:`~leukoedge.output.ResultWriter`,
    :class:`~leukoedge.output.parts.PartWriter`): ``done`` holds the paths already
    written (:func:`leukoedge.engines.pending` skips them)."""

    done: set[str]

    def write(self, rows: Iterable[Row]) -> None: ...


#: a batch of items and, for each, its pixels or why it cannot be read
DecodedBatch = tuple[list[Item], list[np.ndarray | ImageError]]


class _DecodeAhead:
    """Batches of items decoded in ``pool`` a bounded number of batches ahead of the one
    being run; iterating hands out each batch with its decoded images, in order."""

    def __init__(self, pool: ThreadPoolExecutor, batches: Iterator[list[Item]],
                 spec: ModelSpec) -> None:
        self.pool = pool
        self.batches = batches
        self.spec = spec
        self.pending: deque[tuple[list[Item], list[Future[np.ndarray | ImageError]]]] = \
            deque()

    def start(self, prefetch: int) -> None:
        """Queue the first ``prefetch + 1`` batches."""
        for _ in range(prefetch + 1):
            if not self._submit_next():
                break

    def _submit_next(self) -> bool:
        batch = next(self.batches, None)
        if batch is None:
            return False
        self.pending.append((batch, [self.pool.submit(_decode, it, self.spec)
                                     for it in batch]))
        return True

    def __iter__(self) -> Iterator[DecodedBatch]:
        while self.pending:
            batch, futures = self.pending.popleft()
            self._submit_next()  # the next batch decodes while this one is waited for and run
            yield batch, [f.result() for f in futures]

    def cancel(self) -> None:
        """Drop the decoding not yet started (the run stopped early)."""
        for _, futures in self.pending:
            for f in futures:
                f.cancel()


def _predict_batch(model: Model, buf: np.ndarray, batch: list[Item],
                   decoded: list[np.ndarray | ImageError], cam: bool
                   ) -> tuple[list[Prediction], list[tuple[int, np.ndarray]]]:
    """One model run over a batch's readable images (copied into ``buf``): a prediction
    per item, in order, and, with ``cam``, (index in the batch, heatmap) of every image
    classified (not of an error row)."""
    spec = model.spec
    arrays = [a for a in decoded if isinstance(a, np.ndarray)]
    logits = np.empty(0, dtype=np.float32)
    drift: np.ndarray | None = None
    maps: np.ndarray | None = None
    if arrays:
        for j, arr in enumerate(arrays):
            buf[j] = arr
        logits, drift, maps = model.predict_all(buf[: len(arrays)], cam=cam)
    probs = spec.probability(logits)  # once per batch, not per image
    out: list[Prediction] = []
    heatmaps: list[tuple[int, np.ndarray]] = []
    k = 0
    for it, d in zip(batch, decoded):
        path = escape_path(it.path)
        if isinstance(d, ImageError):
            out.append(Prediction(it, Row(path, it.patient, None, None, error_text(d))))
            continue
        score = None if drift is None else float(drift[k])
        row = scored_row(path, it.patient, float(logits[k]), float(probs[k]), score, spec)
        if maps is not None and row.error is None:
            heatmaps.append((len(out), maps[k]))
        k += 1
        out.append(Prediction(it, row))
    return out, heatmaps


@dataclass
class _Drawing:
    """A batch whose overlays are being written in the pool: its predictions and, per
    overlay, (row index, the future of the overlay's path)."""

    preds: list[Prediction]
    futures: list[tuple[int, Future[str | None]]]

    def release(self, on_batch: Callable[[list[Prediction]], None] | None
                ) -> list[Prediction]:
        """The predictions, once every overlay is written and its path in its row."""
        for j, fut in self.futures:
            self.preds[j].row.heatmap = fut.result()
        if on_batch is not None:
            on_batch(self.preds)
        return self.preds

    def cancel(self) -> None:
        for _, fut in self.futures:
            fut.cancel()


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
    s = model.spec.input_size
    buf = np.empty((batch_size, s, s, 3), dtype=np.uint8)
    if model.provider in ("cuda", "tensorrt"):
        # the first run at a shape picks kernels (cuDNN) or builds an engine (TensorRT):
        # do it before the clock and the progress bar start, at the batch size used
        model.warm_up(batch_size)
    with ThreadPoolExecutor(max_workers=workers or default_workers(),
                            thread_name_prefix="leukoedge-decode") as pool:
        ahead = _DecodeAhead(pool, _batches(items, batch_size), model.spec)
        drawing: _Drawing | None = None
        try:
            ahead.start(prefetch)
            for batch, decoded in ahead:
                out, heatmaps = _predict_batch(model, buf, batch, decoded,
                                               cam=overlays is not None)
                if overlays is None:
                    if on_batch is not None:
                        on_batch(out)
                    yield from out
                    continue
                drawn = _Drawing(out, [(j, pool.submit(overlays.write, out[j].item.path,
                                                       cam.copy())) for j, cam in heatmaps])
                if drawing is not None:  # the previous batch's overlays ran meanwhile
                    yield from drawing.release(on_batch)
                drawing = drawn
            if drawing is not None:
                held, drawing = drawing, None
                yield from held.release(on_batch)
        finally:
            ahead.cancel()
            if drawing is not None:
                drawing.cancel()


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
        stats.patients.add(row.patient, None if row.error else row.label == positive,
                           row.prob_all, row.drift)


def drift_of_run(stats: RunStats, previous: Iterable[Mapping[str, object]],
                 flag: float, min_cells: int) -> DriftSummary | None:
    """The drift summary of a run: this run's scored cells and those of the rows a resumed
    file already held (``previous``, as read back: a missing or unreadable score is
    skipped)."""
    from .drift import summary

    pairs = list(stats.drift)
    for r in previous:
        try:
            score = float(str(r.get("drift") or ""))
        except ValueError:
            continue
        patient = r.get("patient")
        pairs.append((str(patient) if patient else None, score))
    return summary([p for p, _ in pairs], [s for _, s in pairs], flag, min_cells)
