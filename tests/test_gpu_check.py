"""scripts/gpu_check.py, the prepared GPU check: its CPU dry run runs every step's commands
here (tiny sizes, synthetic cells), so the check cannot fail on a typo on the GPU machine;
the flip rule of its classify comparison; bad arguments; and, on a CUDA machine, the first
steps for real."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402

STEP_NAMES = [s.name for s in gpu_check.STEPS]


def run(*args: object, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow  # ~1.5 min of CPU at nice 19 on 2 shared cores; minutes of wall under load
@pytest.mark.train
def test_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run("run", "--dry-run", "--out", out, "--work", tmp_path / "work",
            "--archs", "scratch", "--bench-arch", "scratch")
    s = summary(out)
    steps = s["steps"]
    assert [x["name"] for x in steps] == ["setup", *STEP_NAMES]
    assert s["dry_run"] is True and s["provider"] == "cpu"
    for x in steps:
        # every step ran its commands and wrote them to its own file
        assert x["status"] == "ok", (x["name"], x["status"], x["failures"])
        log = (out / x["file"]).read_text()
        assert "\n$ " in log and "--- rc=0" in log, x["name"]
        assert "rc=2" not in log, x["name"]  # a usage error: a typo in a command
    assert r.returncode == 0, r.stderr[-2000:]
    md = (out / "summary.md").read_text()
    for name in STEP_NAMES:
        assert f"| {name} |" in md

    n_cells = len(gpu_check.list_images(tmp_path / "work" / "cells"))
    assert n_cells > 0
    for name in ("default", "scratch"):
        c = json.loads((out / f"compare_{name}.json").read_text())
        assert c["cells"] == n_cells and c["passed"] is True
        assert c["agree"] == n_cells  # the dry run compares the CPU with itself
    rows = json.loads((out / "iobench_scratch.json").read_text())["rows"]
    kinds = {(r["what"].split(",")[1].strip() if "onnxruntime" in r["what"] else "torch")
             for r in rows}
    assert {"host copy", "IO binding", "torch"} <= kinds
    assert all(r["images_per_s"] > 0 for r in rows)
    assert {r["batch"] for r in rows} == {2, 4}
    amp = next(x for x in steps if x["name"] == "amp")
    assert len(amp["data"]["scratch"]) == gpu_check.DRY_SIZES.amp_epochs
    parity = json.loads((out / "parity_scratch.json").read_text())
    assert parity["passed"] is True


@pytest.mark.slow
@pytest.mark.train
def test_steps_left_out_are_listed_as_not_measured(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run("run", "--dry-run", "--out", out, "--work", tmp_path / "work", "--only", "doctor",
            "--archs", "scratch", "--bench-arch", "scratch")
    assert r.returncode == 1  # not everything was measured
    steps = {x["name"]: x for x in summary(out)["steps"]}
    assert steps["doctor"]["status"] == "ok" and steps["data"]["status"] == "ok"
    for name in STEP_NAMES[2:]:
        assert steps[name]["status"].startswith("not measured"), name
        assert (out / steps[name]["file"]).exists()
    md = (out / "summary.md").read_text()
    assert md.count("not measured (left out with --only)") == len(STEP_NAMES) - 2


def _csv(path: Path, rows: list[tuple[str, float]], thr: float) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient", "prob_all", "label", "error", "logit", "heatmap", "drift"])
        for name, logit in rows:
            w.writerow([name, "UID_1", "", "all" if logit >= thr else "hem", "", logit, "", ""])
    return path


@pytest.mark.parametrize(("below", "gpu_shift", "passed"),
                         [(0.001, 0.002, True), (0.3, 0.5, False)])
def test_compare_allows_flips_only_within_the_bound(tmp_path: Path, below: float,
                                                    gpu_shift: float, passed: bool) -> None:
    from leukoedge.session import SessionConfig, load_model

    thr = load_model(gpu_check.DEFAULT_MODEL, SessionConfig(provider="cpu")).spec.logit_threshold
    cpu = [("a.bmp", thr - below), ("b.bmp", thr + 3.0), ("c.bmp", thr - 2.0)]
    gpu = [(n, v + gpu_shift) for n, v in cpu]  # a.bmp flips in both cases
    j = tmp_path / "c.json"
    r = run("compare", _csv(tmp_path / "cpu.csv", cpu, thr), _csv(tmp_path / "gpu.csv", gpu, thr),
            "--model", gpu_check.DEFAULT_MODEL, "--json", j, timeout=120)
    assert r.returncode == 0, r.stderr
    c = json.loads(j.read_text())
    assert [f["path"] for f in c["flips"]] == ["a.bmp"]
    assert c["passed"] is passed
    assert c["flips_within_bound"] is passed
    assert c["max_abs_diff"] == pytest.approx(gpu_shift, abs=1e-5)


@pytest.mark.parametrize("args", [
    ["run", "--dry-run", "--archs", "vgg"],
    ["run", "--dry-run", "--archs", "scratch", "--bench-arch", "resnet50"],
    ["run", "--dry-run", "--only", "doctr"],
    ["run", "--dry-run", "--cells", "no/such/folder"],
])
def test_bad_arguments_give_one_line(tmp_path: Path, args: list[str]) -> None:
    r = run(*args, "--out", tmp_path / "out", timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("gpu_check: ") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


@pytest.mark.gpu
@pytest.mark.train
def test_first_steps_on_the_gpu(tmp_path: Path) -> None:
    """On a machine whose onnxruntime runs CUDA: doctor and the CPU/GPU classify
    comparison of the default model, for real."""
    out = tmp_path / "out"
    run("run", "--no-install", "--out", out, "--work", tmp_path / "work",
        "--only", "classify-default", "--archs", "scratch", "--bench-arch", "scratch")
    steps = {x["name"]: x for x in summary(out)["steps"]}
    assert steps["doctor"]["status"] == "ok", steps["doctor"]
    assert steps["classify-default"]["status"] == "ok", steps["classify-default"]
    assert json.loads((out / "compare_default.json").read_text())["passed"] is True
