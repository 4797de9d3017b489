"""What ``leukoedge info`` shows: a model file's spec, interface, opset, size."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

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


def describe_model(path: Path) -> dict[str, Any]:
    """Read the ONNX file (without running it) and return a JSON-able description."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: not an ONNX model ({first_line(exc)})") from exc
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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": h.hexdigest(),
        "ir_version": proto.ir_version,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": [{"name": i.name, "type": elem(i.type.tensor_type.elem_type).lower(),
                    "shape": _dims(i)} for i in proto.graph.input if i.name not in initialisers],
        "outputs": [{"name": o.name, "type": elem(o.type.tensor_type.elem_type).lower(),
                     "shape": _dims(o)} for o in proto.graph.output],
        "nodes": len(proto.graph.node),
        "parameters": int(sum(_numel(t) for t in proto.graph.initializer)),
        "external_data": any(t.data_location == onnx.TensorProto.EXTERNAL
                             for t in proto.graph.initializer),
        "spec": spec.to_dict() if spec else None,
        "spec_error": spec_error,
        "other_metadata": sorted(k for k in meta if k != "leukoedge.spec"),
    }


def _numel(t: Any) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n
