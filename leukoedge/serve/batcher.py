"""Dynamic batching: images from concurrent requests run together on the one session.

Decoded images (uint8 ``[S, S, 3]``, from the one preprocessing function) are queued with
:meth:`Batcher.submit`; one inference thread takes the first waiting image, then keeps
taking more until it has ``max_batch`` of them or ``max_wait`` seconds have passed since
the first (it stops waiting early when ``coming()`` says no other image is being decoded:
a lone request is not delayed for company that cannot arrive), copies them into one
reused batch buffer and runs the model once. Each image's future gets its own logit back
(position in the batch, never shared state), so an answer cannot reach the wrong request
whatever the batch composition.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..errors import LeukoedgeError
from ..session import Model


@dataclass
class _Job:
    array: np.ndarray
    future: Future[Scored]
    cam: bool = False  # this image's heatmap is wanted


class Scored(NamedTuple):
    """One image's answer: its logit and, when the model carries drift statistics, its
    drift score (leukoedge.drift)."""

    logit: float
    drift: float | None = None
    cam: np.ndarray | None = None  # the raw map [h, w], when asked for (submit(cam=True))


class Batcher:
    """One inference thread over ``model``; :meth:`submit` is safe from any thread."""

    def __init__(self, model: Model, max_batch: int = 32, max_wait: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None,
                 coming: Callable[[], int] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait)
        self._on_batch = on_batch
        self._coming = coming
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="leukoedge-batcher",
                                        daemon=True)
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def submit(self, array: np.ndarray, cam: bool = False) -> Future[Scored]:
        """Queue one decoded image; the future resolves to its logit and drift score (or
        the model's error), and with ``cam`` its heatmap (a batch computes the maps only
        when one of its images asks for them)."""
        fut: Future[Scored] = Future()
        with self._lock:
            if self._closed:
                fut.set_exception(RuntimeError("the server is stopping"))
                return fut
            self._queue.put(_Job(array, fut, cam))
        return fut

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take(self) -> tuple[list[_Job], bool]:
        """The next batch, and whether the stop marker was seen."""
        first = self._queue.get()
        if first is None:
            return [], True
        jobs = [first]
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or (self._coming is not None and self._coming() == 0):
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _fail_all(self, jobs: list[_Job], exc: BaseException) -> None:
        """Fail these jobs, everything queued, and every later submission."""
        with self._lock:
            self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                jobs.append(job)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)

    def _run(self) -> None:
        s = self.model.spec.input_size
        buf = np.empty((self.max_batch, s, s, 3), dtype=np.uint8)
        stop = False
        while not stop:
            jobs, stop = self._take()
            if not jobs:
                continue
            n = len(jobs)
            for i, job in enumerate(jobs):
                buf[i] = job.array
            t0 = time.perf_counter()
            maps: np.ndarray | None = None
            try:
                if any(job.cam for job in jobs):
                    logits, drift, maps = self.model.predict_all(buf[:n], cam=True)
                else:
                    logits, drift = self.model.predict(buf[:n])
            except (LeukoedgeError, ValueError) as exc:  # the model failed on this batch
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            except BaseException as exc:  # a bug: no request may wait for ever; it surfaces
                self._fail_all(jobs, exc)
                raise
            scores = [None] * n if drift is None else drift.tolist()
            for i, (job, logit, score) in enumerate(zip(jobs, logits.tolist(), scores)):
                own = maps[i].copy() if maps is not None and job.cam else None
                job.future.set_result(Scored(float(logit), score, own))
            if self._on_batch is not None:
                self._on_batch(n, time.perf_counter() - t0)
