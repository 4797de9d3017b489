"""Strip the exporter's source-location metadata from an ONNX graph (no torch needed).

``torch.onnx.export(dynamo=True)`` records, on every node, the Python stack that made it
(``pkg.torch.onnx.stack_trace``: ``File "<checkout>/plugins/.../cam.py", line 80``); the
legacy exporter writes the same into a node's ``doc_string``. Both name the exporting
machine's folders, and a shipped model must not. Only that metadata goes: the weights, the
nodes, their attributes and the model's own metadata (the spec) are untouched, so the
outputs are the same.

    from leukoedge_train.source_paths import strip_source_paths
    strip_source_paths("leukoedge/models/default.onnx")     # in place; returns the count

or ``python scripts/strip_source_paths.py MODEL.onnx`` (checks the weights are unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: node metadata keys that carry source locations (file names, line numbers, code)
SOURCE_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph in its nodes' attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _strip_nodes(nodes: Any) -> int:
    removed = 0
    for node in nodes:
        keep = [p for p in node.metadata_props if p.key not in SOURCE_KEYS]
        removed += len(node.metadata_props) - len(keep)
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
        if node.doc_string:
            node.doc_string = ""
            removed += 1
    return removed


def strip_proto(proto: Any) -> int:
    """Remove source-location metadata from a loaded ``onnx.ModelProto`` in place; return
    how many entries went."""
    removed = 0
    for graph in _graphs(proto.graph):
        removed += _strip_nodes(graph.node)
    for fn in proto.functions:
        removed += _strip_nodes(fn.node)
    return removed


def strip_source_paths(path: str | Path) -> int:
    """Strip the ONNX file at ``path`` in place (atomically: a temp file then a rename);
    return how many metadata entries were removed (0: the file is left as it was)."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    removed = strip_proto(proto)
    if removed:
        tmp = path.with_name(path.name + ".strip-tmp")
        onnx.save(proto, str(tmp), save_as_external_data=False)
        tmp.replace(path)
    return removed
