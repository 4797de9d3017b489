"""The runtime's session steps (provider choice, options, verification, the probe
``doctor`` shows), ``bench`` as a library call that skips unreadable files, and the one
two-column table."""

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
from leukoedge.console import facts_table
from leukoedge.errors import DataError, ModelError, ProviderError
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


# -- session steps --------------------------------------------------------------------

def test_load_model_refuses_what_is_no_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        session.load_model(tmp_path / "absent.onnx")
    with pytest.raises(ModelError, match="is a folder"):
        session.load_model(tmp_path)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\n\n  not a protobuf\nsecond line\n")
    with pytest.raises(ModelError, match="cannot load as an ONNX model") as info:
        session.load_model(broken, session.SessionConfig(provider="cpu"))
    assert "\n" not in info.value.message and len(info.value.message) < 400


def test_provider_choice_and_verification_on_the_cpu(tiny_model: Path) -> None:
    ort = session.import_ort()
    assert session.choose_provider(ort, "cpu") == "cpu"
    auto = session.choose_provider(ort, "auto")
    assert auto in ("cpu", "cuda")
    m = session.load_model(tiny_model, session.SessionConfig(provider="cpu", threads=1))
    assert session.verify_provider(ort, m.session, "cpu") == ("cpu", None)
    assert m.provider == "cpu" and m.spec.input_size == 32
    so = session.session_options(ort, session.SessionConfig(threads=3, optimization="basic"))
    assert so.intra_op_num_threads == 3 and so.inter_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


@pytest.mark.cpu_only
def test_auto_on_a_machine_without_cuda_says_why(tiny_model: Path) -> None:
    ort = session.import_ort()
    m = session.load_model(tiny_model, session.SessionConfig(provider="cpu", threads=1))
    active, note = session.verify_provider(ort, m.session, "auto")
    assert active == "cpu" and note is not None and note.startswith("provider auto: running "
                                                                    "on the CPU (")
    if session.provider_load_problem(ort, "cuda") is not None:
        with pytest.raises(ProviderError, match="--provider cuda cannot run here"):
            session.choose_provider(ort, "cuda")


def test_provider_status_is_what_doctor_shows() -> None:
    ort = session.import_ort()
    status = session.provider_status(ort)
    assert list(status) == ["cpu", "cuda", "tensorrt"] and status["cpu"] == "ok"
    for p in ("cuda", "tensorrt"):
        assert status[p] == "ok" or "\n" not in status[p]
    r = runner.invoke(assemble(), ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)["providers"]
    assert "openvino" in shown  # the second runtime: ok or why not (tests/test_openvino.py)
    assert {k: v for k, v in shown.items() if k != "openvino"} == status


# -- the one two-column table -------------------------------------------------------------

def test_facts_table_has_a_bold_name_and_a_value() -> None:
    from rich.console import Console

    t = facts_table("title here", [("name", "value [red]red[/red]")])
    t.add_row("more", "2")
    assert not t.show_header and [c.header for c in t.columns] == ["what", "value"]
    assert t.columns[0].style == "bold" and t.row_count == 2
    console = Console(width=60, record=True, color_system=None)
    console.print(t)
    text = console.export_text()
    assert "title here" in text and "value red" in text and "more" in text
