"""The optimisation of a run: its stages (head-only, then fine-tuning), the learning-rate
schedule (linear warm-up, cosine decay), optimiser steps per epoch, and the loss, optimiser
and mixed precision (:func:`build_optimisation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .models import head_prefixes, trainable_prefixes


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 1% of ``peak``."""
    if schedule == "constant":
        return peak
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


@dataclass
class Stage:
    name: str
    first: int  # first epoch (1-based) of this stage
    last: int
    prefixes: tuple[str, ...] | None  # trainable backbone modules; None = all
    lr: float


def stages_of(c: TrainConfig) -> list[Stage]:
    assert c.epochs is not None and c.head_epochs is not None and c.unfreeze is not None
    assert c.lr is not None and c.finetune_lr is not None
    out = []
    if c.head_epochs:
        out.append(Stage("head", 1, min(c.head_epochs, c.epochs), head_prefixes(c.arch), c.lr))
    if c.epochs > c.head_epochs:
        lr = c.finetune_lr if c.head_epochs else c.lr
        out.append(Stage("finetune" if c.head_epochs else "train", c.head_epochs + 1, c.epochs,
                         trainable_prefixes(c.arch, c.unfreeze), lr))
    return out


def steps_in_epoch(images: int, batch_size: int) -> int:
    """Optimiser steps per epoch: a last batch of one is dropped (see :func:`train_one_epoch`)."""
    return max(1, images // batch_size + (1 if images % batch_size > 1 else 0))


@dataclass
class Optimisation:
    """The loss, the optimiser and mixed precision of a run."""

    criterion: nn.BCEWithLogitsLoss
    pos_weight: float
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype


def build_optimisation(c: TrainConfig, model: nn.Module, y_train: torch.Tensor,
                       device: torch.device) -> Optimisation:
    """Class-weighted BCE (``pos_weight`` = HEM/ALL), AdamW, and autocast + GradScaler
    when mixed precision runs (CUDA only; bf16 where supported, else fp16)."""
    n_pos = float(y_train.sum())
    n_neg = float(len(y_train) - n_pos)
    pos_weight = torch.tensor([n_neg / n_pos if c.class_weights and n_pos else 1.0],
                              device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.lr or 1e-3,
                                  weight_decay=c.weight_decay or 0.0)
    use_amp = bool(c.amp) and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return Optimisation(nn.BCEWithLogitsLoss(pos_weight=pos_weight),
                        float(pos_weight.item()), optimizer, scaler, use_amp, amp_dtype)


def training_loss(opt: Optimisation, logits: torch.Tensor, y: torch.Tensor,
                  w: torch.Tensor | None = None) -> torch.Tensor:
    """The run's class-weighted BCE, each cell's term times its weight in ``w`` (if given)
    before the mean: with ``w`` None it is ``opt.criterion`` exactly."""
    bce = nn.functional.binary_cross_entropy_with_logits
    if w is None:
        return bce(logits, y, pos_weight=opt.criterion.pos_weight)
    return (bce(logits, y, pos_weight=opt.criterion.pos_weight, reduction="none") * w).mean()
