"""Tiny leukoedge-compatible ONNX classifiers built with onnx.helper (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from leukoedge.spec import SPEC_KEY, ModelSpec


def mean_brightness_model(size: int = 32, centre: float = 40.0, scale: float = 0.2,
                          batch_dim: int | str = "N", spec: ModelSpec | None | str = "default",
                          input_size_in_graph: int | None = None,
                          input_type: int = TensorProto.UINT8,
                          cam: bool = False, features: bool = False) -> onnx.ModelProto:
    """logit = (mean pixel value - centre) * scale, over a uint8 [N, S, S, 3] input.

    ``cam``: a second output, "cam" ``[N, S, S]`` (the mean over channels), as a model with
    a heatmap output has. ``features``: an output "features" ``[N, 3]`` (each channel's
    mean), as a model exported with ``--drift-data`` has.
    """
    s = input_size_in_graph or size
    inp = helper.make_tensor_value_info("image", input_type, [batch_dim, s, s, 3])
    out = helper.make_tensor_value_info("logit", TensorProto.FLOAT, [batch_dim])
    outs = [out]
    if cam:
        outs.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, [batch_dim, s, s]))
    if features:
        outs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch_dim, 3]))
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["m"], keepdims=0),
        helper.make_node("Sub", ["m", "c"], ["d"]),
        helper.make_node("Mul", ["d", "k"], ["logit"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(centre, dtype=np.float32), "c"),
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "k"),
    ]
    if cam:
        nodes.append(helper.make_node("ReduceMean", ["f", "chan"], ["cam"], keepdims=0))
        inits.append(numpy_helper.from_array(np.array([3], dtype=np.int64), "chan"))
    if features:
        nodes.append(helper.make_node("ReduceMean", ["f", "hw"], ["features"], keepdims=0))
        inits.append(numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "hw"))
    graph = helper.make_graph(nodes, "mean_brightness", [inp], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="leukoedge-tests")
    model.ir_version = 9
    if spec == "default":
        spec = ModelSpec(architecture="test-mean", input_size=size)
    if isinstance(spec, ModelSpec):
        helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    elif isinstance(spec, str):
        helper.set_model_props(model, {SPEC_KEY: spec})
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def slow_model(size: int = 96, channels: int = 48, kernel: int = 7) -> onnx.ModelProto:
    """A deliberately slow classifier (one wide convolution), for interrupt tests."""
    rng = np.random.default_rng(0)
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
    out = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])
    w = (rng.standard_normal((channels, 3, kernel, kernel)) * 0.01).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[3, 3, 3, 3]),
        helper.make_node("ReduceMean", ["y", "axes"], ["logit"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "axes")]
    graph = helper.make_graph(nodes, "slow", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    spec = ModelSpec(architecture="test-slow", input_size=size)
    helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    return model
