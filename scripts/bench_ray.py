"""Ray engine vs the local engine: whole `leukoedge classify` runs over the same files.

    nice -n 10 python scripts/bench_ray.py --files 20000 --rounds 2 \
        --json /tmp/bench_ray20k.json

Copies the real C-NMC cells of --cells (default: this project's ../shared/data/cnmc-
sample, 43 BMPs) into --folder (default: under the temp folder) until it holds --files
files (copies, not links: every file is its own file), then runs the two engines
alternately, --rounds times each, as the user would: one process per run, timed from its
start to its exit (start-up and shutdown included). Reported per run: wall time, files/s,
the time to the first row on disk (for Ray: starting the local cluster, the actor and its
model, and the first block), Ray's own cluster start-up (its note), the time from the last
row on disk to the exit (for Ray: stopping the local cluster), and the load average before
and after (the machine is shared with a training job). Both engines write CSV; the rows of
the last two runs are compared (same files in the same order; label differences and the
largest P(ALL) difference).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELLS = REPO.parent / "shared" / "data" / "cnmc-sample"
MODEL = REPO / "leukoedge" / "models" / "default.onnx"
# the `leukoedge` on PATH (or $LEUKOEDGE): the installed command a user runs
LEUKOEDGE = os.environ.get("LEUKOEDGE") or shutil.which("leukoedge") or "leukoedge"


def make_files(cells: Path, folder: Path, n: int) -> Path:
    src = sorted(cells.rglob("*.bmp"))
    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.bmp")))
    for i in range(have, n):
        s = src[i % len(src)]
        # keep the C-NMC name (patient parsing) and make it unique
        shutil.copyfile(s, folder / f"{s.stem}_copy{i:06d}.bmp")
    return folder


def shown(path: Path) -> str:
    """A path as the JSON records it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 16).count(b"\n")
    except OSError:
        return 0


def one_run(engine: str, folder: Path, out: Path, model: Path, extra: list[str]) -> dict:
    cmd = [LEUKOEDGE, "classify", str(folder),
           "--model", str(model), "--out", str(out), "--overwrite", "--engine", engine,
           *extra]
    out.unlink(missing_ok=True)  # the first-row clock must not see the last run's file
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    w0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_row = None
    while proc.poll() is None:
        if first_row is None and lines(out) >= 2:  # header + one row
            first_row = time.perf_counter() - t0
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{engine} run failed ({proc.returncode}):\n{stderr[-3000:]}")
    files = sum(1 for _ in open(out, encoding="utf-8")) - 1
    last_row = out.stat().st_mtime - w0  # the last write to the result file
    m = re.search(r"ray: started a local cluster in ([0-9.]+) s", stderr)
    return {"engine": engine, "files": files, "wall_s": round(wall, 2),
            "files_per_s": round(files / wall, 1),
            "first_row_s": None if first_row is None else round(first_row, 2),
            "ray_cluster_start_s": float(m.group(1)) if m else None,
            "last_row_s": round(last_row, 2), "after_last_row_s": round(wall - last_row, 2),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()]}


def compare(a: Path, b: Path) -> dict:
    ra = list(csv.DictReader(open(a, encoding="utf-8")))
    rb = list(csv.DictReader(open(b, encoding="utf-8")))
    assert [r["path"] for r in ra] == [r["path"] for r in rb], "different files or order"
    labels = sum(x["label"] != y["label"] for x, y in zip(ra, rb))
    dp = max((abs(float(x["prob_all"]) - float(y["prob_all"]))
              for x, y in zip(ra, rb) if x["prob_all"] and y["prob_all"]), default=0.0)
    return {"rows": len(ra), "label_differences": labels, "max_prob_difference": dp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cells", type=Path, default=CELLS, help="folder of real cells (BMP)")
    ap.add_argument("--folder", type=Path,
                    default=Path(tempfile.gettempdir()) / "leukoedge-bench-ray" / "cells")
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t = time.perf_counter()
    folder = make_files(args.cells, args.folder, args.files)
    print(f"{args.files} files in {folder} ({time.perf_counter() - t:.0f} s to copy)",
          file=sys.stderr)
    work = args.folder.parent
    runs = []
    for r in range(args.rounds):
        for engine in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
            res = one_run(engine, folder, work / f"{engine}.csv", args.model, [])
            res["round"] = r
            runs.append(res)
            print(json.dumps(res), file=sys.stderr)
    total = {e: sum(x["wall_s"] for x in runs if x["engine"] == e) for e in ("local", "ray")}
    result = {
        "files": args.files, "model": shown(args.model), "rounds": args.rounds,
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "runs": runs,
        "ratio_ray_over_local_throughput": round(total["local"] / total["ray"], 3),
        "rows_compared": compare(work / "local.csv", work / "ray.csv"),
        "command": " ".join(["scripts/bench_ray.py", *sys.argv[1:]]),
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
