"""``leukoedge bench``: how fast is each stage, measured in one run on one machine.

Stages: inference only (per batch size; p50/p95 latency at batch 1), decode + preprocess
with the shared function on one thread (and OpenCV's ``imread`` + ``resize(INTER_AREA)``
on the same files when OpenCV is installed, as a reference), end-to-end over real files
(the classify pipeline: threads, batches, overlap), and, with a checkpoint, PyTorch eager
on the same weights (through the training plugin). Ratios are what to compare: these
machines are shared and noisy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Item
from .preprocess import preprocess_for
from .session import Model


@dataclass
class BenchResult:
    model: str
    provider: str
    input_size: int
    threads: int | None
    inference: dict[int, float] = field(default_factory=dict)  # batch -> images/s
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p95 at batch 1
    decode_per_s: float | None = None
    opencv_per_s: float | None = None
    end_to_end_per_s: float | None = None
    torch: dict[int, float] = field(default_factory=dict)
    torch_setting: str | None = None
    files: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["inference"] = {str(k): v for k, v in self.inference.items()}
        d["torch"] = {str(k): v for k, v in self.torch.items()}
        return d


def timed(fn: Callable[[], Any], min_seconds: float, min_reps: int = 3) -> list[float]:
    """Run ``fn`` repeatedly for at least ``min_seconds`` (and ``min_reps`` times)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def sample_batch(model: Model, files: Sequence[Path], n: int) -> np.ndarray:
    """``n`` real cells when files are given (repeated as needed), else noise on black."""
    s = model.spec.input_size
    out = np.zeros((n, s, s, 3), dtype=np.uint8)
    if files:
        cache = [preprocess_for(f, model.spec) for f in files[: min(len(files), n)]]
        for i in range(n):
            out[i] = cache[i % len(cache)]
    else:
        rng = np.random.default_rng(0)
        out[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = rng.integers(
            60, 200, (n, s - 2 * (s // 4), s - 2 * (s // 4), 3), dtype=np.uint8)
    return out


def bench_inference(model: Model, batch_sizes: Sequence[int], files: Sequence[Path],
                    seconds: float) -> tuple[dict[int, float], dict[str, float]]:
    per_s: dict[int, float] = {}
    latency: dict[str, float] = {}
    for b in batch_sizes:
        x = sample_batch(model, files, b)
        model.logits(x)  # warm-up at this shape
        times = timed(lambda x=x: model.logits(x), seconds)
        per_s[b] = b / float(np.median(times))
        if b == 1:
            latency = {"p50": float(np.percentile(times, 50) * 1e3),
                       "p95": float(np.percentile(times, 95) * 1e3)}
    return per_s, latency


def bench_decode(model: Model, files: Sequence[Path], seconds: float) -> float:
    """Images/s of the shared decode + preprocess function, one thread."""
    i = 0
    n = 0
    t0 = time.perf_counter()
    while n < len(files) or time.perf_counter() - t0 < seconds:
        preprocess_for(files[i % len(files)], model.spec)
        i += 1
        n += 1
    return n / (time.perf_counter() - t0)


def bench_opencv(model: Model, files: Sequence[Path], seconds: float) -> float | None:
    """OpenCV ``imread`` + ``cvtColor`` + ``resize(INTER_AREA)`` on the same files."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)
    s = model.spec.input_size
    n = 0
    t0 = time.perf_counter()
    while n < len(files) or time.perf_counter() - t0 < seconds:
        img = cv2.imread(str(files[n % len(files)]), cv2.IMREAD_COLOR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        n += 1
    return n / (time.perf_counter() - t0)


def bench_end_to_end(model: Model, files: Sequence[Path], batch_size: int,
                     workers: int | None) -> float:
    from .classify import predict_stream

    items = [Item(f) for f in files]
    t0 = time.perf_counter()
    n = sum(1 for _ in predict_stream(model, items, batch_size, workers))
    return n / (time.perf_counter() - t0)
