"""``leukoedge export`` and ``leukoedge parity``: flags, then the library
(:mod:`..export`, :mod:`..parity`), then a small table.

Thin: each calls :func:`leukoedge.plugins.require_torch` before any torch-using module is
imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from leukoedge.errors import EXIT_OK, UsageError
from leukoedge.spec import ONNX_OPSET


if TYPE_CHECKING:
    from ..parity import ParityResult
    from ..precision import PrecisionReport

RunArg = Annotated[Path | None, typer.Argument(
    help="Run folder (its best.pt), or a .pt checkpoint; default: the newest run in runs/.",
    show_default=False)]


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

    from ..export import ParityRejected, PrecisionRejected, export_onnx

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
    from .. import checkpoint as ckpt_io
    from ..parity import check_checkpoint

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
