"""Counters and histograms for ``GET /metrics``, in Prometheus' text format (0.0.4).

Written by hand (a few counters do not need a client library). Updated from the event loop
and from the batcher thread, so every update takes the one lock.
"""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.total}')
        out.append(f"{name}_sum {_num(self.sum)}")
        out.append(f"{name}_count {self.total}")
        return out


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by HTTP status
        self.images = 0
        self.image_errors = 0
        self.in_flight = 0
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.batch_size = _Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        self.batch_seconds = 0.0

    def request_done(self, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[str(status)] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def images_done(self, images: int, errors: int) -> None:
        with self._lock:
            self.images += images
            self.image_errors += errors

    def batch_done(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(float(size))
            self.batch_seconds += seconds

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP leukoedge_requests_total Classification requests answered, by status.",
                "# TYPE leukoedge_requests_total counter",
            ]
            for status in sorted(self.requests):
                lines.append(f'leukoedge_requests_total{{status="{status}"}} '
                             f"{self.requests[status]}")
            lines += [
                "# HELP leukoedge_images_total Images answered (error entries included).",
                "# TYPE leukoedge_images_total counter",
                f"leukoedge_images_total {self.images}",
                "# HELP leukoedge_image_errors_total Images answered with an error entry.",
                "# TYPE leukoedge_image_errors_total counter",
                f"leukoedge_image_errors_total {self.image_errors}",
                "# HELP leukoedge_requests_in_flight Classification requests being served.",
                "# TYPE leukoedge_requests_in_flight gauge",
                f"leukoedge_requests_in_flight {self.in_flight}",
                "# HELP leukoedge_request_seconds Latency of answered classification "
                "requests.",
                "# TYPE leukoedge_request_seconds histogram",
                *self.latency.lines("leukoedge_request_seconds"),
                "# HELP leukoedge_batch_size Images per model run.",
                "# TYPE leukoedge_batch_size histogram",
                *self.batch_size.lines("leukoedge_batch_size"),
                "# HELP leukoedge_inference_seconds_total Time spent in the model.",
                "# TYPE leukoedge_inference_seconds_total counter",
                f"leukoedge_inference_seconds_total {_num(self.batch_seconds)}",
            ]
        return "\n".join(lines) + "\n"
