"""``leukoedge demo``: the whole job on built-in data, in a few minutes on a CPU.

synthetic cells -> train the scratch CNN briefly -> export to ONNX (with its parity check)
-> classify and evaluate held-out synthetic patients -> classify the real C-NMC cells
shipped with the package. Everything stays in the work folder. The model learns synthetic
cells: it is a demonstration of the pipeline, not a diagnostic model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import collect, sample_cells_dir
from .output import ResultWriter, atomic_write_text


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


@dataclass
class DemoResult:
    workdir: Path
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    facts: dict[str, Any] = field(default_factory=dict)


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
    from .classify import classify_files, predict_stream
    from .evaluate import build_report, clean
    from .session import SessionConfig, load_model
    from .synth import SynthConfig, generate

    train = trainer("demo")
    export = exporter("demo")
    res = DemoResult(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    def step(name: str, t0: float) -> None:
        res.steps[name] = time.perf_counter() - t0

    t = time.perf_counter()
    say(f"1/5 synthesising cells: {cfg.train_patients} training and {cfg.test_patients} "
        f"held-out patients x {cfg.cells_per_patient} cells")
    generate(workdir / "synthetic-train", SynthConfig(
        patients=cfg.train_patients, cells_per_patient=cfg.cells_per_patient,
        seed=cfg.seed, size=cfg.image_size))
    generate(workdir / "synthetic-heldout", SynthConfig(
        patients=cfg.test_patients, cells_per_patient=cfg.cells_per_patient,
        seed=cfg.seed + 1000, size=cfg.image_size))
    step("synthesise", t)

    t = time.perf_counter()
    say(f"2/5 training the scratch CNN at {cfg.input_size} px for {cfg.epochs} epochs "
        "(validation split by patient)")
    tr = train(workdir / "synthetic-train", workdir / "run", arch="scratch",
               input_size=cfg.input_size, epochs=cfg.epochs, patience=cfg.epochs,
               seed=cfg.seed)
    res.facts["val_weighted_f1"] = tr.best_f1
    res.facts["best_epoch"] = tr.best_epoch
    step("train", t)

    t = time.perf_counter()
    say("3/5 exporting to ONNX; the parity check compares it with PyTorch on the real cells")
    ex = export(workdir / "run", workdir / "model.onnx", parity_data=sample_cells_dir())
    res.facts["model"] = str(ex.path)
    res.facts["parity_max_abs_diff"] = ex.parity_max_abs_diff
    res.facts["parity_images"] = ex.parity_images
    step("export + parity", t)

    t = time.perf_counter()
    say("4/5 classifying and evaluating the held-out synthetic patients with onnxruntime")
    model = load_model(ex.path, SessionConfig(provider="auto"))
    res.facts["provider"] = model.provider
    held = collect([workdir / "synthetic-heldout"])
    with ResultWriter(workdir / "heldout-predictions.csv") as w:
        preds = list(predict_stream(model, held, 32,
                                    on_batch=lambda b: w.write([p.row for p in b])))
    rep = build_report(preds, model)
    atomic_write_text(workdir / "heldout-report.json", json.dumps(clean(rep), indent=2,
                                                                   default=str) + "\n")
    res.facts["heldout"] = rep
    step("classify + evaluate", t)

    t = time.perf_counter()
    say("5/5 classifying the real C-NMC cells shipped with leukoedge")
    real = collect([sample_cells_dir()])
    with ResultWriter(workdir / "real-cells-predictions.csv") as w:
        stats = classify_files(model, real, w, 32)
    res.facts["real_cells"] = stats.files
    res.facts["real_errors"] = stats.errors
    res.facts["real_predicted_all"] = stats.positives
    step("real cells", t)
    return res
