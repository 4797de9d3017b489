"""``bench``: throughput and latency of each stage, one run, one machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..console import note, out
from ..errors import EXIT_OK, EXIT_SOME_FAILED, UsageError
from .common import open_model
from .options import PrecisionOpt, ProviderOpt, ThreadsOpt, WorkersOpt

if TYPE_CHECKING:
    from ..bench import BenchResult
    from ..bf16_gate import GateRecord
    from ..runtimes import RuntimeResult


def bench(
    model: Annotated[Path, typer.Argument(help="ONNX model to measure.")],
    provider: ProviderOpt = "auto",
    precision: PrecisionOpt = "f32",
    cells: Annotated[Path | None, typer.Option(
        "--cells", help="With --provider openvino --precision bf16: run the bf16 gate on "
        "these real cells (>= 500) and record it; with --runtimes: the cells for call "
        "agreement and the whole process.", show_default=False)] = None,
    runtimes: Annotated[bool, typer.Option(
        "--runtimes", help="Compare onnxruntime fp32/int8 and OpenVINO f32/bf16/int8 in one "
        "interleaved run: inference-only, whole process, call agreement on --cells.")] = False,
    int8: Annotated[Path | None, typer.Option(
        "--int8", help="With --runtimes: MODEL's int8 export ('export --precision int8').",
        show_default=False)] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1,
                                        help="With --runtimes: interleaved rounds.")] = 3,
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
    json_out: Annotated[Path | None, typer.Option(
        "--json-out", help="Also write the results as JSON here.", show_default=False)]
    = None,
    old_json: Annotated[Path | None, typer.Option(
        "--json", hidden=True, help="Deprecated spelling of --json-out PATH.",
        show_default=False)] = None,
) -> int:
    """Inference-only, decode, end-to-end (and PyTorch eager) throughput; with
    --runtimes the runtimes side by side; with --provider openvino --precision bf16
    --cells DIR the bf16 gate."""
    from ..bench import BenchPlan, run_bench
    from ..data import collect, sample_cells_dir
    from ..output import write_json

    as_json = _json_out(json_out, old_json)
    if runtimes:
        return _runtimes(model, int8, cells or data or sample_cells_dir(),
                         _batch_sizes(batch_sizes), seconds, rounds, threads, as_json)
    if int8 is not None:
        raise UsageError("--int8 goes with --runtimes")
    if cells is not None:
        if provider != "openvino" or precision != "bf16":
            raise UsageError("--cells runs the bf16 gate: use it with --provider openvino "
                             "--precision bf16 (or with --runtimes)")
        return _gate(model, cells, threads)

    eager = None
    if checkpoint is not None:  # without the train extra, say so before measuring anything
        from ..capabilities import torch_bench

        eager = (torch_bench("bench --checkpoint"), checkpoint)
    sizes = _batch_sizes(batch_sizes)
    files = [it.path for it in collect([data or sample_cells_dir()])]
    m = open_model(model, provider, threads, precision=precision)
    v = None if versus is None else open_model(versus, provider, threads,
                                               precision=precision)
    if v is not None and v.spec.input_size != m.spec.input_size:
        raise UsageError(f"--versus {versus} takes {v.spec.input_size} px images; "
                         f"{model} takes {m.spec.input_size} px")
    plan = BenchPlan(tuple(sizes), seconds, files_limit, workers, threads)
    res = run_bench(m, files, plan, versus=v, eager=eager, say=note)
    _table(res)
    if as_json is not None:
        write_json(as_json, res.as_dict())
    return EXIT_OK


def _json_out(json_out: Path | None, old_json: Path | None) -> Path | None:
    """--json-out PATH; the old spelling --json PATH still works, with a note."""
    if old_json is None:
        return json_out
    if json_out is not None:
        raise UsageError("give --json-out PATH only (--json PATH is its old spelling)")
    note("bench --json PATH is deprecated: use --json-out PATH (--json will be a flag, as "
         "in the other commands)")
    return old_json


def _gate(model: Path, cells: Path, threads: int | None) -> int:
    """Run the bf16 gate on ``cells``, record it, show it; exit 1 when the model fails."""
    from ..bf16_gate import run_gate, store_path, write_record
    from ..console import note
    from ..data import collect

    files = [it.path for it in collect([cells])]
    note(f"bf16 gate: OpenVINO f32 and bf16 on {len(files)} cells from {cells} ...")
    rec = run_gate(model, files, threads, str(cells))
    store = store_path()
    write_record(store, rec)
    _gate_table(rec, store)
    return EXIT_OK if rec.passed else EXIT_SOME_FAILED


def _gate_table(rec: GateRecord, store: Path) -> None:
    from ..bf16_gate import MIN_AGREEMENT, MIN_CELLS
    from ..console import facts_table

    t = facts_table("bf16 gate: OpenVINO bf16 vs f32", [
        ("model", f"{rec.model} (sha256 {rec.model_sha256[:16]}...)"),
        ("OpenVINO", rec.openvino_version), ("CPU bf16 instructions", rec.cpu_isa),
        ("cells", str(rec.cells)),
        ("call agreement", f"{rec.agreement:.2%} (needs >= {MIN_AGREEMENT:.0%} on "
                           f">= {MIN_CELLS} cells)"),
        ("max |logit difference|", f"{rec.max_abs_logit_diff:.4f}"),
        ("result", "[green]passed[/green]: --precision bf16 accepted for this model"
         if rec.passed else "[red]failed[/red]: --precision bf16 stays refused"),
        ("recorded in", str(store))])
    out.print(t)


def _runtimes(model: Path, int8: Path | None, cells: Path, sizes: list[int],
              seconds: float, rounds: int, threads: int | None, as_json: Path | None) -> int:
    """``--runtimes``: the five configurations, interleaved; the bf16 gate first when the
    CPU has bf16 and there are enough cells (so the whole process can run bf16)."""
    from ..bf16_gate import MIN_CELLS, run_gate, store_path, write_record
    from ..console import note
    from ..data import collect
    from ..output import write_json
    from ..ov_session import bf16_problem, import_ov
    from ..runtimes import compare, configs

    files = [it.path for it in collect([cells])]
    why_not = bf16_problem(import_ov())
    if why_not is not None:
        note(f"OpenVINO bf16 left out: {why_not}")
    gate_ok = False
    if why_not is None and len(files) >= MIN_CELLS:
        note(f"bf16 gate on {len(files)} cells ...")
        rec = run_gate(model, files, threads, str(cells))
        write_record(store_path(), rec)
        gate_ok = rec.passed
    res = compare(configs(model, int8, why_not is None), [cells], files, sizes, seconds,
                  rounds, threads, True, gate_ok, say=note)
    _runtimes_table(res)
    if as_json is not None:
        write_json(as_json, [r.to_json() for r in res])
    return EXIT_OK


def _runtimes_table(res: list[RuntimeResult]) -> None:
    ref = res[0]
    t = Table(title=f"leukoedge bench --runtimes: {ref.model}", title_justify="left")
    t.add_column("runtime")
    for b in ref.inference:
        t.add_column(f"batch {b}, img/s (x ref)", justify="right")
    t.add_column("whole process img/s (x ref)", justify="right")
    t.add_column("call agreement", justify="right")
    t.add_column("max |logit diff|", justify="right")
    for r in res:
        cols = [f"{v:.1f} (x{v / ref.inference[b]:.2f})" for b, v in r.inference.items()]
        wp, wr = r.whole_process_per_s, ref.whole_process_per_s
        cols.append(f"{wp:.1f} (x{wp / wr:.2f})" if wp and wr else r.whole_process_note)
        cols.append("" if r.agreement is None else f"{r.agreement:.2%} of {r.cells}")
        cols.append("" if r.max_abs_logit_diff is None else f"{r.max_abs_logit_diff:.2g}")
        t.add_row(r.name, *cols)
    out.print(t)


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
        runtime = "OpenVINO" if r.provider == "openvino" else "onnxruntime"
        t.add_row(f"{runtime}, batch {b}", f"{v:.1f}", "; ".join(extra))
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
