"""leukoedge_train.source_paths: the exporter's source locations go, nothing else does."""

from __future__ import annotations

from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
np = pytest.importorskip("numpy")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from leukoedge_train.source_paths import SOURCE_KEYS, strip_source_paths  # noqa: E402

HOME = "/".join(["", "home", "someone", ""])  # built, so this file names no home folder
TRACE = f'File "{HOME}checkout/plugins/leukoedge_train/cam.py", line 80, in forward'


def tiny_model(path: Path) -> None:
    """x + w, its node carrying a stack trace (dynamo's key) and a doc string (legacy)."""
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"], doc_string=TRACE)
    node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value=TRACE)
    node.metadata_props.add(key="namespace", value="core/add")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([node], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="leukoedge.spec", value='{"architecture": "scratch"}')
    onnx.save(model, str(path))


def test_strip_removes_source_locations_only(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    tiny_model(path)
    assert HOME.encode() in path.read_bytes()  # the planted path is there to find
    assert strip_source_paths(path) == 2  # the stack-trace entry and the doc string
    assert HOME.encode() not in path.read_bytes()
    model = onnx.load(str(path))
    (node,) = model.graph.node
    assert {p.key for p in node.metadata_props} == {"namespace"}
    assert not {p.key for p in node.metadata_props} & SOURCE_KEYS
    assert node.op_type == "Add" and list(node.input) == ["x", "w"]
    assert numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 1, 2, 3]
    assert {p.key: p.value for p in model.metadata_props} == {
        "leukoedge.spec": '{"architecture": "scratch"}'}


def test_strip_leaves_a_clean_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    tiny_model(path)
    strip_source_paths(path)
    before = path.read_bytes()
    assert strip_source_paths(path) == 0
    assert path.read_bytes() == before
