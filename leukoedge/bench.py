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
from functools import partial
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
    versus: str | None = None  # a second ONNX model timed in the same run (e.g. fp32)
    versus_inference: dict[int, float] = field(default_factory=dict)

    @property
    def torch_ratio(self) -> dict[int, float]:
        """onnxruntime / PyTorch eager images/s per batch size (same weights, same run)."""
        return {b: self.inference[b] / v for b, v in self.torch.items()
                if b in self.inference and v > 0}

    @property
    def versus_ratio(self) -> dict[int, float]:
        """This model / the ``versus`` model, images/s per batch size."""
        return {b: self.inference[b] / v for b, v in self.versus_inference.items()
                if b in self.inference and v > 0}

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for k in ("inference", "torch", "versus_inference"):
            d[k] = {str(b): v for b, v in getattr(self, k).items()}
        d["onnxruntime_over_torch"] = {str(b): v for b, v in self.torch_ratio.items()}
        d["over_versus"] = {str(b): v for b, v in self.versus_ratio.items()}
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
        times = timed(partial(model.logits, x), seconds)
        per_s[b] = b / float(np.median(times))
        if b == 1:
            latency = {"p50": float(np.percentile(times, 50) * 1e3),
                       "p95": float(np.percentile(times, 95) * 1e3)}
    return per_s, latency


def bench_pair(a: Model, b: Model, batch_sizes: Sequence[int], files: Sequence[Path],
               seconds: float, rounds: int = 3) -> tuple[dict[int, float], dict[int, float]]:
    """Inference-only images/s of two models, interleaved (a, b, a, b, ...) so that a
    change in the machine's load hits both alike; the median over the rounds."""
    ra: dict[int, list[float]] = {}
    rb: dict[int, list[float]] = {}
    for bs in batch_sizes:
        xa = sample_batch(a, files, bs)
        xb = sample_batch(b, files, bs)
        a.logits(xa)
        b.logits(xb)
        for _ in range(rounds):
            ta = timed(partial(a.logits, xa), seconds / rounds)
            tb = timed(partial(b.logits, xb), seconds / rounds)
            ra.setdefault(bs, []).append(bs / float(np.median(ta)))
            rb.setdefault(bs, []).append(bs / float(np.median(tb)))
    return ({k: float(np.median(v)) for k, v in ra.items()},
            {k: float(np.median(v)) for k, v in rb.items()})


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
        bgr = cv2.imread(str(files[n % len(files)]), cv2.IMREAD_COLOR)
        assert bgr is not None, files[n % len(files)]  # the files were decoded by us already
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        n += 1
    return n / (time.perf_counter() - t0)


def bench_decode_pair(model: Model, files: Sequence[Path],
                      seconds: float) -> tuple[float, float | None]:
    """The shared decode + preprocess and OpenCV's ``imread`` + ``cvtColor`` +
    ``resize(INTER_AREA)``, one thread, alternating file by file (the same file through
    both, back to back), so that the ratio holds on a machine whose load changes.
    OpenCV's figure is None when it is not installed (then only ours is timed)."""
    try:
        import cv2
    except ImportError:
        return bench_decode(model, files, seconds), None
    cv2.setNumThreads(1)
    s = model.spec.input_size
    clock = time.perf_counter
    ours = theirs = 0.0
    n = 0
    start = clock()
    while n < len(files) or clock() - start < 2 * seconds:
        f = files[n % len(files)]
        t0 = clock()
        preprocess_for(f, model.spec)
        t1 = clock()
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        assert bgr is not None, f  # the same file was just decoded by preprocess_for
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA)
        t2 = clock()
        ours += t1 - t0
        theirs += t2 - t1
        n += 1
    return n / ours, n / theirs


def bench_end_to_end(model: Model, files: Sequence[Path], batch_size: int,
                     workers: int | None) -> float:
    from .classify import predict_stream

    items = [Item(f) for f in files]
    t0 = time.perf_counter()
    n = sum(1 for _ in predict_stream(model, items, batch_size, workers))
    return n / (time.perf_counter() - t0)
