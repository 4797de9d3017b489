"""The files of a run folder besides the checkpoints (:mod:`.checkpoint`): ``config.json``,
``history.csv``, ``curves.png`` and ``skipped.csv``, each written atomically.

:class:`RunFiles` is one run folder's writer; it notes once per run when matplotlib is
missing (no curves), instead of a flag kept in the module.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from leukoedge.console import note
from leukoedge.data import Item
from leukoedge.output import atomic_path, atomic_write_text, escape_path

from . import checkpoint as ckpt_io

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                   "val_weighted_f1", "lr", "seconds")
#: A file left out of training: the side (train or val), the item, why.
Skipped = tuple[str, Item, str]


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def default_run_dir(arch: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return ckpt_io.RUNS / f"{arch}-{stamp}"


def write_history(history: list[dict[str, float]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    for row in history:
        w.writerow([int(row["epoch"])] + [f"{row[k]:.6g}" for k in HISTORY_COLUMNS[1:]])
    atomic_write_text(path, buf.getvalue())


def plot_curves(history: list[dict[str, float]], path: Path) -> bool:
    """Loss, and accuracy / weighted F1, per epoch, train vs validation (matplotlib Agg);
    False (and no file) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    ep = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    a.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    a.plot(ep, [r["val_loss"] for r in history], "o-", label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("BCE loss")
    a.legend()
    b.plot(ep, [r["train_acc"] for r in history], "o-", label="train accuracy")
    b.plot(ep, [r["val_acc"] for r in history], "o-", label="validation accuracy")
    b.plot(ep, [r["val_weighted_f1"] for r in history], "s--", label="validation weighted F1")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1.02)
    b.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return True


def write_skipped(skipped: list[Skipped], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["side", "path", "reason"])
    for side, it, why in skipped:
        w.writerow([side, escape_path(it.path), why])
    atomic_write_text(path, buf.getvalue())


@dataclass
class RunFiles:
    """Writes one run folder's files; :meth:`epoch_done` after every epoch."""

    run_dir: Path
    curves_missing_noted: bool = False

    def write_config(self, doc: dict[str, Any], resumed: bool) -> None:
        """``config.json``: a new run's, or a resumed run's that lacks one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resumed or not (self.run_dir / "config.json").exists():
            atomic_write_text(self.run_dir / "config.json", json.dumps(doc, indent=2) + "\n")

    def write_skipped(self, skipped: list[Skipped]) -> None:
        """``skipped.csv``, when files were left out."""
        if skipped:
            write_skipped(skipped, self.run_dir / "skipped.csv")

    def epoch_done(self, history: list[dict[str, float]]) -> None:
        """``history.csv`` and ``curves.png`` after an epoch."""
        write_history(history, self.run_dir / "history.csv")
        if not plot_curves(history, self.run_dir / "curves.png") \
                and not self.curves_missing_noted:
            note("matplotlib is not installed: no curves.png (pip install matplotlib)")
            self.curves_missing_noted = True
