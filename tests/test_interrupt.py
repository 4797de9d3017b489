"""classify interrupted by SIGINT, SIGTERM and SIGKILL mid-folder, then --resume.

The tests wait for a real synchronisation point (the output holds some rows and fewer
than all), then signal the process; afterwards every complete line parses, and --resume
finishes with every file exactly once. CSV for every signal; JSON Lines for SIGTERM and
SIGKILL (the torn-line path differs: no header, one JSON object per line).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

N_FILES = 240


@pytest.fixture(scope="module")
def many_cells(tmp_path_factory: pytest.TempPathFactory, shared_cells: Path) -> Path:
    d = tmp_path_factory.mktemp("many")
    src = sorted((shared_cells / "fold_0").glob("*/*.bmp"))
    for i in range(N_FILES):
        s = src[i % len(src)]
        dst = d / s.parent.name / f"{i:04d}_{s.name}"
        dst.parent.mkdir(exist_ok=True)
        os.link(s, dst) if _same_fs(s, d) else dst.write_bytes(s.read_bytes())
    return d


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx_models as om

    return om.save(om.slow_model(), tmp_path_factory.mktemp("slow") / "slow.onnx")


def data_lines(path: Path) -> list[str]:
    """Complete data lines so far (the CSV header and a torn last line left out)."""
    if not path.exists():
        return []
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")[:-1]  # whatever follows the last newline is not complete
    return lines[1:] if path.suffix == ".csv" else lines


def parse(text: str, fmt: str) -> list[dict[str, object]]:
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines()]


def start(out: Path, cells: Path, model: Path, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "leukoedge", "classify", str(cells), "--model", str(model),
         "--out", str(out), "--batch-size", "4", "--workers", "1", "--threads", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_some_rows(proc: subprocess.Popen[str], out: Path, timeout: float = 60) -> int:
    """Wait until some rows are out, then freeze the process (SIGSTOP) so that it cannot
    finish between this check and the signal, however fast the machine or slow the
    poller; returns the number of complete rows on disk while it is stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(data_lines(out))
        if 8 <= n < N_FILES:
            proc.send_signal(signal.SIGSTOP)
            wait_stopped(proc)
            n = len(data_lines(out))
            if proc.poll() is None and n < N_FILES:
                return n
            break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"never saw a partial output (rows={len(data_lines(out))}, "
                f"rc={proc.returncode}); if the run finished, make slow_model slower")


def wait_stopped(proc: subprocess.Popen[str], timeout: float = 5) -> None:
    """SIGSTOP is asynchronous: wait until the kernel reports the process stopped."""
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and stat.exists():
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.005)
    if not stat.exists():  # not Linux: give the signal time to land
        time.sleep(0.2)


@pytest.mark.parametrize("sig,code,fmt", [
    (signal.SIGINT, 130, "csv"), (signal.SIGTERM, 143, "csv"), (signal.SIGKILL, -9, "csv"),
    (signal.SIGTERM, 143, "jsonl"), (signal.SIGKILL, -9, "jsonl"),
])
def test_interrupt_then_resume(tmp_path: Path, many_cells: Path, slow_model: Path,
                               sig: signal.Signals, code: int, fmt: str) -> None:
    out = tmp_path / f"p.{fmt}"
    proc = start(out, many_cells, slow_model)
    seen = wait_for_some_rows(proc, out)
    proc.send_signal(sig)  # delivered when the process continues (SIGKILL: at once)
    if sig != signal.SIGKILL:
        proc.send_signal(signal.SIGCONT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    if sig != signal.SIGKILL:
        assert "Traceback" not in stderr and "--resume" in stderr
    text = out.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    rows = parse(complete, fmt)
    assert seen <= len(rows) < N_FILES
    if sig == signal.SIGKILL:
        assert len(rows) == seen, "killed while stopped: no row can have been added"
    assert all(r["label"] in ("all", "hem") and float(r["prob_all"]) >= 0  # type: ignore[arg-type]
               for r in rows)
    if sig != signal.SIGKILL:
        assert text.endswith("\n"), "a signal we handle leaves no torn line"

    proc = start(out, many_cells, slow_model, "--resume")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    final = parse(out.read_text(encoding="utf-8"), fmt)
    paths = [r["path"] for r in final]
    assert len(paths) == N_FILES and len(set(paths)) == N_FILES
    assert [r["path"] for r in final[: len(rows)]] == [r["path"] for r in rows]
