"""``bench`` (leukoedge/bench.py) as a library call and a command: it skips unreadable
files and says so, cycles the readable ones, and says each stage in order."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leukoedge import bench, session
from leukoedge.cli import assemble
from leukoedge.errors import DataError
from leukoedge.spec import ModelSpec

runner = CliRunner()
SPEC = ModelSpec(architecture="tiny", input_size=32)


def cells_with_a_bad_file(src: Path, dst: Path) -> tuple[Path, Path]:
    """A copy of the real cells plus one file that has an image name and no image in it;
    the bad file sorts first, so it is among the files every stage reads."""
    shutil.copytree(src / "fold_0", dst / "fold_0")
    bad = dst / "fold_0" / "all" / "000_broken_all.bmp"
    bad.write_bytes(b"BM this is not a bitmap")
    return dst, bad


# -- bench ------------------------------------------------------------------------------

def test_bench_skips_an_unreadable_file_and_says_so(tiny_model: Path, shared_cells: Path,
                                                   tmp_path: Path) -> None:
    """Was: one unreadable file under --data aborted the whole run (exit 3)."""
    data, bad = cells_with_a_bad_file(shared_cells, tmp_path / "cells")
    j = tmp_path / "b.json"
    r = runner.invoke(assemble(), ["bench", os.fspath(tiny_model), "--batch-sizes", "1,64",
                                   "--seconds", "0.02", "--files", "10", "--data",
                                   os.fspath(data), "--json", os.fspath(j)])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "1 of the 44 files could not be read and were skipped" in said
    assert bad.name in said
    d = json.loads(j.read_text())
    assert d["unreadable"] == 1 and d["files"] == 44
    assert d["decode_per_s"] > 0 and d["end_to_end_per_s"] > 0
    assert set(d["inference"]) == {"1", "64"}


def test_sample_batch_cycles_the_readable_files(shared_cells: Path, tmp_path: Path) -> None:
    data, bad = cells_with_a_bad_file(shared_cells, tmp_path / "cells")
    good = sorted((data / "fold_0" / "hem").glob("*.bmp"))[:2]
    x, skipped = bench.sample_batch(SPEC, [bad, *good], 5)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.uint8
    assert [p for p, _ in skipped] == [bad] and bad.name in skipped[0][1]
    assert np.array_equal(x[0], x[2]) and np.array_equal(x[1], x[3])  # good[0], good[1], ...
    assert not np.array_equal(x[0], x[1])
    only_bad, skipped = bench.sample_batch(SPEC, [bad], 3)  # nothing readable: noise
    assert len(skipped) == 1 and only_bad[:, 16, 16].any() and not only_bad[:, 0, 0].any()
    noise, skipped = bench.sample_batch(SPEC, [], 2)
    assert skipped == [] and np.array_equal(noise, only_bad[:2])


def test_decode_bench_skips_bad_files_and_stops_when_none_can_be_read(
        shared_cells: Path, tmp_path: Path) -> None:
    data, bad = cells_with_a_bad_file(shared_cells, tmp_path / "cells")
    good = sorted((data / "fold_0" / "hem").glob("*.bmp"))[:3]
    unreadable: dict[Path, str] = {}
    ours, _ = bench.bench_decode_pair(SPEC, [bad, *good], 0.01, unreadable)
    assert ours > 0 and list(unreadable) == [bad]
    with pytest.raises(DataError, match="none of the 1 files can be read"):
        bench.bench_decode_pair(SPEC, [bad], 0.01, {})


def test_run_bench_says_each_stage_in_order(tiny_model: Path, shared_cells: Path) -> None:
    m = session.load_model(tiny_model, session.SessionConfig(provider="cpu", threads=1))
    files = sorted(shared_cells.rglob("*.bmp"))[:6]
    said: list[str] = []
    res = bench.run_bench(m, files, bench.BenchPlan((1, 2), seconds=0.01, files=4),
                          versus=m, say=said.append)
    assert [s.split(" ")[0] for s in said] == ["inference", "inference,", "decode", "end"]
    assert res.unreadable == 0 and res.files == 6 and set(res.versus_ratio) == {1, 2}
    assert res.as_dict()["unreadable"] == 0
