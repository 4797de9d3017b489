"""``leukoedge bench MODEL --runtimes``: the runtimes side by side, in one interleaved run.

Up to five configurations of one model: onnxruntime fp32 (the reference), onnxruntime
int8 (the ``export --precision int8`` file, ``--int8``), OpenVINO f32, OpenVINO bf16
(where the CPU has it) and OpenVINO int8. For each: inference-only images/s per batch
size (the configurations take turns, round after round, so that a change in the
machine's load hits all alike; the median over the rounds), the whole process (a fresh
``python -m leukoedge classify`` over the cells, timed from start to exit: interpreter,
imports, model load/compile, decoding, inference, writing), and call agreement with the
reference on the same real cells (labels at the spec's threshold, and the largest
|logit difference|). A library module: it returns results and reports progress through
``say``; it never prints.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .bench import sample_batch, timed
from .errors import LeukoedgeError
from .session import Model, SessionConfig, load_model


@dataclass(frozen=True)
class Config:
    """One runtime configuration: a name, the model file, the provider and precision."""

    name: str
    model: Path
    provider: str  # cpu | openvino
    precision: str = "f32"


@dataclass
class RuntimeResult:
    name: str
    model: str
    provider: str
    precision: str
    inference: dict[int, float] = field(default_factory=dict)  # batch -> images/s
    whole_process_per_s: float | None = None
    whole_process_note: str = ""  # why it was not measured
    cells: int = 0
    agreement: float | None = None  # call agreement with the reference on the cells
    max_abs_logit_diff: float | None = None

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["inference"] = {str(b): v for b, v in self.inference.items()}
        return d


def configs(model: Path, int8: Path | None, bf16: bool) -> list[Config]:
    """The configurations to compare (the reference first)."""
    out = [Config("onnxruntime fp32", model, "cpu")]
    if int8 is not None:
        out.append(Config("onnxruntime int8", int8, "cpu"))
    out.append(Config("OpenVINO f32", model, "openvino"))
    if bf16:
        out.append(Config("OpenVINO bf16", model, "openvino", "bf16"))
    if int8 is not None:
        out.append(Config("OpenVINO int8", int8, "openvino"))
    return out


def open_configs(cs: Sequence[Config], threads: int | None) -> list[Model]:
    """Each configuration's model (bf16 without the gate: measuring is not deploying)."""
    return [load_model(c.model, SessionConfig(provider=c.provider, threads=threads,
                                              precision=c.precision, bf16_gate=False))
            for c in cs]


def compare(cs: Sequence[Config], roots: Sequence[Path], cells: Sequence[Path],
            batch_sizes: Sequence[int],
            seconds: float, rounds: int, threads: int | None, whole_process: bool,
            bf16_classify_ok: bool, say: Callable[[str], None] = lambda _: None
            ) -> list[RuntimeResult]:
    """Every measurement for every configuration (see the module's docstring); the whole
    process classifies ``roots`` (the folders ``cells`` were found in)."""
    models = open_configs(cs, threads)
    res = [RuntimeResult(c.name, str(c.model), c.provider, c.precision) for c in cs]
    say(f"agreement on {len(cells)} cells ...")
    _agreement(models, res, cells)
    batch, _ = sample_batch(models[0].spec, cells, max(batch_sizes))
    for bs in batch_sizes:
        x = batch[:bs]
        for m in models:
            m.logits(x)  # warm-up at this shape
        per: list[list[float]] = [[] for _ in models]
        say(f"inference-only, batch {bs}, {rounds} interleaved rounds ...")
        for _ in range(rounds):
            for i, m in enumerate(models):
                t = timed(partial(m.logits, x), seconds / rounds)
                per[i].append(bs / float(np.median(t)))
        for r, v in zip(res, per):
            r.inference[bs] = float(np.median(v))
    if whole_process:
        _whole_process(cs, res, roots, len(cells), threads, rounds, bf16_classify_ok, say)
    return res


def _agreement(models: Sequence[Model], res: Sequence[RuntimeResult],
               cells: Sequence[Path], batch_size: int = 32) -> None:
    from .preprocess import decode_for

    logits: list[list[np.ndarray]] = [[] for _ in models]
    for i in range(0, len(cells), batch_size):
        dec = decode_for(list(cells[i:i + batch_size]), models[0].spec)
        if len(dec.pixels):
            for j, m in enumerate(models):
                logits[j].append(m.logits(dec.pixels))
    if not logits[0]:
        return
    ref = np.concatenate(logits[0])
    thr = models[0].spec.logit_threshold
    for r, parts in zip(res, logits):
        z = np.concatenate(parts)
        r.cells = int(z.size)
        r.agreement = float(np.mean((z >= thr) == (ref >= thr)))
        r.max_abs_logit_diff = float(np.max(np.abs(z - ref)))


def _whole_process(cs: Sequence[Config], res: Sequence[RuntimeResult], roots: Sequence[Path],
                   n: int, threads: int | None, rounds: int, bf16_classify_ok: bool,
                   say: Callable[[str], None]) -> None:
    """A fresh ``classify`` process per configuration over ``roots`` (``n`` cells), round
    after round; the median."""
    folders = [str(r) for r in roots]
    walls: list[list[float]] = [[] for _ in cs]
    say(f"whole process: 'leukoedge classify' over {n} cells, {rounds} "
        "interleaved rounds ...")
    with tempfile.TemporaryDirectory(prefix="leukoedge-runtimes-") as tmp:
        for _ in range(rounds):
            for i, c in enumerate(cs):
                if c.precision == "bf16" and not bf16_classify_ok:
                    res[i].whole_process_note = "not measured: no passed bf16 gate"
                    continue
                cmd = [sys.executable, "-m", "leukoedge", "classify", *folders,
                       "--model", str(c.model), "--provider", c.provider,
                       "--precision", c.precision, "--overwrite",
                       "--out", str(Path(tmp) / f"{i}.csv")]
                if threads is not None:
                    cmd += ["--threads", str(threads)]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, check=False)
                wall = time.perf_counter() - t0
                if p.returncode != 0:
                    last = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
                    raise LeukoedgeError(f"whole process of {c.name}: classify exited "
                                         f"{p.returncode}: {last}")
                walls[i].append(wall)
    for r, w in zip(res, walls):
        if w:
            r.whole_process_per_s = n / float(np.median(w))
