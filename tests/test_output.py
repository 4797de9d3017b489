from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leukoedge.errors import OutputExistsError, UsageError
from leukoedge.output import (
    ResultWriter,
    Row,
    atomic_write_text,
    check_output_location,
    escape_path,
    unescape_path,
)


@given(st.binary(min_size=1, max_size=60).filter(lambda b: b"\0" not in b))
def test_path_escaping_is_reversible_and_printable(raw: bytes) -> None:
    text = escape_path(raw)
    assert unescape_path(text) == raw
    text.encode("utf-8")  # always valid UTF-8
    assert "\n" not in text and "\r" not in text


def test_valid_utf8_paths_are_unchanged() -> None:
    assert escape_path("/data/zellen/größe_UID_1_all.bmp") == "/data/zellen/größe_UID_1_all.bmp"
    assert escape_path(b"/d/\xff.bmp") == "/d/\\xff.bmp"


def rows(n: int, start: int = 0) -> list[Row]:
    return [Row(f"/x/{i}.bmp", "UID_1", 0.25, "hem", None) for i in range(start, start + n)]


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_resume_drops_a_torn_line_and_knows_what_is_done(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"r.{ext}"
    with ResultWriter(out) as w:
        w.write(rows(3))
    with open(out, "ab") as fh:
        fh.write(b"/x/3.bmp,UID_1,0.2")  # a SIGKILL in the middle of a line
    w = ResultWriter(out, resume=True)
    assert w.done == {"/x/0.bmp", "/x/1.bmp", "/x/2.bmp"}
    w.write(rows(2, start=3))
    w.close()
    text = out.read_text()
    assert text.endswith("\n")
    if ext == "csv":
        lines = text.splitlines()
        assert lines[0] == "path,patient,prob_all,label,error,logit,heatmap,drift"
        assert len(lines) == 6
    else:
        assert [json.loads(line)["path"] for line in text.splitlines()] == [
            f"/x/{i}.bmp" for i in range(5)]


def test_resuming_a_file_without_the_logit_column_keeps_its_columns(tmp_path: Path) -> None:
    """A CSV of the previous release (five columns) is extended with five-column rows."""
    from leukoedge.output import V1_COLUMNS

    out = tmp_path / "old.csv"
    out.write_text("path,patient,prob_all,label,error\n/x/0.bmp,UID_1,0.250000,hem,\n")
    with ResultWriter(out, resume=True) as w:
        assert w.columns == V1_COLUMNS and w.done == {"/x/0.bmp"}
        w.write([Row("/x/1.bmp", "UID_1", 0.75, "all", None, logit=1.0986, heatmap="h.png")])
    assert out.read_text().splitlines()[1:] == ["/x/0.bmp,UID_1,0.250000,hem,",
                                                "/x/1.bmp,UID_1,0.750000,all,"]
    new = tmp_path / "new.csv"
    with ResultWriter(new) as w:
        w.write([Row("/x/1.bmp", "UID_1", 0.75, "all", None, logit=1.0986, heatmap="h.png")])
    assert new.read_text().splitlines()[1] == "/x/1.bmp,UID_1,0.750000,all,,1.098600,h.png,"


def test_resuming_a_file_without_the_drift_column_keeps_its_columns(tmp_path: Path) -> None:
    """A CSV of the release before ``drift`` (seven columns) gets seven-column rows; a
    JSON Lines file gets complete rows, drift included."""
    from leukoedge.output import V2_COLUMNS

    out = tmp_path / "old.csv"
    out.write_text(",".join(V2_COLUMNS) + "\n/x/0.bmp,UID_1,0.250000,hem,,-1.098600,\n")
    row = Row("/x/1.bmp", "UID_1", 0.75, "all", None, logit=1.0986, drift=2.5)
    with ResultWriter(out, resume=True) as w:
        assert w.columns == V2_COLUMNS and w.done == {"/x/0.bmp"}
        w.write([row])
    assert out.read_text().splitlines()[2] == "/x/1.bmp,UID_1,0.750000,all,,1.098600,"
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({c: None for c in V2_COLUMNS} | {"path": "/x/0.bmp"}) + "\n")
    with ResultWriter(old, resume=True) as w:
        w.write([row])
    last = json.loads(old.read_text().splitlines()[1])
    assert last["drift"] == 2.5 and last["path"] == "/x/1.bmp"


