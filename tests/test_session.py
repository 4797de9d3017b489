"""The runtime's session steps (provider choice, options, verification, the probe
``doctor`` shows) and the one two-column table. ``bench``: tests/test_bench.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoedge import session
from leukoedge.cli import assemble
from leukoedge.console import facts_table
from leukoedge.errors import ModelError, ProviderError

runner = CliRunner()


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
