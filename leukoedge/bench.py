"""``leukoedge bench``: how fast is each stage, measured in one run on one machine.

Stages: inference only (per batch size; p50/p95 latency at batch 1), decode + preprocess
with the shared function on one thread (and OpenCV's ``imread`` + ``resize(INTER_AREA)``
on the same files when OpenCV is installed, as a reference), end-to-end over real files
(the classify pipeline: threads, batches, overlap), and, with a checkpoint, PyTorch eager
on the same weights (through the training plugin). :func:`run_bench` runs them in order;
a file that cannot be read is skipped and counted. Ratios are what to compare: these
machines are shared and noisy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import Item
from .errors import DataError, ImageError
from .preprocess import decode_for, preprocess_for
from .session import Model
from .spec import ModelSpec

if TYPE_CHECKING:
    from .capabilities import TorchBench


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
    unreadable: int = 0  # files skipped because they cannot be read

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


def sample_batch(spec: ModelSpec, files: Sequence[Path], n: int
                 ) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """``n`` model inputs: the readable ones of the first ``n`` files, repeated as needed
    (decoded by :func:`~leukoedge.preprocess.decode_for`), else noise on black; and the
    files skipped as unreadable, with why."""
    s = spec.input_size
    out = np.zeros((n, s, s, 3), dtype=np.uint8)
    head = list(files[: min(len(files), n)])
    decoded = decode_for(head, spec)
    skipped = [(head[i], why) for i, why in decoded.skipped]
    cells = decoded.pixels
    if len(cells):
        for i in range(n):
            out[i] = cells[i % len(cells)]
    else:
        q = s // 4
        out[:, q:s - q, q:s - q] = np.random.default_rng(0).integers(
            60, 200, (n, s - 2 * q, s - 2 * q, 3), dtype=np.uint8)
    return out, skipped


def bench_inference(model: Model, batch: np.ndarray, batch_sizes: Sequence[int],
                    seconds: float) -> tuple[dict[int, float], dict[str, float]]:
    """Inference-only images/s per batch size (the first ``b`` images of ``batch``), and
    the p50/p95 latency at batch size 1."""
    per_s: dict[int, float] = {}
    latency: dict[str, float] = {}
    for b in batch_sizes:
        x = batch[:b]
        model.logits(x)  # warm-up at this shape
        times = timed(partial(model.logits, x), seconds)
        per_s[b] = b / float(np.median(times))
        if b == 1:
            latency = {"p50": float(np.percentile(times, 50) * 1e3),
                       "p95": float(np.percentile(times, 95) * 1e3)}
    return per_s, latency


def bench_pair(a: Model, batch_a: np.ndarray, b: Model, batch_b: np.ndarray,
               batch_sizes: Sequence[int], seconds: float, rounds: int = 3
               ) -> tuple[dict[int, float], dict[int, float]]:
    """Inference-only images/s of two models, interleaved (a, b, a, b, ...) so that a
    change in the machine's load hits both alike; the median over the rounds."""
    ra: dict[int, list[float]] = {}
    rb: dict[int, list[float]] = {}
    for bs in batch_sizes:
        xa, xb = batch_a[:bs], batch_b[:bs]
        a.logits(xa)
        b.logits(xb)
        for _ in range(rounds):
            ta = timed(partial(a.logits, xa), seconds / rounds)
            tb = timed(partial(b.logits, xb), seconds / rounds)
            ra.setdefault(bs, []).append(bs / float(np.median(ta)))
            rb.setdefault(bs, []).append(bs / float(np.median(tb)))
    return ({k: float(np.median(v)) for k, v in ra.items()},
            {k: float(np.median(v)) for k, v in rb.items()})