def test_never_overwrites_without_permission(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    out.write_text("precious\n")
    with pytest.raises(OutputExistsError):
        ResultWriter(out)
    assert out.read_text() == "precious\n"
    with pytest.raises(UsageError):
        ResultWriter(out, resume=True, overwrite=True)
    ResultWriter(out, overwrite=True).close()
    assert out.read_text().startswith("path,")


def test_output_inside_input_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(UsageError, match="inside the input folder"):
        check_output_location(tmp_path / "in" / "sub" / "p.csv", [tmp_path / "in"])
    check_output_location(tmp_path / "p.csv", [tmp_path / "in"])


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    atomic_write_text(p, "{}")
    atomic_write_text(p, "[]")
    assert p.read_text() == "[]" and os.listdir(tmp_path) == ["a.json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_is_one_data_error() -> None:
    """Writes fail with ENOSPC on /dev/full: a DataError naming the file, not a trace."""
    from leukoedge.errors import DataError

    with pytest.raises(DataError, match="cannot write to /dev/full: No space left"):
        ResultWriter(Path("/dev/full"), overwrite=True)  # the CSV header
    with pytest.raises(DataError, match="cannot write to /dev/full: No space left"):
        with ResultWriter(Path("/dev/full"), "jsonl", overwrite=True) as w:
            w.write(rows(500))  # the first error is the one that surfaces, once
    assert w.done == set(), "rows that did not reach the disk are not done"
    assert w._fh.closed
    w.close()  # idempotent


def test_an_output_that_cannot_be_created_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="part of its folder path is a file"):
        ResultWriter(tmp_path / "file" / "r.csv")
    (tmp_path / "loop.csv").symlink_to("loop.csv")
    with pytest.raises(UsageError, match="symbolic link loop"):
        check_output_location(tmp_path / "loop.csv", [tmp_path / "in"])


def test_atomic_write_failure_keeps_the_target_and_leaves_no_temp(tmp_path: Path) -> None:
    from leukoedge.errors import DataError

    (tmp_path / "report.json").mkdir()  # os.replace onto a folder fails
    with pytest.raises(DataError, match="cannot write"):
        atomic_write_text(tmp_path / "report.json", "{}")
    assert (tmp_path / "report.json").is_dir() and os.listdir(tmp_path) == ["report.json"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    from leukoedge.output import atomic_path

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_first_line_one_line_one_limit():
    from leukoedge.errors import REASON_LIMIT, first_line

    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("\n  disk   full \nsecond")) == "disk full"
    long = first_line(ValueError("x" * 1000))
    assert len(long) == REASON_LIMIT and long.endswith("...")


def test_atomic_path_names_what_failed_and_gives_the_hint(tmp_path):
    from leukoedge.errors import DataError
    from leukoedge.output import atomic_path, atomic_write_bytes

    blocker = tmp_path / "file"
    blocker.write_bytes(b"x")  # a file where a folder should be
    with pytest.raises(DataError) as e, atomic_path(blocker / "m.png", "heatmap", "do X"):
        pass
    assert e.value.message.startswith(f"cannot write heatmap {blocker / 'm.png'}: ")
    assert e.value.hint == "do X"
    with pytest.raises(DataError) as e:
        atomic_write_bytes(blocker / "p.parquet", b"", "do Y")
    assert e.value.message.startswith(f"cannot write {blocker / 'p.parquet'}: ")
    assert e.value.hint == "do Y"


def test_pending_is_the_one_done_rows_decision_and_engines_run_what_they_get(
        tmp_path: Path) -> None:
    """A resumed run's done rows are decided once (engines.pending, by escaped path),
    before the engine is chosen; the local engine honours the Engine contract."""
    from leukoedge.data import Item
    from leukoedge.engines import Engine, pending
    from leukoedge.engines.local import LocalEngine

    odd = tmp_path / "b\udcff.png"  # an undecodable byte: stored escaped in the file
    items = [Item(tmp_path / "a.png", None, None), Item(odd, None, None),
             Item(tmp_path / "c.png", None, None)]
    with ResultWriter(tmp_path / "out.csv") as w:
        w.write([Row(escape_path(tmp_path / "a.png"), None, 0.5, "all", None),
                 Row(escape_path(odd), None, 0.5, "all", None)])
    with ResultWriter(tmp_path / "out.csv", resume=True) as w:
        work = pending(items, w.done)
    assert [it.path for it in work.todo] == [tmp_path / "c.png"] and work.skipped == 2
    assert pending(items, set()).todo == items
    engine: Engine = LocalEngine(batch_size=4)
    assert callable(engine.run)
