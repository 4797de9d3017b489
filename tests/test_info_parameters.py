"""``leukoedge info``'s parameter count (issue 30): the network's parameters, not every
number in the file. The shipped model's heatmap output keeps its own copies of the dense
weights; those are named apart. A count recorded at export is shown as such."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.inspect_model import PARAMETERS_KEY, describe_model

SHIPPED = Path(__file__).resolve().parents[1] / "leukoedge" / "models" / "default.onnx"


def test_shipped_model_counts_its_network_not_the_map_s_copies() -> None:
    d = describe_model(SHIPPED)
    # 365,466: the scratch network (docs say 365 k); the map's backward pass stores the
    # three dense layers' weights again: 256*128 + 128*256 + 64*128 = 73,728
    assert d["parameters"] == 365_466 and d["copies"] == 73_728
    assert d["stored_values"] == 439_194
    assert d["parameters_source"].startswith("counted in the file")
    r = CliRunner().invoke(assemble(), ["info", str(SHIPPED)])
    assert r.exit_code == 0, r.output
    words = " ".join(w for w in r.output.split() if w != "│")  # the table wraps
    assert "365,466 in the network" in words and "73,728 in copies" in words, words
    r = CliRunner().invoke(assemble(), ["info", str(SHIPPED), "--json"])
    assert json.loads(r.stdout)["parameters"] == 365_466


def test_a_recorded_count_is_used(tiny_model: Path, tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(tiny_model))
    proto.metadata_props.add(key=PARAMETERS_KEY, value="1234")
    path = tmp_path / "recorded.onnx"
    onnx.save(proto, str(path))
    d = describe_model(path)
    assert d["parameters"] == 1234 and d["parameters_source"] == "recorded at export"
    assert PARAMETERS_KEY not in d["other_metadata"]
