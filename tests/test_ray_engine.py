"""``classify --engine ray`` (the scale extra) on one local Ray cluster per test session
(2 CPUs): the same rows as the local engine, a killed actor, Ctrl-C and --resume, Parquet
part files. Under CI the extra is installed and these tests must run, not skip."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from onnx_models import mean_brightness_model, save, slow_model
from typer.testing import CliRunner

from leukoedge.engines import pending
from leukoedge.engines.local import classify_files
from leukoedge.data import collect
from leukoedge.output import ResultWriter
from leukoedge.session import SessionConfig, load_model

if not os.environ.get("CI"):
    pytest.importorskip("ray", reason="the scale extra (ray[data]) is not installed")

import ray  # noqa: E402

from leukoedge.output.parts import PartWriter, parts_in  # noqa: E402
from leukoedge.engines.ray_engine import RayOptions, _InOrder, classify_ray  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    # workers at the tests' own CPU priority (Ray's default is 15 steps nicer: starved
    # beside other jobs), as the engine does for the local clusters it starts
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def cells(tmp_path_factory: pytest.TempPathFactory, shared_cells: Path) -> Path:
    """43 real cells, 200 synthetic ones (leukoedge.synth) and three broken files."""
    from leukoedge.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("ray-cells")
    shutil.copytree(shared_cells / "fold_0", root / "real")
    generate(root / "synth", SynthConfig(patients=10, cells_per_patient=20, size=96, seed=3))
    (root / "broken").mkdir()
    (root / "broken" / "empty.bmp").write_bytes(b"")
    (root / "broken" / "text.bmp").write_text("not an image")
    real = next((root / "real").rglob("*.bmp")).read_bytes()
    (root / "broken" / "half.bmp").write_bytes(real[: len(real) // 2])
    return root


@pytest.fixture(scope="session")
def tiny(model_dir: Path) -> Path:
    """Mean brightness centred on these cells' median: both labels occur."""
    return save(mean_brightness_model(32, centre=10.5), model_dir / "tiny-ray.onnx")


@pytest.fixture(scope="session")
def slow(model_dir: Path) -> Path:
    return save(slow_model(), model_dir / "slow-ray.onnx")


def local_rows(model_path: Path, cells: Path, out: Path) -> list[dict[str, object]]:
    m = load_model(model_path, SessionConfig(provider="cpu", threads=1))
    with ResultWriter(out) as w:
        classify_files(m, collect([cells]), w, batch_size=16, workers=2)
    return read(out)


def read(path: Path) -> list[dict[str, object]]:
    if path.is_dir():
        import pyarrow.parquet as pq

        return [r for p in parts_in(path) for r in pq.read_table(p).to_pylist()]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines()]
    import csv
    import io

    return list(csv.DictReader(io.StringIO(text)))


def same_rows(got: list[dict[str, object]], want: list[dict[str, object]]) -> None:
    """Same files in the same order, same labels and errors, P(ALL) within 1e-6."""
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert (g["label"] or None, g["error"] or None, g["patient"] or None) == \
            (w["label"] or None, w["error"] or None, w["patient"] or None), g["path"]
        if w["prob_all"] not in (None, ""):
            assert abs(float(str(g["prob_all"])) - float(str(w["prob_all"]))) <= 1e-6
            assert abs(float(str(g["logit"])) - float(str(w["logit"]))) <= 1e-5


def run_ray(model_path: Path, cells: Path, writer: object, **kw: object) -> object:
    m = load_model(model_path, SessionConfig(provider="cpu", threads=1))
    opts = RayOptions(actors=2, block_files=int(kw.pop("block_files", 24)))  # type: ignore[call-overload]
    work = pending(collect([cells]), writer.done)  # type: ignore[attr-defined]
    stats = classify_ray(m, work.todo, writer, batch_size=8, options=opts, **kw)  # type: ignore[arg-type]
    stats.skipped = work.skipped
    return stats


def test_ray_rows_equal_the_local_engine(ray_cluster: None, cells: Path, tiny: Path,
                                         tmp_path: Path) -> None:
    want = local_rows(tiny, cells, tmp_path / "local.csv")
    assert len(want) == 246 and sum(1 for r in want if r["error"]) == 3
    assert len({r["label"] for r in want if not r["error"]}) == 2  # both classes occur
    with ResultWriter(tmp_path / "ray.jsonl") as w:
        stats = run_ray(tiny, cells, w)
    same_rows(read(tmp_path / "ray.jsonl"), want)
    assert stats.files == 246 and stats.errors == 3  # type: ignore[attr-defined]
    with PartWriter(tmp_path / "parts", part_rows=100) as pw:
        run_ray(tiny, cells, pw)
    assert [p.name for p in parts_in(tmp_path / "parts")] == \
        ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    same_rows(read(tmp_path / "parts"), want)


