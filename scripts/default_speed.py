#!/usr/bin/env python3
"""Two (or more) models, interleaved in one run: inference-only images/s (``leukoedge bench``,
batch 32) and whole-process ``leukoedge classify`` of a folder (start-up, decoding,
inference, CSV), each repeated ``--repeat`` times in the order A B A B ...; the medians and
the ratio to the first model. Feeds docs/performance.md ("The shipped model").

    python scripts/default_speed.py --cells ../shared/data/cnmc-real \\
        --model gap=old.onnx --model lite0=leukoedge/models/default.onnx --repeat 3

Runs the ``leukoedge`` found on PATH (or ``--leukoedge``). Timings are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    want = ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2")
    return [f for f in want if f" {f}" in text]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r


def inference(le: str, model: Path, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        run([le, "bench", str(model), "--provider", "cpu", "--batch-sizes", "32",
             "--seconds", str(seconds), "--json-out", str(out)])
        d = json.loads(out.read_text())
    return float(d["inference"]["32"])


def whole(le: str, model: Path, cells: Path) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.csv"
        t0 = time.perf_counter()
        run([le, "classify", str(cells), "--model", str(model), "--provider", "cpu",
             "--out", str(out)])
        dt = time.perf_counter() - t0
        rows = sum(1 for _ in out.open()) - 1
    return rows / dt, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE.onnx")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--leukoedge", default=shutil.which("leukoedge") or "leukoedge")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    models = [(m.split("=", 1)[0], Path(m.split("=", 1)[1])) for m in args.model]
    inf: dict[str, list[float]] = {n: [] for n, _ in models}
    who: dict[str, list[float]] = {n: [] for n, _ in models}
    for r in range(args.repeat):
        for name, path in models:
            inf[name].append(inference(args.leukoedge, path, args.seconds))
            rate, rows = whole(args.leukoedge, path, args.cells)
            who[name].append(rate)
            print(f"round {r + 1} {name}: inference {inf[name][-1]:.0f}/s, whole process "
                  f"{rate:.0f}/s ({rows} rows)", file=sys.stderr, flush=True)
    first = models[0][0]
    result = {"cpu": cpu_name(), "flags": cpu_flags(), "cores": os.cpu_count(),
              "cells": str(args.cells), "repeat": args.repeat, "models": {}}
    print(f"CPU: {result['cpu']} ({', '.join(result['flags'])}), {os.cpu_count()} cores; "
          f"median of {args.repeat} interleaved rounds\n")
    print("| model | inference-only, batch 32 (img/s) | whole-process classify (img/s) | "
          f"whole process vs {first} |")
    print("|---|---|---|---|")
    for name, path in models:
        i, w = statistics.median(inf[name]), statistics.median(who[name])
        ratio = w / statistics.median(who[first])
        result["models"][name] = {"file": str(path), "inference": inf[name],  # type: ignore[index]
                                  "whole": who[name], "ratio_whole": ratio}
        print(f"| {name} | {i:.0f} | {w:.0f} | {ratio:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
