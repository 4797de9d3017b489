#!/usr/bin/env python3
"""Strip the exporter's source-location metadata from ONNX files in place (no torch).

    python scripts/strip_source_paths.py leukoedge/models/default.onnx [MORE.onnx ...]

For each file: the metadata goes (``leukoedge_train.source_paths.strip_source_paths``),
then the script checks that the weights (every initializer's bytes), the nodes and the
model's metadata (the spec) are the same as before, and that onnxruntime gives the same
outputs on the same random batch. Exit 1 if any check fails (the file is then restored).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    from leukoedge_train.source_paths import strip_source_paths
except ImportError:  # a checkout where the plugin is not installed
    sys.path.insert(0, str(REPO / "plugins"))
    from leukoedge_train.source_paths import strip_source_paths


def fingerprint(path: Path) -> str:
    """sha256 over the initializers' bytes, the nodes without their metadata, and the
    model's metadata."""
    import onnx

    proto = onnx.load(str(path))
    h = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda i: i.name):
        h.update(init.name.encode())
        h.update(onnx.numpy_helper.to_array(init).tobytes())
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        h.update(node.SerializeToString(deterministic=True))
    for p in proto.metadata_props:
        h.update(f"{p.key}={p.value}".encode())
    return h.hexdigest()


def outputs(path: Path) -> list:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [2 if not isinstance(d, int) else d for d in inp.shape]
    batch = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    return sess.run(None, {inp.name: batch})


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    bad = 0
    for name in argv:
        path = Path(name)
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            bad += 1
            continue
        with tempfile.TemporaryDirectory() as tmp:
            backup = Path(tmp) / path.name
            shutil.copy2(path, backup)
            before, out_before = fingerprint(path), outputs(path)
            removed = strip_source_paths(path)
            after, out_after = fingerprint(path), outputs(path)
            same = before == after and all(
                a.shape == b.shape and (a == b).all() for a, b in zip(out_before, out_after))
            if not same:
                shutil.copy2(backup, path)
                print(f"{path}: weights or outputs changed; restored", file=sys.stderr)
                bad += 1
                continue
        print(f"{path}: {removed} source-location entries removed; weights, nodes, spec and "
              f"outputs unchanged (fingerprint {after[:16]})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