def test_the_cli_joins_the_cluster_and_keeps_exit_codes(ray_cluster: None, cells: Path,
                                                        tiny: Path,
                                                        tmp_path: Path) -> None:
    from leukoedge.cli import assemble

    want = local_rows(tiny, cells, tmp_path / "local.csv")
    out = tmp_path / "ray.csv"
    r = CliRunner().invoke(assemble(), [
        "classify", str(cells), "--model", str(tiny), "--out", str(out),
        "--engine", "ray", "--actors", "2", "--batch-size", "8"])
    assert r.exit_code == 1, r.output  # three error rows: "some files failed", as locally
    assert "joined the cluster" in r.output and "Traceback" not in r.output
    same_rows(read(out), want)
    r = CliRunner().invoke(assemble(), [
        "classify", str(cells / "real"), "--model", str(tiny), "--out",
        str(tmp_path / "p"), "--format", "parquet", "--engine", "ray"])
    assert r.exit_code == 0, r.output
    assert len(read(tmp_path / "p")) == 43
    r = CliRunner().invoke(assemble(), [
        "classify", str(cells), "--model", str(tiny), "--out", str(tmp_path / "x.csv"),
        "--actors", "2"])
    assert r.exit_code == 2 and "need --engine ray" in " ".join(r.output.split())


def map_workers() -> list[int]:
    """Process ids of Ray Data's actors on this machine (their title names them)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::MapWorker") or b"MapWorker(MapBatches" in cmd[:200]:
                pids.append(int(d.name))
    return pids


def test_a_killed_actor_loses_and_repeats_nothing(ray_cluster: None, cells: Path, slow: Path,
                                                  tmp_path: Path) -> None:
    """SIGKILL one actor once the first block is written: Ray restarts it and runs its
    unfinished block again; the file has every row once, equal to the local engine's."""
    want = local_rows(slow, cells, tmp_path / "local.csv")
    killed: list[int] = []
    before: set[int] = set()
    after: set[int] = set()

    def kill_one(n: int) -> None:
        if killed:
            after.update(map_workers())
            return
        pids = map_workers()
        assert len(pids) == 2, "expected the two Ray Data actor processes"
        before.update(pids)
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    with ResultWriter(tmp_path / "ray.csv") as w:
        run_ray(slow, cells, w, block_files=12, progress=kill_one)
    assert killed
    for _ in range(50):  # the SIGKILLed process is gone (reaped by its raylet)
        if not Path(f"/proc/{killed[0]}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{killed[0]}").exists()
    assert after - before, "no restarted actor was seen"
    same_rows(read(tmp_path / "ray.csv"), want)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_interrupt_then_resume_gives_every_file_once(ray_cluster: None, cells: Path,
                                                     tiny: Path, tmp_path: Path,
                                                     fmt: str) -> None:
    """Ctrl-C (KeyboardInterrupt in the driver, as SIGINT raises it) after two blocks:
    the finished rows are on disk; --resume runs the rest, each file once, in order."""
    want = local_rows(tiny, cells, tmp_path / "local.csv")
    out = tmp_path / ("ray.csv" if fmt == "csv" else "parts")
    seen: list[int] = []

    def interrupt(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt

    def writer(resume: bool) -> ResultWriter | PartWriter:
        if fmt == "csv":
            return ResultWriter(out, resume=resume)
        return PartWriter(out, resume=resume, part_rows=10)

    with pytest.raises(KeyboardInterrupt):
        with writer(False) as w:
            run_ray(tiny, cells, w, block_files=16, progress=interrupt)
    first = read(out)
    assert 0 < len(first) < len(want)
    assert first == read(out)[: len(first)]
    with writer(True) as w:
        assert len(w.done) == len(first)
        stats = run_ray(tiny, cells, w, block_files=16)
    assert stats.skipped == len(first)  # type: ignore[attr-defined]
    got = read(out)
    assert got[: len(first)] == first  # earlier rows unchanged and first
    assert sorted(r["path"] for r in got) == sorted(r["path"] for r in want)  # type: ignore[type-var]
    assert len({r["path"] for r in got}) == len(got)  # each file once
    by_path = {r["path"]: r for r in want}
    same_rows(got, [by_path[r["path"]] for r in got])


def test_rows_of_a_redone_block_are_written_once() -> None:
    """The driver's guard: an index seen before is dropped, rows leave in input order."""
    row = json.dumps({"path": "a", "patient": None, "prob_all": 0.5, "label": "all",
                      "error": None})
    order = _InOrder(4)
    assert [r.path for r in order.add([1], [row])] == []  # waits for index 0
    assert len(order.add([0, 1], [row, row])) == 2  # 1 arrives twice: once out
    assert order.duplicates == 1
    assert len(order.add([0, 2, 3, 9], [row] * 4)) == 2
    assert order.duplicates == 3 and order.next == 4


def test_missing_extra_names_it(tmp_path: Path, tiny: Path, real_cells: Path) -> None:
    """Without Ray: one line naming leukoedge[scale], exit 3, nothing written."""
    import subprocess
    import sys

    absent = tmp_path / "absent" / "ray"
    absent.mkdir(parents=True)
    (absent / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(absent.parent), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "leukoedge", "classify", str(real_cells),
                        "--model", str(tiny), "--out", str(tmp_path / "p.csv"),
                        "--engine", "ray"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3, r.stderr
    assert "leukoedge[scale]" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    assert not (tmp_path / "p.csv").exists()
