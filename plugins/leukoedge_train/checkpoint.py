"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (so the
weights-only unpickler reads it and a checkpoint can never run code):

``format``, ``version``, ``architecture``, ``arch_kwargs``, ``model`` (state dict),
``spec`` (ModelSpec JSON), ``optimizer``, ``scheduler``, ``scaler``, ``epoch`` (epochs
done), ``history`` (one dict per epoch), ``best`` (epoch, metrics), ``config`` (the run's
resolved settings), ``rng`` (torch CPU generator state).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from leukoedge.errors import ModelError, UsageError, first_line
from leukoedge.output import atomic_path
from leukoedge.spec import ModelSpec

FORMAT = "leukoedge-checkpoint"
VERSION = 1
RUNS = Path("runs")


#: A checkpoint as :func:`save` writes and :func:`load` reads it (keys: see above).
Checkpoint = dict[str, Any]


def save(obj: Checkpoint, path: Path) -> None:
    """Write ``obj`` through :func:`leukoedge.output.atomic_path`: a reader (or a run
    killed mid-write) sees the previous checkpoint or this one, never half of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def load(path: Path) -> Checkpoint:
    """Read a leukoedge checkpoint with the weights-only unpickler."""
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read as a leukoedge checkpoint "
                         f"({first_line(exc)})") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ModelError(f"{path}: not a leukoedge checkpoint",
                         "pass a run folder or the best.pt / last.pt inside one")
    if obj.get("version", 0) > VERSION:
        raise ModelError(f"{path}: checkpoint version {obj.get('version')} is newer than "
                         f"this plugin reads ({VERSION})")
    return obj


def spec_of(ckpt: Checkpoint) -> ModelSpec:
    return ModelSpec.from_json(ckpt["spec"])


def model_of(ckpt: Checkpoint) -> torch.nn.Module:
    """The checkpoint's model, weights loaded, in eval mode, on the CPU."""
    from .models import create_model

    spec = spec_of(ckpt)
    model = create_model(ckpt["architecture"], spec.input_size, **ckpt.get("arch_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def newest_run(runs: Path = RUNS) -> Path:
    """The run folder under ``runs`` whose checkpoint was written last."""
    cands = [p for p in runs.glob("*/*.pt") if p.name in ("best.pt", "last.pt")] \
        if runs.is_dir() else []
    if not cands:
        raise ModelError(f"no run given and none found in {runs}/",
                         "train one first: 'leukoedge train scratch DATA', or name a run")
    return max(cands, key=lambda p: (p.stat().st_mtime, str(p))).parent


def resolve(target: Path | None, prefer: str = "best.pt") -> Path:
    """A checkpoint file from a run folder, a checkpoint path, or the newest run."""
    run = newest_run() if target is None else target
    if run.is_dir():
        for name in (prefer, "best.pt", "last.pt"):
            if (run / name).is_file():
                return run / name
        raise ModelError(f"{run}: no best.pt or last.pt in this folder",
                         "name a run folder written by 'leukoedge train'")
    if run.is_file():
        return run
    raise UsageError(f"{run}: no such run folder or checkpoint")


def run_name(ckpt_path: Path) -> str:
    """The name exports are called by: the run folder's name."""
    parent = ckpt_path.resolve().parent
    return parent.name if ckpt_path.suffix == ".pt" else ckpt_path.stem
