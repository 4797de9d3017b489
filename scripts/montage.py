"""Montage of real C-NMC cells above synthetic cells, for docs/synthetic.md.

Usage::

    python scripts/montage.py [--cells CELLS] [--out docs/img/synth-vs-real.png] [--seed 3]

Top two rows: 6 real ALL and 6 real HEM cells from ../shared/data/cnmc-sample
(first files in sorted order). Bottom two rows: 6 synthetic ALL and 6 synthetic
HEM cells. Each tile is downscaled to 150 px; a thin grey line separates real
from synthetic.

Real cells: C-NMC 2019, Gupta, A., & Gupta, R. (2019). ALL Challenge dataset of
ISBI 2019 [Data set]. The Cancer Imaging Archive.
https://doi.org/10.7937/tcia.2019.dc64i46r (CC BY 3.0)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

REAL_DIR = ROOT.parent / "shared" / "data" / "cnmc-sample"
TILE = 150
COLS = 6


def tiles(paths: list[Path]) -> list[Image.Image]:
    return [
        Image.open(p).convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS) for p in paths
    ]


def main() -> None:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    from leukoedge.synth import SynthConfig, generate

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "synth-vs-real.png")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--cells", type=Path, default=REAL_DIR,
                    help="folder of real C-NMC cells (fold_*/all|hem/*.bmp)")
    args = ap.parse_args()

    real_all = sorted(args.cells.glob("fold_*/all/*.bmp"))[:COLS]
    real_hem = sorted(args.cells.glob("fold_*/hem/*.bmp"))[:COLS]
    if len(real_all) < COLS or len(real_hem) < COLS:
        sys.exit(f"need {COLS} real cells of each class under {args.cells}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth"
        generate(
            out, SynthConfig(patients=6, cells_per_patient=4, seed=args.seed, all_fraction=0.5)
        )
        # one cell from each of several patients, to show patient variation
        syn_all = sorted(out.glob("fold_*/all/*.bmp"), key=lambda p: (p.name.split("_")[2], p.name))
        syn_hem = sorted(out.glob("fold_*/hem/*.bmp"), key=lambda p: (p.name.split("_")[2], p.name))
        rows = [tiles(real_all), tiles(real_hem), tiles(syn_all[:COLS]), tiles(syn_hem[:COLS])]

    gap = 4
    sheet = Image.new("RGB", (COLS * TILE, 4 * TILE + gap), (0, 0, 0))
    for r, row in enumerate(rows):
        y = r * TILE + (gap if r >= 2 else 0)
        for c, im in enumerate(row):
            sheet.paste(im, (c * TILE, y))
    sheet.paste((90, 90, 90), (0, 2 * TILE, COLS * TILE, 2 * TILE + gap))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
