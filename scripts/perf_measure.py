#!/usr/bin/env python3
"""The measurement pass behind docs/performance.md: every CPU target as a ratio, each from
one run on one machine, repeated ``--repeat`` times (the median is reported).

    python scripts/perf_measure.py --scratch M.onnx --scratch-run RUN \
        --scratch-int8 M8.onnx --resnet R.onnx --resnet-run RUN --resnet-int8 R8.onnx \
        --cells ../shared/data/cnmc-sample --out perf.json

Real-size files for the end-to-end and memory runs are hard links of ``--cells`` in a temp
folder (page-cached, as a folder on a local disk is after its first read). Nothing here
is a test: timings are never asserted. It runs ``python -m leukoedge`` of the tree it sits
in (put the tree first on PYTHONPATH when another copy is installed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
LE = [PY, "-m", "leukoedge"]


def sh(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload,no-any-return]


def bench(model: Path, cells: Path, sizes: str, seconds: float, files: int,
          extra: list[str]) -> dict[str, object]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        js = Path(fh.name)
    r = sh(LE + ["bench", str(model), "--provider", "cpu", "--batch-sizes", sizes,
                 "--seconds", str(seconds), "--files", str(files), "--data", str(cells),
                 "--json-out", str(js)] + extra)
    if r.returncode != 0:
        raise SystemExit(f"bench failed: {r.stderr[-2000:]}")
    d = json.loads(js.read_text())
    js.unlink()
    return d  # type: ignore[no-any-return]


def link_cells(cells: Path, n: int, root: Path) -> Path:
    src = sorted(p for p in cells.rglob("*") if p.suffix.lower() == ".bmp")
    out = root / f"real{n}"
    for i in range(n):
        s = src[i % len(src)]
        d = out / s.parent.name
        d.mkdir(parents=True, exist_ok=True)
        os.link(s, d / f"{i:05d}_{s.name}")
    return out


def timed_classify(model: Path, folder: Path, extra: list[str] | None = None
                   ) -> tuple[float, int]:
    """Wall seconds and max RSS (KB) of one whole `leukoedge classify` process."""
    out = folder.parent / "pred.csv"
    cmd = ["/usr/bin/time", "-v"] + LE + ["classify", str(folder), "--model", str(model),
                                          "--provider", "cpu", "--out", str(out),
                                          "--overwrite"] + (extra or [])
    t0 = time.perf_counter()
    r = sh(cmd)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"classify failed: {r.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))  # type: ignore[union-attr]
    return wall, rss


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("scratch", "scratch-run", "scratch-int8", "resnet", "resnet-run",
              "resnet-int8", "cells", "out"):
        ap.add_argument(f"--{k}", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    res: dict[str, object] = {
        "cpu": sh(["lscpu"]).stdout, "loadavg_start": os.getloadavg(),
        "python": sys.version.split()[0], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    runs: dict[str, list[float]] = {}

    def add(key: str, v: float) -> None:
        runs.setdefault(key, []).append(v)
        print(f"  {key}: {v:.3f}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="leukoedge-perf-") as tmp:
        root = Path(tmp)
        real = {n: link_cells(a.cells, n, root) for n in (500, 1000, 2000, 10000)}
        for rep in range(a.repeat):
            print(f"== round {rep + 1}/{a.repeat}", file=sys.stderr, flush=True)
            # 1. onnxruntime vs PyTorch eager (+ decode vs OpenCV at the model's size)
            for name, model, run in (("scratch", a.scratch, a.scratch_run),
                                     ("resnet50", a.resnet, a.resnet_run)):
                d = bench(model, a.cells, "1,8,32", a.seconds, 64, ["--checkpoint", str(run)])
                for b, v in d["onnxruntime_over_torch"].items():  # type: ignore[attr-defined]
                    add(f"{name}.ort_over_torch.b{b}", v)
                    add(f"{name}.ort.b{b}", d["inference"][b])  # type: ignore[index]
                    add(f"{name}.torch.b{b}", d["torch"][b])  # type: ignore[index]
                add(f"{name}.decode_per_s", d["decode_per_s"])  # type: ignore[arg-type]
                add(f"{name}.opencv_per_s", d["opencv_per_s"])  # type: ignore[arg-type]
                add(f"{name}.decode_over_opencv",
                    d["decode_per_s"] / d["opencv_per_s"])  # type: ignore[operator]
                res[f"{name}.torch_setting"] = d["torch_setting"]
            # 2. int8 / fp32, interleaved in one bench run
            for name, int8, fp32 in (("scratch", a.scratch_int8, a.scratch),
                                     ("resnet50", a.resnet_int8, a.resnet)):
                d = bench(int8, a.cells, "32", 2 * a.seconds, 32, ["--versus", str(fp32)])
                add(f"{name}.int8_over_fp32.b32", d["over_versus"]["32"])  # type: ignore[index]
                add(f"{name}.int8.b32", d["inference"]["32"])  # type: ignore[index]
                add(f"{name}.fp32.b32", d["versus_inference"]["32"])  # type: ignore[index]
            # 3. whole classify process vs inference-only (bench just before and after)
            for name, model, n in (("scratch", a.scratch, 2000), ("resnet50", a.resnet, 500)):
                before = bench(model, a.cells, "32", a.seconds, 32, [])["inference"]["32"]  # type: ignore[index]
                wall, _ = timed_classify(model, real[n])
                after = bench(model, a.cells, "32", a.seconds, 32, [])["inference"]["32"]  # type: ignore[index]
                inf = (before + after) / 2.0
                add(f"{name}.e2e_files", n)
                add(f"{name}.e2e_per_s", n / wall)
                add(f"{name}.e2e_inference_per_s", inf)
                add(f"{name}.e2e_over_inference", n / wall / inf)
            # 4. --help
            helps = []
            for _ in range(5):
                t0 = time.perf_counter()
                sh(LE + ["--help"])
                helps.append(time.perf_counter() - t0)
            add("help_seconds", med(helps))
        # 5. memory, once (not a timing): 1,000 vs 10,000 files
        _, rss1 = timed_classify(a.scratch, real[1000])
        _, rss10 = timed_classify(a.scratch, real[10000])
        add("memory.rss_kb_1000", rss1)
        add("memory.rss_kb_10000", rss10)
        add("memory.ratio", rss10 / rss1)
    res["runs"] = runs
    res["median"] = {k: med(v) for k, v in runs.items()}
    res["loadavg_end"] = os.getloadavg()
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res["median"].items():  # type: ignore[attr-defined]
        print(f"{k:40s} {v:12.3f}   runs: {', '.join(f'{x:.3f}' for x in runs[k])}")


if __name__ == "__main__":
    main()
