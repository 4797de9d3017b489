"""``bench``: throughput and latency of each stage, one run, one machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..console import note, out
from ..errors import EXIT_OK, UsageError
from .common import open_model
from .options import ProviderOpt, ThreadsOpt, WorkersOpt

if TYPE_CHECKING:
    from ..bench import BenchResult


def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model to measure.")],
    provider: ProviderOpt = "auto",
    batch_sizes: Annotated[str, typer.Option("--batch-sizes",
                                             help="Comma-separated batch sizes.")] = "1,8,32",
    data: Annotated[Path | None, typer.Option(
        "--data", help="Folder of real images (default: the cells shipped with leukoedge).",
        show_default=False)] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", help="Also time PyTorch eager on these weights (train extra).",
        show_default=False)] = None,
    seconds: Annotated[float, typer.Option("--seconds", min=0.01,
                                           help="Minimum time per measurement.")] = 3.0,
    files_limit: Annotated[int, typer.Option("--files", min=1,
                                             help="End-to-end: this many files (cycled).")] = 500,
    versus: Annotated[Path | None, typer.Option(
        "--versus", help="Also time this ONNX model (e.g. the fp32 export of an int8 one), "
        "interleaved with MODEL, and show the ratio.", show_default=False)] = None,
    threads: ThreadsOpt = None,
    workers: WorkersOpt = None,
    as_json: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON here.", show_default=False)] = None,
) -> int:
    """Inference-only, decode, end-to-end (and PyTorch eager) throughput."""
    from ..bench import BenchPlan, run_bench
    from ..data import collect, sample_cells_dir
    from ..output import atomic_write_text

    eager = None
    if checkpoint is not None:  # without the train extra, say so before measuring anything
        from ..capabilities import torch_bench

        eager = (torch_bench("bench --checkpoint"), checkpoint)
    sizes = _batch_sizes(batch_sizes)
    files = [it.path for it in collect([data or sample_cells_dir()])]
    m = open_model(model, provider, threads)
    v = None if versus is None else open_model(versus, provider, threads)
    if v is not None and v.spec.input_size != m.spec.input_size:
        raise UsageError(f"--versus {versus} takes {v.spec.input_size} px images; "
                         f"{model} takes {m.spec.input_size} px")
    plan = BenchPlan(tuple(sizes), seconds, files_limit, workers, threads)
    res = run_bench(m, files, plan, versus=v, eager=eager, say=note)
    _table(res)
    if as_json is not None:
        atomic_write_text(as_json, json.dumps(res.as_dict(), indent=2) + "\n")
    return EXIT_OK


def _batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,8,32`` -> ``[1, 8, 32]``."""
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError as exc:
        raise UsageError(f"--batch-sizes must be integers, got {text!r}") from exc
    if not sizes or min(sizes) < 1:
        raise UsageError("--batch-sizes needs at least one size >= 1")
    return sizes


def _table(r: BenchResult) -> None:
    t = Table(title=f"leukoedge bench: {r.model} on {r.provider}", title_justify="left")
    t.add_column("stage")
    t.add_column("images/s", justify="right")
    t.add_column("note")
    for b, v in r.inference.items():
        extra = []
        if b in r.torch:
            extra.append(f"PyTorch eager {r.torch[b]:.1f}/s -> onnxruntime/PyTorch "
                         f"x{r.torch_ratio[b]:.2f}")
        if b in r.versus_inference:
            extra.append(f"versus {r.versus_inference[b]:.1f}/s -> "
                         f"x{r.versus_ratio[b]:.2f}")
        t.add_row(f"onnxruntime, batch {b}", f"{v:.1f}", "; ".join(extra))
    if r.latency_ms:
        lat = r.latency_ms
        t.add_row("latency, batch 1", "", f"p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms")
    decode, opencv = r.decode_per_s or 0.0, r.opencv_per_s
    t.add_row("decode + preprocess (1 thread)", f"{decode:.1f}",
              f"OpenCV {opencv:.1f}/s -> x{decode / opencv:.2f}" if opencv
              else "OpenCV not installed")
    best = max(r.inference.values())
    e2e = r.end_to_end_per_s or 0.0
    t.add_row("end to end (classify pipeline)", f"{e2e:.1f}",
              f"x{e2e / best:.2f} of best inference-only")
    if r.unreadable:
        t.add_row("unreadable files", str(r.unreadable), "skipped")
    if r.versus:
        t.add_row("versus", "", r.versus)
    if r.torch_setting:
        t.add_row("PyTorch setting", "", r.torch_setting)
    out.print(t)
