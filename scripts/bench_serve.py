"""Load benchmark of ``leukoedge serve`` against whole-process ``leukoedge classify``.

For each model: N files (hard links of the real cells under distinct names) are classified
by a whole ``leukoedge classify`` process (start-up included: that is what a user pays),
and sent, one cell per request, by 1, 8 and 32 concurrent clients for a fixed time to a
local server with batching on (``--max-batch 32 --max-wait-ms 5``) and off
(``--max-batch 1``). Measurements are interleaved (classify, serve, classify, ...) so a
machine shared with other jobs affects both sides alike; the ratio at 32 clients is
served throughput over the mean of the classify runs around it.

The load generator is a small asyncio HTTP/1.1 client (keep-alive, request bytes built
once), in this process; its own CPU time is measured and reported.

    python scripts/bench_serve.py --model scratch.onnx:600 --model r50.onnx:150 \\
        --seconds 15 --json bench_serve.json

``MODEL:N[:SECONDS]`` sets the number of files (default --files) and the length of each
served run (default --seconds) for that model. Keep a run much longer than the latency at
32 clients (a slow model answers a whole batch at once, every few seconds: a short window
counts one batch more or less).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELLS = REPO.parent / "shared" / "data" / "cnmc-sample"
LEUKOEDGE = [os.environ.get("LEUKOEDGE") or shutil.which("leukoedge") or "leukoedge"]  # on PATH


def make_files(src: Path, n: int, dst: Path) -> list[Path]:
    cells = sorted(src.rglob("*.bmp"))
    dst.mkdir(parents=True)
    out = []
    for i in range(n):
        c = cells[i % len(cells)]
        p = dst / f"{i:05d}_{c.name}"
        try:
            os.link(c, p)
        except OSError:
            shutil.copyfile(c, p)
        out.append(p)
    return out


def run_classify(model: Path, folder: Path, out: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*LEUKOEDGE, "classify", str(folder), "--model", str(model),
                        "--out", str(out), "--overwrite", "--provider", "cpu"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"classify failed: {r.stderr.strip()[-500:]}")
    return wall


class Server:
    def __init__(self, model: Path, max_batch: int, max_wait_ms: float) -> None:
        self.proc = subprocess.Popen(
            [*LEUKOEDGE, "serve", "--model", str(model), "--port", "0", "--provider", "cpu",
             "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
            stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        lines = []
        for line in self.proc.stderr:
            lines.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            sys.exit("server did not start:\n" + "".join(lines))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def request_bytes(path: Path, port: int) -> bytes:
    boundary = "benchboundary7d1f"
    data = path.read_bytes()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"{path.name}\"\r\nContent-Type: image/bmp\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _client(port: int, reqs: list[bytes], start: int, step: int, stop_at: float,
                  lat: list[float], counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            writer.write(reqs[i % len(reqs)])
            i += step
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.lower() == b"content-length":
                    length = int(v)
            body = await reader.readexactly(length)
            if b" 200 " not in status or b'"error": null' not in body:
                raise SystemExit(f"bad answer: {status!r} {body[:300]!r}")
            t1 = time.perf_counter()
            if t1 <= stop_at:
                lat.append(t1 - t0)
                counter[0] += 1
    finally:
        writer.close()


async def _load(port: int, reqs: list[bytes], clients: int, seconds: float
                ) -> tuple[int, list[float]]:
    lat: list[float] = []
    counter = [0]
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(*(_client(port, reqs, k, clients, stop_at, lat, counter)
                           for k in range(clients)))
    return counter[0], lat


def load(port: int, reqs: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    asyncio.run(_load(port, reqs, clients, 1.0))  # warm: connections, arenas, batch shapes
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    n, lat = asyncio.run(_load(port, reqs, clients, seconds))
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    return {"clients": clients, "requests": n, "seconds": wall, "per_s": n / wall,
            "p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "p99_ms": q[98] * 1000,
            "loadgen_cpu_s": cpu, "loadgen_cpu_share": cpu / wall}


def bench_model(model: Path, n_files: int, seconds: float, work: Path,
                cells: Path = CELLS) -> dict[str, object]:
    folder = work / f"files-{model.stem}"
    files = make_files(cells, n_files, folder)
    on = Server(model, 32, 5.0)
    off = Server(model, 1, 0.0)
    reqs_on = [request_bytes(p, on.port) for p in files]
    reqs_off = [request_bytes(p, off.port) for p in files]
    out = work / f"{model.stem}.csv"
    classify: list[float] = []
    rows: list[dict[str, object]] = []

    def cls() -> None:
        wall = run_classify(model, folder, out)
        classify.append(n_files / wall)
        print(f"  classify {n_files} files: {wall:.1f} s, {n_files / wall:.1f} images/s",
              flush=True)

    def srv(name: str, server: Server, reqs: list[bytes], c: int) -> None:
        r = load(server.port, reqs, c, seconds)
        r["batching"] = name
        r["classify_before"] = classify[-1]
        r["classify_index"] = len(classify) - 1
        rows.append(r)
        print(f"  serve batching {name} {c:2d} clients: {r['per_s']:.1f} req/s, p50 "
              f"{r['p50_ms']:.0f} ms p95 {r['p95_ms']:.0f} p99 {r['p99_ms']:.0f}, load "
              f"generator {100 * r['loadgen_cpu_share']:.0f}% of a core", flush=True)

    try:
        cls()
        srv("on", on, reqs_on, 32)
        cls()
        srv("off", off, reqs_off, 32)
        cls()
        for c in (8, 1):
            srv("on", on, reqs_on, c)
            srv("off", off, reqs_off, c)
        cls()
        srv("on", on, reqs_on, 32)
        cls()
    finally:
        codes = (on.stop(), off.stop())
    for r in rows:  # classify runs just before and after each serve run
        i = int(r["classify_index"])
        around = classify[i:i + 2]
        r["classify_around"] = statistics.mean(around)
        r["ratio"] = r["per_s"] / r["classify_around"]  # type: ignore[operator]
    on32 = [r for r in rows if r["batching"] == "on" and r["clients"] == 32]
    return {"model": str(model), "files": n_files, "seconds": seconds,
            "classify_per_s": classify, "serve": rows, "server_exit_codes": codes,
            "ratio_32_on": [r["ratio"] for r in on32]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="MODEL.onnx[:N files]")
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--cells", type=Path, default=CELLS, help="folder of real cells (BMP)")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    report: dict[str, object] = {"cores": len(os.sched_getaffinity(0)),
                                 "loadavg_start": os.getloadavg(), "models": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for spec in a.model:
            path, n, secs = (spec.split(":") + ["", ""])[:3]
            print(f"{path}:", flush=True)
            report["models"].append(  # type: ignore[union-attr]
                bench_model(Path(path), int(n) if n else a.files,
                            float(secs) if secs else a.seconds, Path(tmp), a.cells))
    report["loadavg_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    if a.json:
        a.json.write_text(text + "\n")
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}")
    for m in report["models"]:  # type: ignore[union-attr]
        print(f"{m['model']}: served/classify at 32 clients, batching on: "
              + ", ".join(f"{x:.2f}" for x in m["ratio_32_on"]))


if __name__ == "__main__":
    main()
