"""``synth``: synthetic cells in the C-NMC training layout (tests, demo)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import note, out
from ..errors import EXIT_OK, UsageError
from .options import OverwriteOpt


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    patients: Annotated[int, typer.Option("--patients", min=2, help="Number of patients.")] = 12,
    cells_per_patient: Annotated[int, typer.Option("--cells-per-patient", min=1,
                                                   help="Cells per patient.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same bytes).")] = 0,
    size: Annotated[int, typer.Option("--size", min=32, max=2048,
                                      help="Image side in pixels.")] = 450,
    all_fraction: Annotated[float, typer.Option("--all-fraction", min=0.0, max=1.0,
                                                help="Share of ALL cells.")] = 2 / 3,
    overwrite: OverwriteOpt = False,
) -> int:
    """Write synthetic cells (fold_i/all|hem/UID_*.bmp) and their traits.csv."""
    from ..synth import SynthConfig, check_out_dir, generate

    check_out_dir(out_dir, overwrite)
    try:
        cfg = SynthConfig(patients=patients, cells_per_patient=cells_per_patient, seed=seed,
                          size=size, all_fraction=all_fraction)
        cfg.validate()
        summary = generate(out_dir, cfg, overwrite=overwrite)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    note(f"synthetic cells written to {out_dir}")
    out.print(f"{summary.images} images ({summary.all_images} ALL from "
              f"{len(summary.all_patients)} patients, {summary.hem_images} HEM from "
              f"{len(summary.hem_patients)} patients) in {out_dir}; traits in "
              f"{summary.traits_csv}")
    return EXIT_OK
