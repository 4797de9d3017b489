"""Drift statistics of a model's training cells, fitted at export (``--drift-data``).

The exported graph has a second output, ``features`` (the penultimate layer, through
:class:`.models.WithFeatures`). The statistics are computed with that very graph, run by
the runtime (:meth:`leukoedge.session.Model.run`), over the given training cells, and the
colour statistics with the runtime's :func:`leukoedge.preprocess.cell_colour`: the numbers
in the spec are those a reader will compute. The features output is checked against
PyTorch's (:func:`check_features`) as the logit is by the parity check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from leukoedge import drift
from leukoedge.data import collect
from leukoedge.errors import DataError, ExportError
from leukoedge.preprocess import cell_colour
from leukoedge.session import SessionConfig, load_model
from leukoedge.spec import ModelSpec

from .dataset import load_images

#: what the shipped score combines, and how (docs/accuracy.md, "Drift": measured)
COMPONENTS = ("colour", "features")
COMBINE = "mean"
#: principal directions kept per component (the rest share one variance)
RANK = 16
#: patients whose median score exceeds this are flagged when the training cells name no
#: patients (else: the 90th percentile of the training patients' medians; docs/accuracy.md)
PATIENT_FLAG = drift.DEFAULT_PATIENT_FLAG
#: features output vs PyTorch: max |difference| / max |PyTorch feature|
FEATURE_TOLERANCE = 1e-4
#: a network whose penultimate layer is wider than this (lite0 1280, ResNet50 2048) would
#: not fit its statistics into the spec's size cap: its ``features`` output becomes the
#: projection onto the training cells' first PROJECTION_DIM principal directions, a
#: constant MatMul in the graph (:class:`Projected`; docs/accuracy.md, "Drift")
PROJECT_ABOVE = 64
PROJECTION_DIM = 32


class Projected(torch.nn.Module):
    """``graph`` (whose ``outputs`` name a ``features`` output ``[N, d]``) with that output
    replaced by ``features @ basis`` ``[N, k]``; every other output unchanged. Not
    centred: the drift statistics fit their own mean, and uncentred values keep the
    feature check's tolerance (relative to the largest value) as meaningful as unprojected
    features'."""

    basis: torch.Tensor

    def __init__(self, graph: torch.nn.Module, basis: torch.Tensor) -> None:
        super().__init__()
        self.inner = graph  # not "graph": torch.export reserves that name
        self.outputs: tuple[str, ...] = tuple(getattr(graph, "outputs", ("logit", "features")))
        self.at = self.outputs.index("features")
        self.register_buffer("basis", basis.float())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = list(self.inner(image))
        outs[self.at] = outs[self.at] @ self.basis
        return tuple(outs)


def torch_features(graph: torch.nn.Module, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The ``features`` output of ``graph`` (PyTorch, eval, fp32) over ``x``, float64."""
    at = list(getattr(graph, "outputs", ("logit", "features"))).index("features")
    parts = []
    graph = graph.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            parts.append(graph(torch.from_numpy(x[i:i + batch]))[at].double().numpy())
    return np.concatenate(parts)


def project_if_wide(graph: torch.nn.Module, x: np.ndarray,
                    dim: int = PROJECTION_DIM) -> torch.nn.Module:
    """``graph`` itself when its features have at most PROJECT_ABOVE values, else
    :class:`Projected` onto the first ``dim`` principal directions of its features over
    ``x`` (the training cells)."""
    probe = torch_features(graph, x[:2])
    if probe.shape[1] <= PROJECT_ABOVE:
        return graph
    f = torch_features(graph, x)
    mean = f.mean(axis=0)
    z = f - mean
    w, v = np.linalg.eigh(z.T @ z / max(len(f) - 1, 1))
    basis = v[:, ::-1][:, :dim].copy()
    return Projected(graph, torch.from_numpy(basis)).eval()


@dataclass
class FeatureCheck:
    images: int
    max_error: float  # relative to the largest PyTorch feature
    passed: bool


@dataclass
class Cells:
    pixels: np.ndarray  # uint8 [N, S, S, 3], preprocessed as the spec says
    patients: list[str | None]


def training_pixels(data: Sequence[Path], spec: ModelSpec) -> Cells:
    """Every readable cell under ``data``, preprocessed as the spec says, and its patient."""
    items = collect(list(data))
    loaded = load_images(items, spec.input_size, spec.crop_fraction, spec.interpolation)
    if not len(loaded.items):
        raise DataError("--drift-data: no readable image")
    return Cells(loaded.pixels, [it.patient for it in loaded.items])


def run_graph(onnx_path: Path, x: np.ndarray, names: tuple[str, ...],
              batch: int = 64) -> dict[str, np.ndarray]:
    """The named outputs of the ONNX file over ``x``, on the CPU, through the runtime."""
    m = load_model(onnx_path, SessionConfig(provider="cpu"))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), batch):
        got = m.run(x[i:i + batch], names)
        for n in names:
            parts[n].append(np.asarray(got[n], dtype=np.float64))
    return {n: np.concatenate(v) for n, v in parts.items()}


def fit(onnx_path: Path, cells: Cells, components: Sequence[str] = COMPONENTS,
        combine: str = COMBINE, rank: int = RANK,
        patient_flag: float = PATIENT_FLAG) -> drift.DriftStats:
    """Drift statistics of the cells as the exported graph sees them; the patient flag
    from the training patients' medians (:func:`leukoedge.drift.patient_limit`) when the
    file names give patients, else ``patient_flag``."""
    x = cells.pixels
    outs = [c for c in components if c != drift.COLOUR]
    got = run_graph(onnx_path, x, tuple(outs)) if outs else {}
    colour = cell_colour(x) if drift.COLOUR in components else None
    return drift.fit(colour, got, combine=combine, max_rank=rank, patient_flag=patient_flag,
                     patients=cells.patients)


def check_features(onnx_path: Path, model: torch.nn.Module, x: np.ndarray) -> FeatureCheck:
    """The graph's features output against PyTorch fp32 (``model`` returns its
    ``outputs``, ``features`` among them) on up to 64 cells."""
    x = x[np.linspace(0, len(x) - 1, min(64, len(x))).astype(int)]
    ours = run_graph(onnx_path, x, ("features",))["features"]
    at = list(getattr(model, "outputs", ("logit", "features"))).index("features")
    with torch.no_grad():
        ref = model.eval().float()(torch.from_numpy(x))[at].double().numpy()
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(ours - ref).max()) / scale if ours.shape == ref.shape else float("inf")
    return FeatureCheck(len(x), err, err <= FEATURE_TOLERANCE)


def with_stats(spec: ModelSpec, stats: drift.DriftStats) -> ModelSpec:
    ext = dict(spec.extensions)
    ext[drift.EXTENSION_KEY] = stats.to_json()
    return spec.with_updates(extensions=ext)


def require(check: FeatureCheck) -> None:
    if not check.passed:
        raise ExportError(f"export rejected: the graph's features differ from PyTorch's by "
                          f"{check.max_error:.2e} of their range on {check.images} cells "
                          f"(bound {FEATURE_TOLERANCE:g})",
                          "nothing was written; try --exporter legacy")
