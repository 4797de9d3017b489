"""PyTorch eager throughput on a checkpoint's weights, for ``leukoedge bench --checkpoint``.

The reference the ONNX export is compared with, in its best *plain* setting: eval mode,
``torch.inference_mode()``, ``torch.set_num_threads(threads or cores)``, the same uint8
NHWC batches the onnxruntime side gets (decoded by :mod:`leukoedge.preprocess`), and the
faster of the two memory formats (contiguous NCHW weights vs ``channels_last``), measured
here on this machine and named in the setting string. No ``torch.compile``, no
quantisation, no fusion: that is what "eager" means.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from leukoedge.bench import sample_batch, timed
from leukoedge.session import cores
from leukoedge.spec import ModelSpec

from . import checkpoint as ckpt_io
from .dataset import note_skipped


def _batch(spec: ModelSpec, files: Sequence[Path], n: int) -> np.ndarray:
    """``n`` real cells as the onnxruntime side builds them (:func:`leukoedge.bench.sample_batch`:
    the readable ones among the first ``n`` files, cycled; noise when there is none);
    unreadable files are left out and counted on stderr."""
    x, skipped = sample_batch(spec, files, n)
    note_skipped(skipped, min(len(files), n), "files for PyTorch eager")
    return x


def _throughput(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    with torch.inference_mode():
        model(x)  # warm-up at this shape (allocator, oneDNN primitives)
        times = timed(lambda: model(x), seconds)
    return x.shape[0] / float(np.median(times))


def torch_throughput(checkpoint: Path, batch_sizes: Sequence[int], files: Sequence[Path],
                     seconds: float, threads: int | None) -> tuple[dict[int, float], str]:
    """Images/s of PyTorch eager (CPU, fp32) per batch size, and the setting used.

    Both memory formats are timed at the largest batch size (for at least ``seconds / 2``
    each); the faster one is used for every batch size and named in the returned string.
    """
    n_threads = threads or cores()
    torch.set_num_threads(n_threads)
    ckpt = ckpt_io.load(ckpt_io.resolve(checkpoint))
    spec = ckpt_io.spec_of(ckpt)
    model = ckpt_io.model_of(ckpt).float().eval()
    biggest = max(batch_sizes)
    xb = torch.from_numpy(_batch(spec, files, biggest))

    probe = max(seconds / 2.0, 0.01)
    formats: dict[str, float] = {}
    model = model.to(memory_format=torch.contiguous_format)
    formats["contiguous (NCHW)"] = _throughput(model, xb, probe)
    model = model.to(memory_format=torch.channels_last)
    formats["channels_last"] = _throughput(model, xb, probe)
    best = max(formats, key=lambda k: formats[k])
    if best != "channels_last":
        model = model.to(memory_format=torch.contiguous_format)

    per_s: dict[int, float] = {}
    for b in batch_sizes:
        x = xb[:b] if b <= biggest else xb
        per_s[b] = _throughput(model, x.contiguous(), seconds)
    other = next(k for k in formats if k != best)
    setting = (f"torch {torch.__version__}, eval, inference_mode, {n_threads} threads, fp32, "
               f"{best} (batch {biggest}: {formats[best]:.1f}/s vs {other} "
               f"{formats[other]:.1f}/s)")
    return per_s, setting
