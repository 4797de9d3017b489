"""Parity: the same uint8 batches through PyTorch (eval, fp32, CPU) and onnxruntime (CPU).

Passes when every logit satisfies ``|onnx - torch| <= ATOL + RTOL * |torch|`` (like
``numpy.allclose``; a pure absolute bound would reject a correct ResNet50 export, whose
logits can reach 60) and every label is equal. The ONNX side runs at batch 1 and at a
larger batch, so a batch axis that is not really dynamic is caught. Cells whose logit lies
within the tolerance of the decision threshold are named (a label there can flip by
rounding alone); that is a report, not a failure.

The ONNX side is loaded with :func:`leukoedge.session.load_model`, the runtime's own
loader, so a model that passes is also one ``leukoedge classify`` accepts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leukoedge.data import collect
from leukoedge.errors import ParityError
from leukoedge.preprocess import preprocess_for
from leukoedge.session import SessionConfig, cores, load_model
from leukoedge.spec import ModelSpec

from .data import load_images

ATOL = 1e-4
RTOL = 1e-4


@dataclass
class ParityResult:
    """What was compared and how closely the two runtimes agree."""

    model: Path
    images: int
    source: str  # the folder the cells came from, or "synthetic"
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    mean_abs_diff: float
    max_abs_logit: float
    passed: bool
    failures: list[str] = field(default_factory=list)  # names outside the tolerance
    label_flips: list[str] = field(default_factory=list)
    near_threshold: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable files
    atol: float = ATOL
    rtol: float = RTOL
    provider: str = "cpu"  # where the ONNX side ran

    def summary(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (f"parity {verdict}: {self.images} images ({self.source}), batches "
                f"{'/'.join(map(str, self.batch_sizes))}, max |diff| {self.max_abs_diff:.3g}, "
                f"mean |diff| {self.mean_abs_diff:.3g} (tolerance {self.atol:g} + "
                f"{self.rtol:g}*|logit|)")


def images_for(spec: ModelSpec, data: Path | None, limit: int,
               synthetic: int = 32) -> tuple[np.ndarray, list[str], str, list[str]]:
    """uint8 batch, names, source description, unreadable files."""
    if data is None:
        return _synthetic(spec, synthetic)
    loaded = load_images(collect([data])[:limit], spec.input_size, spec.crop_fraction,
                         spec.interpolation)
    if not loaded.items:
        raise ParityError(f"{data}: no readable image for the parity check")
    return (loaded.pixels, [str(it.path) for it in loaded.items], str(data),
            [why for _, why in loaded.skipped])


def _synthetic(spec: ModelSpec, n: int) -> tuple[np.ndarray, list[str], str, list[str]]:
    """``n`` cells of ``leukoedge.synth`` at 450 px, through the model's own preprocessing
    (uniform noise would not exercise the network the way cells do)."""
    from leukoedge.synth import sample_cells

    cells, labels = sample_cells(n, seed=2019)
    x = np.empty((n, spec.input_size, spec.input_size, 3), np.uint8)
    for i, rgb in enumerate(cells):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="BMP")
        x[i] = preprocess_for(buf.getvalue(), spec)
    names = [f"synthetic-{i}-{'all' if lab else 'hem'}" for i, lab in enumerate(labels)]
    return x, names, "synthetic", []


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch: int) -> np.ndarray:
    model = model.eval().to("cpu").float()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i:i + batch])).numpy())
    return np.concatenate(out).astype(np.float32)


def check(onnx_path: Path, model: torch.nn.Module, spec: ModelSpec,
          data: Path | None = None, batch: int = 16, limit: int = 256,
          provider: str = "cpu") -> ParityResult:
    """Compare ``model`` (PyTorch) with the ONNX file on the same images.

    ``provider`` runs the ONNX side elsewhere (``cuda`` on a GPU machine); the PyTorch
    side stays on the CPU in fp32, the reference."""
    torch.set_num_threads(cores())
    x, names, source, skipped = images_for(spec, data, limit)
    ref = torch_logits(model, x, batch).astype(np.float64)
    m = load_model(onnx_path, SessionConfig(provider=provider))
    runs = []
    for bs in sorted({1, batch}):
        got = np.concatenate([m.logits(x[i:i + bs]) for i in range(0, len(x), bs)])
        runs.append(got.astype(np.float64))
    diffs = np.stack([np.abs(g - ref) for g in runs])  # [runs, images]
    bound = ATOL + RTOL * np.abs(ref)
    bad = (diffs > bound).any(axis=0)
    thr = spec.logit_threshold
    label_ref = ref >= thr
    flips = np.zeros(len(ref), dtype=bool)
    for g in runs:
        flips |= (g >= thr) != label_ref
    near = np.abs(ref - thr) <= bound
    ok = not bad.any() and not flips.any()
    return ParityResult(
        model=onnx_path, images=len(x), source=source, batch_sizes=tuple(sorted({1, batch})),
        max_abs_diff=float(diffs.max()), mean_abs_diff=float(diffs.mean()),
        max_abs_logit=float(np.abs(ref).max()), passed=ok,
        failures=[names[i] for i in np.flatnonzero(bad)],
        label_flips=[names[i] for i in np.flatnonzero(flips)],
        near_threshold=[names[i] for i in np.flatnonzero(near)], skipped=skipped,
        provider=m.provider,
    )


def check_checkpoint(onnx_path: Path, ckpt_path: Path, data: Path | None = None,
                     batch: int = 16, provider: str = "cpu") -> ParityResult:
    """Parity of an ONNX file against a checkpoint (its own spec decides preprocessing)."""
    from . import checkpoint as ckpt_io

    ckpt = ckpt_io.load(ckpt_path)
    return check(onnx_path, ckpt_io.model_of(ckpt), ckpt_io.spec_of(ckpt), data, batch,
                 provider=provider)
