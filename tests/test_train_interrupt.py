"""Training killed mid-run resumes from its last checkpoint; checkpoints are atomic."""

from __future__ import annotations

import csv
import errno
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_data import write_dataset  # noqa: E402

EPOCHS = 5
VOLATILE = {"seconds"}


def rows(run: Path) -> list[dict[str, str]]:
    try:
        with open(run / "history.csv", newline="") as fh:
            return [{k: v for k, v in r.items() if k not in VOLATILE}
                    for r in csv.DictReader(fh)]
    except FileNotFoundError:
        return []


def train_cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "leukoedge", "train", "scratch", str(data), "--out",
            str(run), "--epochs", str(EPOCHS), "--input-size", "32", "--batch-size", "8",
            "--patience", "0", "--threads", "1", *extra]


def test_training_killed_mid_run_resumes(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", patients=6, cells=20, size=48, seed=5)
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(data, run), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    seen: list[dict[str, str]] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if 1 <= len(rows(run)) < EPOCHS and (run / "last.pt").exists():
            proc.send_signal(signal.SIGSTOP)  # freeze it where it is, then check
            seen = rows(run)
            if 1 <= len(seen) < EPOCHS:
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail(f"never caught the run between epochs (rc={proc.returncode})")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -9

    import torch

    last = torch.load(run / "last.pt", weights_only=True)  # still a whole checkpoint
    assert 1 <= int(last["epoch"]) <= len(seen)

    r = subprocess.run(train_cmd(data, run, "--resume"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    final = rows(run)
    assert [int(x["epoch"]) for x in final] == list(range(1, EPOCHS + 1))
    assert final[: int(last["epoch"])] == seen[: int(last["epoch"])]


def test_a_kill_during_checkpoint_write_leaves_the_previous_one(tmp_path: Path) -> None:
    """Simulate a SIGKILL in the middle of torch.save: the old last.pt must survive."""
    target = tmp_path / "last.pt"
    code = f"""
import os, torch
from pathlib import Path
from leukoedge_train import checkpoint
target = Path({str(target)!r})
checkpoint.save({{"format": checkpoint.FORMAT, "version": 1, "epoch": 1}}, target)
def dying_save(obj, fh, *a, **k):
    fh.write(b"PK\\x03\\x04 half a checkpoint")
    fh.flush()
    os._exit(137)  # no cleanup, like SIGKILL
torch.save = dying_save
checkpoint.save({{"format": checkpoint.FORMAT, "version": 1, "epoch": 2}}, target)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 137, r.stderr
    from leukoedge_train import checkpoint

    assert checkpoint.load(target)["epoch"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(name.startswith(".last.pt.tmp-") for name in leftovers)


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from leukoedge_train import checkpoint

    from leukoedge.errors import DataError

    target = tmp_path / "last.pt"
    checkpoint.save({"format": checkpoint.FORMAT, "version": 1, "epoch": 1}, target)

    def full_disk(obj: object, fh: BinaryIO, *a: object, **k: object) -> None:
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(DataError, match="cannot write .*last.pt: No space left on device"):
        checkpoint.save({"format": checkpoint.FORMAT, "version": 1, "epoch": 2}, target)
    monkeypatch.undo()
    assert checkpoint.load(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
