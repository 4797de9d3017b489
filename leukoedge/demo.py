"""``leukoedge demo``: the whole job on built-in data, in a few minutes on a CPU.

Part 1 (:func:`shipped_demo`, torch-free): the model shipped with leukoedge (trained on real
C-NMC cells) classifies the real cells shipped with the package; its cross-validated figure
comes first, and cells of its training patients are marked as such, next to the call of the
cross-validation model that never saw their patient.

Part 2 (:func:`run_demo`, the train extra): the pipeline on synthetic cells -> train the
scratch CNN briefly -> export to ONNX (with its parity check) -> classify and evaluate
held-out synthetic patients. Everything stays in the work folder; that model learns
synthetic cells and is not a diagnostic model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data import collect, sample_cells_dir
from .output import ResultWriter, atomic_write_text
from .spec import LABELS

if TYPE_CHECKING:
    from .evaluate import Report

#: out-of-fold logits of the shipped cells: the shipped recipe's cross-validation models,
#: each of which never saw the cell's patient (scripts/sample_cells_oof.py writes it)
SAMPLE_OOF = "out-of-fold.csv"


@dataclass
class ShippedCell:
    name: str  # path under sample_cells/
    truth: str | None
    call: str | None
    prob_all: float | None
    training_patient: bool  # the shipped model was trained on this cell's patient
    oof_prob_all: float | None = None  # P(ALL) by the fold model that never saw the patient
    error: str | None = None


@dataclass
class ShippedResult:
    model: Path
    training: dict[str, Any]
    cells: list[ShippedCell]
    predictions: Path


def read_sample_oof(folder: Path) -> dict[str, float]:
    """name under ``folder`` -> out-of-fold logit (empty when the file is absent)."""
    import csv

    path = folder / SAMPLE_OOF
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["path"]: float(r["logit"]) for r in csv.DictReader(fh)}


def shipped_demo(workdir: Path, model_path: Path) -> ShippedResult:
    """Classify the shipped real cells with the shipped model (no torch needed)."""
    from .classify import predict_stream
    from .session import SessionConfig, load_model

    model = load_model(model_path, SessionConfig(provider="auto"))
    training = dict(model.spec.training)
    seen = {str(p) for p in training.get("patients", [])}
    folder = sample_cells_dir()
    oof = read_sample_oof(folder)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "real-cells-predictions.csv"
    cells = []
    with ResultWriter(out) as w:
        for p in predict_stream(model, collect([folder]), 32,
                                on_batch=lambda b: w.write([q.row for q in b])):
            name = p.item.path.relative_to(folder).as_posix()
            z = oof.get(name)
            cells.append(ShippedCell(
                name=name,
                truth=None if p.item.label is None else LABELS[p.item.label],
                call=p.row.label, prob_all=p.row.prob_all,
                training_patient=(p.item.patient or "") in seen,
                oof_prob_all=None if z is None else float(model.spec.probability([z])[0]),
                error=p.row.error))
    return ShippedResult(model_path, training, cells, out)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes chosen so the demo ends within 5 minutes on 2 CPU cores.

    Many patients with few cells each: what a model must learn is what generalises to new
    patients, and with few patients it learns their stain and size instead (the patient
    leak; docs/synthetic.md). 64 px keeps training to about a minute and a half.
    """

    train_patients: int = 48
    test_patients: int = 16
    cells_per_patient: int = 8
    image_size: int = 450  # synthetic images are written at the real cells' size
    input_size: int = 64  # the demo trains small; the default scratch model uses 128
    epochs: int = 10
    seed: int = 0


@dataclass(frozen=True)
class DemoFacts:
    """What the demo found: training, export parity, provider and the held-out report."""

    val_weighted_f1: float
    best_epoch: int
    model: str
    parity_max_abs_diff: float
    parity_images: int
    provider: str
    heldout: Report

    def to_json(self) -> dict[str, Any]:
        from .evaluate import report_json

        d: dict[str, Any] = {k: getattr(self, k) for k in (
            "val_weighted_f1", "best_epoch", "model", "parity_max_abs_diff",
            "parity_images", "provider")}
        d["heldout"] = report_json(self.heldout)
        return d


@dataclass
class DemoResult:
    workdir: Path
    facts: DemoFacts
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds


def unused_workdir(base: Path) -> Path:
    """``base`` if it is free or empty, else ``base-2``, ``base-3``, ...: never reuse."""
    cand, n = base, 1
    while cand.exists() and (not cand.is_dir() or any(cand.iterdir())):
        n += 1
        cand = base.with_name(f"{base.name}-{n}")
    return cand


def run_demo(workdir: Path, cfg: DemoConfig = DemoConfig(),
             say: Callable[[str], None] = print) -> DemoResult:
    """Run every step; raises the usual LeukoedgeErrors.

    Training and export are the training plugin's ``trainer`` and ``exporter``
    capabilities (:mod:`leukoedge.capabilities`), looked up before anything is written:
    without the train extra this fails at once with the extra to install.
    """
    from .capabilities import exporter, trainer
    from .classify import predict_stream
    from .evaluate import build_report, report_json
    from .session import SessionConfig, load_model
    from .synth import SynthConfig, generate

    train = trainer("demo")
    export = exporter("demo")
    steps: dict[str, float] = {}
    workdir.mkdir(parents=True, exist_ok=True)

    def step(name: str, t0: float) -> None:
        steps[name] = time.perf_counter() - t0

    t = time.perf_counter()
    say(f"1/4 synthesising cells: {cfg.train_patients} training and {cfg.test_patients} "
        f"held-out patients x {cfg.cells_per_patient} cells")
    generate(workdir / "synthetic-train", SynthConfig(
        patients=cfg.train_patients, cells_per_patient=cfg.cells_per_patient,
        seed=cfg.seed, size=cfg.image_size))
    generate(workdir / "synthetic-heldout", SynthConfig(
        patients=cfg.test_patients, cells_per_patient=cfg.cells_per_patient,
        seed=cfg.seed + 1000, size=cfg.image_size))
    step("synthesise", t)

    t = time.perf_counter()
    say(f"2/4 training the scratch CNN at {cfg.input_size} px for {cfg.epochs} epochs "
        "(validation split by patient)")
    tr = train(workdir / "synthetic-train", workdir / "run", arch="scratch",
               input_size=cfg.input_size, epochs=cfg.epochs, patience=cfg.epochs,
               seed=cfg.seed)
    step("train", t)

    t = time.perf_counter()
    say("3/4 exporting to ONNX; the parity check compares it with PyTorch on the real cells")
    ex = export(workdir / "run", workdir / "model.onnx", parity_data=sample_cells_dir())
    step("export + parity", t)

    t = time.perf_counter()
    say("4/4 classifying and evaluating the held-out synthetic patients with onnxruntime")
    model = load_model(ex.path, SessionConfig(provider="auto"))
    held = collect([workdir / "synthetic-heldout"])
    with ResultWriter(workdir / "heldout-predictions.csv") as w:
        preds = list(predict_stream(model, held, 32,
                                    on_batch=lambda b: w.write([p.row for p in b])))
    rep = build_report(preds, model)
    atomic_write_text(workdir / "heldout-report.json", json.dumps(report_json(rep), indent=2,
                                                                   default=str) + "\n")
    step("classify + evaluate", t)
    facts = DemoFacts(val_weighted_f1=tr.best_f1, best_epoch=tr.best_epoch, model=str(ex.path),
                      parity_max_abs_diff=ex.parity_max_abs_diff,
                      parity_images=ex.parity_images, provider=model.provider, heldout=rep)
    return DemoResult(workdir, facts, steps)