def bench_decode_pair(spec: ModelSpec, files: Sequence[Path], seconds: float,
                      unreadable: dict[Path, str]) -> tuple[float, float | None]:
    """The shared decode + preprocess and OpenCV's ``imread`` + ``cvtColor`` +
    ``resize(INTER_AREA)``, one thread, alternating file by file (the same file through
    both, back to back), so that the ratio holds on a machine whose load changes.
    OpenCV's figure is None when it is not installed (then only ours is timed). Every file
    is read at least once; one that ours cannot read is skipped and added to
    ``unreadable`` (none readable: :class:`DataError`), one OpenCV cannot read is left
    out of OpenCV's figure."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    else:
        cv2.setNumThreads(1)
    clock = time.perf_counter
    ours = theirs = 0.0
    n = n_theirs = i = 0
    limit = seconds if cv2 is None else 2 * seconds
    start = clock()
    while i < len(files) or clock() - start < limit:
        if i == len(files) and n == 0:
            raise DataError(f"none of the {len(files)} files can be read",
                            unreadable.get(files[0]))
        f = files[i % len(files)]
        i += 1
        if f in unreadable:
            continue
        t0 = clock()
        try:
            preprocess_for(f, spec)
        except ImageError as exc:
            unreadable[f] = exc.message
            continue
        t1 = clock()
        ours += t1 - t0
        n += 1
        if cv2 is not None and _opencv_decode(cv2, f, spec.input_size):
            theirs += clock() - t1
            n_theirs += 1
    return n / ours, (n_theirs / theirs if n_theirs else None)


def _opencv_decode(cv2: ModuleType, f: Path, size: int) -> bool:
    """OpenCV's ``imread`` + ``cvtColor`` + ``resize(INTER_AREA)`` of one file; False when
    OpenCV cannot read it."""
    bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
    if bgr is None:
        return False
    cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size),
               interpolation=cv2.INTER_AREA)
    return True


def bench_end_to_end(model: Model, files: Sequence[Path], batch_size: int,
                     workers: int | None) -> float:
    """Images/s of the classify pipeline (threads, batches, overlap) over ``files``."""
    from .classify import predict_stream

    items = [Item(f) for f in files]
    t0 = time.perf_counter()
    n = sum(1 for _ in predict_stream(model, items, batch_size, workers))
    return n / (time.perf_counter() - t0)


@dataclass(frozen=True)
class BenchPlan:
    """What :func:`run_bench` measures, and for how long."""

    batch_sizes: tuple[int, ...]
    seconds: float = 3.0  # the least time per measurement
    files: int = 500  # end to end: this many files (cycled)
    workers: int | None = None  # decoding threads end to end
    threads: int | None = None  # the sessions' inference threads (recorded; PyTorch's too)


def run_bench(model: Model, files: Sequence[Path], plan: BenchPlan, *,
              versus: Model | None = None, eager: tuple[TorchBench, Path] | None = None,
              say: Callable[[str], None] = lambda _: None) -> BenchResult:
    """Every stage of ``leukoedge bench`` on ``model`` (``files``: real images), in order:
    inference (interleaved with ``versus`` when given), decode, end to end, and with
    ``eager`` (the ``torch_bench`` capability and a checkpoint) PyTorch eager on the same
    weights; ``say`` is told what is being measured. Unreadable files are skipped, counted
    in ``BenchResult.unreadable`` and said; fatal only when no file can be read."""
    sizes = list(plan.batch_sizes)
    res = BenchResult(str(model.path), model.provider, model.spec.input_size, plan.threads,
                      files=len(files))
    unreadable: dict[Path, str] = {}
    batch = _sample(model.spec, files, max(sizes), unreadable)
    say(f"inference at batch sizes {sizes} ...")
    res.inference, res.latency_ms = bench_inference(model, batch, sizes, plan.seconds)
    if versus is not None:
        say(f"inference, interleaved with {versus.path} ...")
        res.versus = str(versus.path)
        res.inference, res.versus_inference = bench_pair(
            model, batch, versus, _sample(versus.spec, files, max(sizes), unreadable),
            sizes, plan.seconds)
    say("decode + preprocess, one thread (alternating with OpenCV when installed) ...")
    res.decode_per_s, res.opencv_per_s = bench_decode_pair(model.spec, files, plan.seconds,
                                                           unreadable)
    cycled = [files[i % len(files)] for i in range(plan.files)]
    say(f"end to end over {len(cycled)} files ...")
    res.end_to_end_per_s = bench_end_to_end(model, cycled, max(sizes), plan.workers)
    if eager is not None:
        torch_bench, checkpoint = eager
        say("PyTorch eager on the same weights ...")
        res.torch, res.torch_setting = torch_bench(checkpoint, sizes, files, plan.seconds,
                                                   plan.threads)
        # onnxruntime again, after PyTorch: the ratio uses the mean of before and after,
        # so a change in the machine's load during the run does not favour either side
        say("onnxruntime again, after PyTorch ...")
        again, _ = bench_inference(model, batch, sizes, plan.seconds)
        res.inference = {b: (res.inference[b] + again[b]) / 2.0 for b in sizes}
    res.unreadable = len(unreadable)
    if unreadable:
        first = next(iter(unreadable.values()))
        say(f"{len(unreadable)} of the {len(files)} files could not be read and were "
            f"skipped (first: {first})")
    return res


def _sample(spec: ModelSpec, files: Sequence[Path], n: int,
            unreadable: dict[Path, str]) -> np.ndarray:
    batch, skipped = sample_batch(spec, files, n)
    unreadable.update(skipped)
    return batch
