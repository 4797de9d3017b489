"""The bf16 gate: OpenVINO bf16 is accepted for a model only after a check on at least
:data:`MIN_CELLS` real cells found its calls agreeing with fp32 on at least
:data:`MIN_AGREEMENT` of them.

The check (:func:`run_gate`, run by ``leukoedge bench MODEL --provider openvino
--precision bf16 --cells DIR``) is recorded in a small JSON store (:func:`store_path`),
bound to the model file's sha256, the OpenVINO version and the CPU's bf16 instruction set
(AMX and AVX512-BF16 kernels round differently). :func:`gate_problem` is what
``load_model`` asks before compiling a model in bf16: None, or the one line that says why
not and which command runs the gate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .data import file_sha256
from .errors import DataError, ModelError

MIN_CELLS = 500
MIN_AGREEMENT = 0.99
STORE_ENV = "LEUKOEDGE_BF16_GATES"


def store_path() -> Path:
    """``$LEUKOEDGE_BF16_GATES``, else ``$XDG_DATA_HOME/leukoedge/bf16-gates.json``
    (``~/.local/share/leukoedge/bf16-gates.json``)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "leukoedge" / "bf16-gates.json"


@dataclass(frozen=True)
class GateRecord:
    """One gate check: for which model file, runtime and CPU, and what it found."""

    model_sha256: str
    openvino_version: str
    cpu_isa: str  # amx_bf16 | avx512_bf16
    cells: int  # real cells compared
    agreement: float  # share of cells whose call (label at the spec's threshold) agrees
    max_abs_logit_diff: float
    passed: bool
    model: str = ""  # the file's path when checked (information only)
    cells_dir: str = ""
    checked_at: str = ""

    def key(self) -> tuple[str, str, str]:
        return (self.model_sha256, self.openvino_version, self.cpu_isa)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> GateRecord:
        return GateRecord(
            model_sha256=str(d["model_sha256"]), openvino_version=str(d["openvino_version"]),
            cpu_isa=str(d["cpu_isa"]), cells=int(d["cells"]),
            agreement=float(d["agreement"]),
            max_abs_logit_diff=float(d["max_abs_logit_diff"]), passed=bool(d["passed"]),
            model=str(d.get("model", "")), cells_dir=str(d.get("cells_dir", "")),
            checked_at=str(d.get("checked_at", "")))


def read_store(path: Path) -> list[GateRecord]:
    """The records in ``path`` (none when it does not exist); an unreadable store is a
    :class:`ModelError` naming the file."""
    if not path.exists():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [GateRecord.from_json(d) for d in raw["records"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: the bf16 gate store cannot be read ({exc})",
                         "delete it and run the gate again") from exc


def write_record(path: Path, rec: GateRecord) -> None:
    """Add ``rec`` to the store, replacing an earlier record with the same key."""
    from .output import atomic_write_text

    kept = [r for r in read_store(path) if r.key() != rec.key()]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"records": [r.to_json() for r in [*kept, rec]]},
                                       indent=2) + "\n")


def gate_command(model: Path) -> str:
    return f"leukoedge bench {model} --provider openvino --precision bf16 --cells CELLS_DIR"


def gate_problem(records: Sequence[GateRecord], model: Path, sha256: str,
                 openvino_version: str, cpu_isa: str) -> str | None:
    """None when ``records`` hold a passed check for this model file, OpenVINO version
    and CPU instruction set; else the one line that says why bf16 is refused."""
    match = [r for r in records if r.key() == (sha256, openvino_version, cpu_isa)]
    if not match:
        return (f"--precision bf16: {model} has no bf16 gate check for OpenVINO "
                f"{openvino_version} on {cpu_isa}; run it on >= {MIN_CELLS} real cells: "
                f"{gate_command(model)}")
    r = match[-1]
    if not r.passed:
        return (f"--precision bf16: {model} failed its bf16 gate on {r.cells} cells "
                f"(call agreement with fp32 {r.agreement:.2%} < {MIN_AGREEMENT:.0%}); "
                "use f32 (the default)")
    return None


def judge(calls_f32: np.ndarray, calls_bf16: np.ndarray, logits_f32: np.ndarray,
          logits_bf16: np.ndarray) -> tuple[float, float, bool]:
    """Call agreement, the largest |logit difference|, and whether the gate passes
    (at least :data:`MIN_CELLS` cells and agreement >= :data:`MIN_AGREEMENT`)."""
    n = int(calls_f32.size)
    agreement = float(np.mean(calls_f32 == calls_bf16)) if n else 0.0
    diff = float(np.max(np.abs(logits_f32 - logits_bf16))) if n else float("nan")
    return agreement, diff, n >= MIN_CELLS and agreement >= MIN_AGREEMENT


def run_gate(path: Path, files: Sequence[Path], threads: int | None, cells_dir: str,
             batch_size: int = 32) -> GateRecord:
    """Classify ``files`` with OpenVINO f32 and bf16 (the same model file, the same
    decoded cells) and judge the calls; fewer than :data:`MIN_CELLS` readable cells is a
    :class:`DataError`."""
    from .data import Item
    from .ov_session import cpu_bf16_isa, import_ov, ov_version
    from .session import SessionConfig, load_model

    if len(files) < MIN_CELLS:
        raise DataError(f"{cells_dir}: {len(files)} images; the bf16 gate needs at least "
                        f"{MIN_CELLS} real cells", "pass a folder of real cells to --cells")
    f32 = load_model(path, SessionConfig(provider="openvino", threads=threads))
    bf16 = load_model(path, SessionConfig(provider="openvino", threads=threads,
                                          precision="bf16", bf16_gate=False))
    lf, lb = _logits(f32, bf16, [Item(f) for f in files], batch_size)
    if lf.size < MIN_CELLS:
        raise DataError(f"{cells_dir}: only {lf.size} of {len(files)} images could be read; "
                        f"the bf16 gate needs at least {MIN_CELLS}")
    thr = f32.spec.logit_threshold  # the call, as classify makes it
    agreement, diff, passed = judge(lf >= thr, lb >= thr, lf, lb)
    isa = cpu_bf16_isa()
    return GateRecord(file_sha256(path), ov_version(import_ov()), isa or "none", int(lf.size),
                      agreement, diff, passed, model=str(path), cells_dir=cells_dir,
                      checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _logits(a: Any, b: Any, items: list[Any], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Both models' logits on the same decoded batches (unreadable files left out)."""
    from .preprocess import decode_for

    la: list[np.ndarray] = []
    lb: list[np.ndarray] = []
    for i in range(0, len(items), batch_size):
        dec = decode_for([it.path for it in items[i:i + batch_size]], a.spec)
        if len(dec.pixels):
            la.append(a.logits(dec.pixels))
            lb.append(b.logits(dec.pixels))
    if not la:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(la), np.concatenate(lb)
