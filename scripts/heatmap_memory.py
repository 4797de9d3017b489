"""Peak memory of ``classify --cam`` against the number of files (docs/heatmaps.md).

Builds folders of N files (hard links of the real cells given, cycled; 100 per
sub-folder, so the overlays mirror a tree), runs ``leukoedge classify ... --cam`` on each
in a fresh process, and reports that process's peak resident set size
(``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper that runs only it) and wall time.
Usage::

    nice -n 10 python scripts/heatmap_memory.py MODEL.onnx ../shared/data/cnmc-sample \\
        --counts 1000 4000 --work /tmp/heatmap-memory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

from leukoedge.data import collect

WRAPPER = ("import resource, subprocess, sys; "
           "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def build(src: list[Path], n: int, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    for i in range(n):
        f = src[i % len(src)]
        d = dest / f"part-{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{i:05d}-{f.name}"
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("cells", type=Path)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "heatmap-memory")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    src = [it.path for it in collect([args.cells])]
    exe = os.environ.get("LEUKOEDGE") or shutil.which("leukoedge") or "leukoedge"  # on PATH
    results = []
    for n in args.counts:
        data, heat, out = args.work / f"in{n}", args.work / f"heat{n}", args.work / f"p{n}.csv"
        build(src, n, data)
        for p in (heat, out):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        t0 = time.perf_counter()
        got = subprocess.run(
            [sys.executable, "-c", WRAPPER, str(exe), "classify", str(data), "--model",
             str(args.model), "--out", str(out), "--cam", str(heat), "--batch-size",
             str(args.batch_size)], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        rss_kb, rc = (int(v) for v in got.stdout.split())
        pngs = sum(1 for _ in heat.rglob("*.png"))
        results.append({"files": n, "overlays": pngs, "exit_code": rc,
                        "peak_rss_mb": rss_kb / 1024, "wall_s": wall})
        print(f"{n} files: {pngs} overlays, peak RSS {rss_kb / 1024:.1f} MB, "
              f"{wall:.1f} s (exit {rc})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
