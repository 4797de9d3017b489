"""Write leukoedge/sample_cells/out-of-fold.csv: the out-of-fold logits of the shipped cells.

Each logit comes from the shipped recipe's cross-validation model that never saw the cell's
patient (docs/accuracy.md), so the demo can show, next to the shipped model's call on a
cell of one of its own training patients, what a model that had not seen the patient said.

    python scripts/sample_cells_oof.py docs/cv/full/lite0      # a 'cv run' folder
    python scripts/sample_cells_oof.py docs/cv/full/gap-oof.csv  # or one pooled file
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CELLS = REPO / "leukoedge" / "sample_cells"


def main(oof_csv: str) -> int:
    by_stem = {}
    src = Path(oof_csv)
    files = sorted(src.glob("oof-fold-*.csv")) if src.is_dir() else [src]
    if not files:
        print(f"{oof_csv}: no oof-fold-*.csv in this folder", file=sys.stderr)
        return 2
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                by_stem[Path(r["path"]).stem] = r
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "patient", "fold", "logit"])
    missing = []
    for f in sorted(CELLS.glob("*/*.bmp")):
        r = by_stem.get(f.stem)
        if r is None:
            missing.append(f.name)
            continue
        w.writerow([f.relative_to(CELLS).as_posix(), r["patient"], r["fold"], r["logit"]])
    if missing:
        print(f"not in {oof_csv}: {', '.join(missing)}", file=sys.stderr)
        return 1
    (CELLS / "out-of-fold.csv").write_text(buf.getvalue(), encoding="utf-8")
    print(f"wrote {CELLS / 'out-of-fold.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/cv/full/gap-oof.csv"))
