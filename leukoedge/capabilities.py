"""What the runtime asks plugins for by name: the capabilities' names, call signatures and
result types. The runtime depends on this contract only, never on a plugin's modules.

A plugin registers a capability in its ``register_capabilities(register)`` hook, as a
``"module:attribute"`` string that is imported the first time the capability is looked up
(see :mod:`leukoedge.plugins`). The accessors below look one up and type it; a capability
that no installed plugin provides, or whose module cannot be imported (torch missing),
raises :class:`~leukoedge.errors.MissingExtraError` naming the extra that provides it.

| name          | provided by the ``train`` extra's plugin          | used by                 |
|---------------|---------------------------------------------------|-------------------------|
| ``trainer``   | train a model on an image folder -> a run folder   | ``demo``                |
| ``exporter``  | export a run to ONNX, parity-checked              | ``demo``                |
| ``torch_bench`` | PyTorch eager throughput on a checkpoint        | ``bench --checkpoint``  |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from .plugins import lookup

TRAINER = "trainer"
EXPORTER = "exporter"
TORCH_BENCH = "torch_bench"
#: every capability the runtime uses -> the install extra whose plugin provides it
KNOWN: dict[str, str] = {TRAINER: "train", EXPORTER: "train", TORCH_BENCH: "train"}


@dataclass(frozen=True)
class TrainSummary:
    """What a trainer reports: where the run is and how good its best epoch was."""

    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_f1: float  # validation weighted F1 of the best epoch


@dataclass(frozen=True)
class ExportSummary:
    """What an exporter reports: the ONNX file and its parity check against PyTorch."""

    path: Path
    parity_passed: bool
    parity_max_abs_diff: float
    parity_images: int


class Trainer(Protocol):
    def __call__(self, data: Path, out: Path, *, arch: str, input_size: int, epochs: int,
                 patience: int, seed: int) -> TrainSummary: ...


class Exporter(Protocol):
    def __call__(self, run: Path, out: Path, *,
                 parity_data: Path | None) -> ExportSummary: ...


class TorchBench(Protocol):
    def __call__(self, checkpoint: Path, batch_sizes: Sequence[int], files: Sequence[Path],
                 seconds: float, threads: int | None) -> tuple[dict[int, float], str]: ...


def trainer(needed_by: str) -> Trainer:
    return cast(Trainer, lookup(TRAINER, needed_by, KNOWN[TRAINER]))


def exporter(needed_by: str) -> Exporter:
    return cast(Exporter, lookup(EXPORTER, needed_by, KNOWN[EXPORTER]))


def torch_bench(needed_by: str) -> TorchBench:
    return cast(TorchBench, lookup(TORCH_BENCH, needed_by, KNOWN[TORCH_BENCH]))
