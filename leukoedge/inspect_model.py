"""What ``leukoedge info`` shows: a model file's spec, interface, opset, size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from .data import file_sha256
from .errors import ModelError, SpecError, first_line
from .session import read_spec_from_metadata
from .spec import ModelSpec


def _dims(t: Any) -> list[int | str]:
    out: list[int | str] = []
    for d in t.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def load_onnx(path: Path) -> Any:
    """The ONNX file's ``ModelProto`` (weights inline; external data not loaded); one
    :class:`ModelError` line when it is missing or not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not an ONNX model ({first_line(exc)})") from exc


def describe_model(path: Path) -> dict[str, Any]:
    """Read the ONNX file (without running it) and return a JSON-able description."""
    import onnx

    proto = load_onnx(path)
    if not proto.graph.input:
        raise ModelError(f"{path}: not an ONNX model (empty graph)")
    meta = {p.key: p.value for p in proto.metadata_props}
    spec: ModelSpec | None = None
    spec_error: str | None = None
    try:
        spec = read_spec_from_metadata(meta, str(path))
    except SpecError as exc:
        spec_error = str(exc)
    def elem(code: int) -> str:  # a damaged file may hold codes this onnx does not know
        try:
            return str(onnx.TensorProto.DataType.Name(code))
        except ValueError:
            return f"unknown({code})"

    initialisers = {i.name for i in proto.graph.initializer}
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "ir_version": proto.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": [{"name": i.name, "type": elem(i.type.tensor_type.elem_type).lower(),
                    "shape": _dims(i)} for i in proto.graph.input if i.name not in initialisers],
        "outputs": [{"name": o.name, "type": elem(o.type.tensor_type.elem_type).lower(),
                     "shape": _dims(o)} for o in proto.graph.output],
        "nodes": len(proto.graph.node),
        **parameters(proto, meta),
        "external_data": any(t.data_location == onnx.TensorProto.EXTERNAL
                             for t in proto.graph.initializer),
        "spec": spec.to_dict() if spec else None,
        "spec_error": spec_error,
        "other_metadata": sorted(k for k in meta if k not in ("leukoedge.spec",
                                                              PARAMETERS_KEY)),
    }


#: ONNX metadata key: the network's parameter count, recorded by ``export``
PARAMETERS_KEY = "leukoedge.parameters"


class Parameters(TypedDict):
    """What :func:`parameters` counts (merged into :func:`describe_model`'s object)."""

    parameters: int
    parameters_source: str
    stored_values: int
    copies: int


def parameters(proto: Any, meta: dict[str, str]) -> Parameters:
    """The network's parameters and what else the file stores.

    ``stored_values``: every number in the file's initialisers. A heatmap output keeps its
    own copies of the dense weights (``export --cam``: its backward pass; int8 needs them
    apart), so that sum is not the network's size. ``parameters``: the count ``export``
    recorded (PyTorch's, under :data:`PARAMETERS_KEY`); for a file without it, the
    initialisers with identical tensors counted once (``parameters_source`` says which).
    ``copies``: the values in tensors identical to another one."""
    import hashlib

    total, copies, seen = 0, 0, set()
    for t in proto.graph.initializer:
        n = _numel(t)
        total += n
        if not t.raw_data:  # external or typed-field data: not compared
            continue
        key = (t.data_type, tuple(t.dims), hashlib.sha256(t.raw_data).digest())
        if key in seen:
            copies += n
        seen.add(key)
    recorded = meta.get(PARAMETERS_KEY, "")
    if recorded.isdigit():
        return {"parameters": int(recorded), "parameters_source": "recorded at export",
                "stored_values": total, "copies": copies}
    return {"parameters": total - copies,
            "parameters_source": "counted in the file, identical tensors once",
            "stored_values": total, "copies": copies}


def _numel(t: Any) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n
