"""Option types shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Paths = Annotated[list[Path], typer.Argument(
    help="Image files or folders (searched recursively).", show_default=False)]
ModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="ONNX model; default: the newest .onnx in ./exported/.",
    show_default=False)]
ProviderOpt = Annotated[str, typer.Option(
    "--provider", "-p", help="Execution provider: auto, cpu, cuda, tensorrt or openvino "
    "(the OpenVINO runtime: the openvino extra; openvino:GPU etc. for its other devices). "
    "auto never picks openvino.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="f32, or bf16 (--provider openvino on a CPU with AMX/AVX512-BF16, "
    "after the model passed its bf16 gate: docs/usage.md).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="Inference threads (default: the cores present).", show_default=False)]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Decoding threads (default: the cores present, at most 8).",
    show_default=False)]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, max=4096,
                                       help="Images per inference batch.")]
LabelsOpt = Annotated[Path | None, typer.Option(
    "--labels", help="C-NMC prelim-test label CSV (Patient_ID,new_names,labels).",
    show_default=False)]
ThresholdOpt = Annotated[float | None, typer.Option(
    "--threshold", min=0.0, max=1.0,
    help="Decision threshold on P(ALL); default: the one in the model's spec.",
    show_default=False)]
FoldsOpt = Annotated[str | None, typer.Option(
    "--folds", help="Only the rows of these folds (comma-separated) of a predictions file "
                    "with a 'fold' column, e.g. 0,1,2.", show_default=False)]
MinCellsOpt = Annotated[int | None, typer.Option(
    "--min-cells", min=1, max=100_000,
    help="Fewest classified cells a patient needs for a call and a drift flag; default: "
         "the model's patient rule (docs/usage.md, 'Patients').", show_default=False)]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace existing output files.")]
#: ``--json`` is a flag everywhere: print the result as JSON instead of a table
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON, not a table.")]
