"""The plugin's capabilities for the runtime (:mod:`leukoedge.capabilities`): thin adapters
from the runtime's call signatures to the training and export functions, returning the
runtime's own result types so that the runtime never sees a plugin class."""

from __future__ import annotations

from pathlib import Path

from leukoedge.capabilities import ExportSummary, TrainSummary

from .export import export_onnx
from .config import TrainConfig
from .train import train


def trainer(data: Path, out: Path, *, arch: str, input_size: int, epochs: int,
            patience: int, seed: int) -> TrainSummary:
    """Train ``arch`` on ``data`` into the run folder ``out`` (validation split by patient)."""
    r = train(TrainConfig(arch=arch, data=data, out=out, input_size=input_size,
                          epochs=epochs, patience=patience, seed=seed))
    return TrainSummary(run_dir=r.run_dir, epochs_done=r.epochs_done,
                        best_epoch=r.best_epoch, best_f1=r.best_f1)


def exporter(run: Path, out: Path, *, parity_data: Path | None) -> ExportSummary:
    """Export the run's best checkpoint to ``out`` (fp32), parity-checked on ``parity_data``."""
    r = export_onnx(run, out=out, parity_data=parity_data)
    return ExportSummary(path=r.path, parity_passed=r.parity.passed,
                         parity_max_abs_diff=r.parity.max_abs_diff,
                         parity_images=r.parity.images)
