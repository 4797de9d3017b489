"""Training data: the split, the in-memory uint8 cache, augmentation on tensors.

Every image goes through :func:`leukoedge.preprocess.preprocess` once (the one pipeline
deployment uses) and is kept in memory as uint8 ``[N, S, S, 3]``: 15,000 cells at 128 px
take 15k x 128 x 128 x 3 B = 0.74 GB (2.3 GB at 224 px), fine for C-NMC. Augmentation
works on the uint8 batch and returns uint8, so the model's own ``Normalize`` is the only
place where pixels become floats, in training as in the exported graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukoedge.data import Item, collect, fold_of, split_by_patient
from leukoedge.errors import DataError, UsageError
from leukoedge.preprocess import decode_batch

from .labels import labelled


@dataclass
class Split:
    """Training and validation items and how they were chosen."""

    train: list[Item]
    val: list[Item]
    method: str  # patient | image | folder | fold
    notes: list[str] = field(default_factory=list)

    def check(self, where: str) -> None:
        """Both sides non-empty and both classes in training, or a DataError."""
        if not self.train or not self.val:
            raise DataError(f"{where}: the split leaves {len(self.train)} training and "
                            f"{len(self.val)} validation images",
                            "add patients, change --val-fraction, or give --val")
        if len({it.label for it in self.train}) < 2:
            raise DataError("the training side of the split has only one class",
                            "add patients of both classes")

    def describe(self) -> dict[str, Any]:
        def patients(items: Sequence[Item]) -> list[str]:
            return sorted({it.patient for it in items if it.patient})

        def count(items: Sequence[Item], label: int) -> int:
            return sum(1 for it in items if it.label == label)

        return {
            "method": self.method,
            "train_images": len(self.train), "val_images": len(self.val),
            "train_all": count(self.train, 1), "train_hem": count(self.train, 0),
            "val_all": count(self.val, 1), "val_hem": count(self.val, 0),
            "train_patients": patients(self.train), "val_patients": patients(self.val),
        }


def make_split(data: Path, val: Path | None = None, val_fold: str | None = None,
               val_fraction: float = 0.2, seed: int = 0,
               by_image: bool = False) -> Split:
    """Choose validation data: a folder, a C-NMC fold, or (default) held-out patients."""
    chosen = [x for x, on in (("--val", val is not None), ("--val-fold", val_fold is not None),
                              ("--split-by-image", by_image)) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} contradict each other", "pick one")
    items = collect([data])
    n_all = len(items)
    items = labelled(items, str(data))
    notes = []
    if len(items) < n_all:
        notes.append(f"{n_all - len(items)} images without a label are left out")
    if val is not None:
        train, valid = items, labelled(collect([val]), str(val))
        method = "folder"
        overlap = {i.patient for i in train if i.patient is not None} \
            & {i.patient for i in valid}
        if overlap:
            notes.append(f"warning: {len(overlap)} patients appear in both DATA and --val "
                         f"(e.g. {sorted(overlap)[0]}); validation is optimistic")
    elif val_fold is not None:
        fold = val_fold.lower()
        valid = [it for it in items if fold_of(it.path) == fold]
        train = [it for it in items if fold_of(it.path) != fold]
        if not valid:
            folds = sorted({f for it in items if (f := fold_of(it.path))})
            raise UsageError(f"--val-fold {val_fold}: no image lies in a folder of that name",
                             f"folds found: {', '.join(folds) or 'none'}")
        method = "fold"
    elif by_image:
        train, valid = _split_by_image(items, val_fraction, seed)
        method = "image"
        notes.append("warning: --split-by-image puts cells of one patient on both sides; "
                     "validation scores will be optimistic (patient leak)")
    else:
        train, valid = split_by_patient(items, val_fraction, seed)
        method = "patient"
        overlap = {i.patient for i in train if i.patient is not None} \
            & {i.patient for i in valid}
        assert not overlap, overlap  # split_by_patient's promise
    split = Split(train, valid, method, notes)
    split.check(str(data))
    return split


def _split_by_image(items: list[Item], fraction: float,
                    seed: int) -> tuple[list[Item], list[Item]]:
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for label in (0, 1):
        idx = [i for i, it in enumerate(items) if it.label == label]
        k = int(round(fraction * len(idx)))
        val_idx.update(int(i) for i in rng.permutation(idx)[:k])
    return ([it for i, it in enumerate(items) if i not in val_idx],
            [it for i, it in enumerate(items) if i in val_idx])


@dataclass
class Loaded:
    """Decoded pixels of the readable items, in order, and what was skipped."""

    pixels: np.ndarray                       # uint8 [N, size, size, 3]
    items: list[Item]                        # the N items the pixels belong to
    skipped: list[tuple[Item, str]] = field(default_factory=list)  # item, why


def load_images(items: Sequence[Item], size: int, crop_fraction: float = 1.0,
                interpolation: str = "bilinear", workers: int | None = None,
                progress: Callable[[int], None] | None = None) -> Loaded:
    """Decode and resize every item once: uint8 ``[N, size, size, 3]``.

    Threads, because Pillow releases the GIL while decoding and resizing. A file that
    cannot be read (truncated, not an image, unreadable) is skipped and listed in
    ``Loaded.skipped`` with the reason, as a batch run turns a bad file into an error row;
    the caller reports it. The rows of ``pixels`` match ``Loaded.items``.
    """
    dec = decode_batch([it.path for it in items], size, crop_fraction, interpolation,
                       workers, progress)
    return Loaded(dec.pixels, [items[i] for i in dec.kept],
                  [(items[i], why) for i, why in dec.skipped])


def note_skipped(skipped: Sequence[tuple[object, str]], total: int, what: str) -> None:
    """One line on stderr when files were left out of ``what`` because they cannot be
    read (each (index or path, why), as :attr:`leukoedge.preprocess.Decoded.skipped`):
    how many, and the first reason."""
    if skipped:
        from leukoedge.console import note

        note(f"warning: {len(skipped)} of {total} {what} unreadable, left out "
             f"(first: {skipped[0][1]})")


def labels_of(items: Sequence[Item]) -> np.ndarray:
    return np.array([it.label for it in items], dtype=np.float32)


# -- augmentation ------------------------------------------------------------------------

def augment(batch: torch.Tensor, gen: torch.Generator, colour: float = 0.1,
            brightness: float = 0.15, gamma: float = 0.0) -> torch.Tensor:
    """Cell-friendly augmentation of a uint8 ``[N, H, W, 3]`` batch; returns uint8.

    - one of the 8 symmetries of the square per image (flips and 90-degree rotations:
      a cell has no up or left);
    - a brightness gain in ``1 +- brightness`` and a per-channel (stain) gain in
      ``1 +- colour``, both multiplicative, so the black background stays black;
    - with ``gamma > 0``, a per-channel gamma ``exp(U(-gamma, gamma))`` applied before the
      gains (a stain's non-linear response; black stays black).
    """
    n = batch.shape[0]
    out = batch.clone()
    sym = torch.randint(0, 8, (n,), generator=gen)
    for s in range(1, 8):
        idx = (sym == s).nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        x = out[idx]
        if s >= 4:
            x = x.flip(2)  # mirror left-right
        k = s % 4
        if k:
            x = torch.rot90(x, k, dims=(1, 2))
        out[idx] = x
    gain = 1.0 + (torch.rand((n, 1, 1, 1), generator=gen) * 2 - 1) * brightness
    gain = gain * (1.0 + (torch.rand((n, 1, 1, 3), generator=gen) * 2 - 1) * colour)
    x = out.to(torch.float32)
    if gamma > 0:
        g = torch.exp((torch.rand((n, 1, 1, 3), generator=gen) * 2 - 1) * gamma)
        x = 255.0 * (x / 255.0) ** g
    return (x * gain).round_().clamp_(0, 255).to(torch.uint8)
