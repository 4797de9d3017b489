"""Reduced-precision exports and the agreement report that gates them.

``int8``: onnxruntime static quantisation in the QDQ format, per-channel int8 weights and
uint8 activations, calibrated (MinMax) on real images: the ones named with
``--calibration``, else a sample of the run's own training data (the checkpoint records
the data folder and the training patients). ``quant_pre_process`` (shape inference and
graph optimisation) runs first. Left in float: the input's Cast, Transpose and
normalisation (quantised, QLinearMul/QLinearAdd cost more than they save); the
normalisation is rewritten as one BatchNormalization, the same arithmetic, which keeps
it on the fast NCHW path (see :func:`_normalize_as_batchnorm`). Everything from the first
convolution on is int8, max-pools included. Measured on 2 cores (AVX2): see
docs/performance.md. Dynamic quantisation is not offered: it made these conv
nets 3-5x *slower*.

``fp16``: for GPUs. ``convert_float_to_float16(keep_io_types=True)``: weights and
arithmetic in half precision, the uint8 image input and the float32 logit output unchanged
(the input Cast becomes uint8 -> float16, exact for 0..255).

Every reduced-precision export is compared with the fp32 export it came from on at least
:data:`REPORT_IMAGES` cells (the ``--report-data`` images, topped up with held-out
synthetic patients when fewer are given): label agreement, Pearson correlation of the
logits, largest logit difference, and accuracy / weighted F1 of both against the truth
labels. Below :data:`MIN_AGREEMENT` label agreement the export is refused. Beside that gate
(which stays the gate), the report shows how far the converted model and its fp32 source
stray from the float64 oracle of the PyTorch model (:mod:`.parity`) on at most
``parity.MAX_IMAGES`` of those cells, spread evenly (the oracle is slow).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukoedge.data import Item, collect
from leukoedge.errors import ExportError, LeukoedgeError, first_line
from leukoedge.preprocess import decode_for
from leukoedge.spec import SPEC_KEY, ModelSpec

from .dataset import note_skipped

if TYPE_CHECKING:
    import onnx
    import torch

    from leukoedge.session import Model

MIN_AGREEMENT = 0.98
REPORT_IMAGES = 500
CALIBRATION_IMAGES = 128
MAX_REPORT_REAL = 2000
SYNTH_PATIENTS = 25
SYNTH_CELLS = 20
SYNTH_SEED = 2027  # not a seed the examples train with: held-out patients


@dataclass
class PrecisionReport:
    """How a reduced-precision model compares with its fp32 source."""

    precision: str
    images: int
    source: str
    provider: str
    agreement: float | None  # share of identical labels; None when it could not run
    pearson: float | None
    max_abs_diff: float | None
    mean_abs_diff: float | None
    labelled: int = 0
    fp32_accuracy: float | None = None
    accuracy: float | None = None
    fp32_weighted_f1: float | None = None
    weighted_f1: float | None = None
    calibration: str | None = None  # int8: where the calibration images came from
    calibration_images: int = 0
    min_agreement: float = MIN_AGREEMENT
    disagreeing: list[str] = field(default_factory=list)
    problem: str | None = None  # why the converted model could not be run here
    oracle_images: int = 0  # cells run through the float64 oracle (0: not measured)
    oracle_max_abs_err: float | None = None  # |converted - f64|
    oracle_mean_abs_err: float | None = None
    fp32_oracle_max_abs_err: float | None = None  # |fp32 ONNX - f64|, for scale
    oracle_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.agreement is not None and self.agreement >= self.min_agreement

    def as_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision, "passed": self.passed, "images": self.images,
            "source": self.source, "provider": self.provider, "agreement": self.agreement,
            "min_agreement": self.min_agreement, "pearson": self.pearson,
            "max_abs_diff_vs_fp32": self.max_abs_diff,
            "mean_abs_diff_vs_fp32": self.mean_abs_diff,
            "oracle": {"images": self.oracle_images, "max_abs_err": self.oracle_max_abs_err,
                       "mean_abs_err": self.oracle_mean_abs_err,
                       "fp32_onnx_max_abs_err": self.fp32_oracle_max_abs_err,
                       "seconds": self.oracle_seconds},
            "labelled": self.labelled, "fp32_accuracy": self.fp32_accuracy,
            "accuracy": self.accuracy, "fp32_weighted_f1": self.fp32_weighted_f1,
            "weighted_f1": self.weighted_f1, "calibration": self.calibration,
            "calibration_images": self.calibration_images,
            "disagreeing": self.disagreeing, "problem": self.problem,
        }


# -- images --------------------------------------------------------------------------------

def _even_sample(items: Sequence[Item], n: int) -> list[Item]:
    """``n`` items spread evenly over the sorted list (deterministic, all classes/folds)."""
    if len(items) <= n:
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def calibration_files(ckpt: dict[str, Any], calibration: Path | None,
                      n: int = CALIBRATION_IMAGES) -> tuple[list[Path], str]:
    """Images to calibrate on, and a description of where they came from."""
    if calibration is not None:
        items = collect([calibration])
        return [it.path for it in _even_sample(items, n)], str(calibration)
    cfg = ckpt.get("config") or {}
    data = cfg.get("data")
    if not data or not Path(data).exists():
        raise ExportError(
            f"int8 calibration needs images: the run's training data ({data or 'unknown'}) "
            "is not there", "pass --calibration FOLDER with ~100-200 typical cells")
    items = collect([Path(data)])
    train_patients = set((ckpt.get("split") or {}).get("train_patients") or [])
    if train_patients:
        picked = [it for it in items if it.patient in train_patients]
        items = picked or items
    return ([it.path for it in _even_sample(items, n)],
            f"{data} (training patients, run config)")


def _decode(spec: ModelSpec, items: Sequence[Item], what: str
            ) -> tuple[np.ndarray, list[Item]]:
    """The readable items as the spec preprocesses them (the one batch decoder) and those
    items; unreadable files are left out and counted on stderr as ``what``."""
    dec = decode_for([it.path for it in items], spec)
    note_skipped(dec.skipped, len(items), what)
    return dec.pixels, [items[i] for i in dec.kept]


def report_images(spec: ModelSpec, report_data: Path | None, work: Path,
                  minimum: int = REPORT_IMAGES) -> tuple[np.ndarray, list[Item], str]:
    """At least ``minimum`` cells: the real ones given, topped up with synthetic patients."""
    x_real = np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    real: list[Item] = []
    parts = []
    if report_data is not None:
        items = _even_sample(collect([report_data]), MAX_REPORT_REAL)
        x_real, real = _decode(spec, items, f"report images from {report_data}")
        parts.append(f"{len(real)} real from {report_data}")
    if len(real) >= minimum:
        return x_real, real, parts[0]
    from leukoedge.synth import SynthConfig, generate

    need = minimum - len(real)
    per = SYNTH_CELLS
    patients = max(2, -(-need // per))
    if report_data is None:
        patients = max(patients, SYNTH_PATIENTS)
    out = work / "synthetic"
    generate(out, SynthConfig(patients=patients, cells_per_patient=per, seed=SYNTH_SEED,
                              size=450, folds=1))
    x_syn, syn = _decode(spec, collect([out]), "synthetic report images")
    parts.append(f"{len(syn)} synthetic ({patients} held-out patients x {per}, 450 px)")
    return np.concatenate([x_real, x_syn]), real + syn, " + ".join(parts)


# -- conversion ----------------------------------------------------------------------------

def _float_prefix(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes kept in float: those before the first Conv (the input's Cast,
    Transpose and normalisation)."""
    names = []
    for n in graph.node:
        if n.op_type == "Conv":
            break
        names.append(n.name)
    return names


def _normalize_as_batchnorm(proto: onnx.ModelProto) -> bool:
    """Replace the input normalisation ``Mul(scale) -> Add(shift)`` (per-channel constants)
    by one inference-mode ``BatchNormalization`` (mean 0, var 1, epsilon 0): the same
    arithmetic, bit for bit, but onnxruntime cannot push the NHWC transpose that the int8
    convolutions want through it, so it runs per channel on NCHW (fast) instead of
    broadcasting a 3-vector along the innermost axis (~9% of the int8 scratch model's
    time). Returns False (and changes nothing) when the pattern is not there."""
    from onnx import helper, numpy_helper

    g = proto.graph
    init = {i.name: i for i in g.initializer}
    nodes = list(g.node)
    first_conv = next((i for i, n in enumerate(nodes) if n.op_type == "Conv"), None)
    if first_conv is None:
        return False
    def channel_const(n: onnx.NodeProto) -> bool:  # a [1, 3, 1, 1] initializer as second input
        return len(n.input) == 2 and n.input[1] in init \
            and list(init[n.input[1]].dims) == [1, 3, 1, 1]

    head = nodes[:first_conv]  # the graph may also compute shapes here (Mul/Add on ints)
    pair = None
    for mul in (n for n in head if n.op_type == "Mul" and channel_const(n)):
        consumers = [n for n in nodes if mul.output[0] in n.input]
        if len(consumers) == 1 and consumers[0].op_type == "Add" \
                and consumers[0].input[0] == mul.output[0] and channel_const(consumers[0]):
            pair = (mul, consumers[0])
            break
    if pair is None:
        return False
    mul, add = pair
    scale = numpy_helper.to_array(init[mul.input[1]])
    shift = numpy_helper.to_array(init[add.input[1]])
    values = {"normalize_scale": scale.reshape(3), "normalize_bias": shift.reshape(3),
              "normalize_mean": np.zeros(3), "normalize_var": np.ones(3)}
    for name, v in values.items():
        g.initializer.append(numpy_helper.from_array(v.astype(np.float32), name))
    bn = helper.make_node("BatchNormalization", [mul.input[0], *values], [add.output[0]],
                          name="normalize_bn", epsilon=0.0)
    at = nodes.index(mul)
    g.node.remove(mul)
    g.node.remove(add)
    g.node.insert(at, bn)
    return True


class _Reader:
    """onnxruntime CalibrationDataReader over decoded uint8 batches."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 16) -> None:
        self.x, self.name, self.batch, self.i = x, input_name, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.x):
            return None
        b = self.x[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: b}

    def rewind(self) -> None:
        self.i = 0


def quantize_int8(fp32: Path, out: Path, spec: ModelSpec, files: Sequence[Path]) -> int:
    """Static QDQ int8 of ``fp32`` into ``out``; returns the calibration image count."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x, kept = _decode(spec, [Item(f) for f in files], "calibration images")
    if not kept:
        raise ExportError("no readable calibration image",
                          "pass --calibration FOLDER with typical cells")
    pre = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ExportError(f"int8: pre-processing failed ({first_line(exc)})") from exc
    proto = onnx.load(str(pre))
    if _normalize_as_batchnorm(proto):
        onnx.save(proto, str(pre), save_as_external_data=False)
    exclude = _float_prefix(proto.graph)
    input_name = proto.graph.input[0].name
    del proto
    try:
        quantize_static(
            str(pre), str(out), _Reader(x, input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
            extra_options={"CalibTensorRangeSymmetric": False})
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise ExportError(f"int8: quantize_static failed ({first_line(exc)})") from exc
    finally:
        pre.unlink(missing_ok=True)
    return len(kept)


def convert_fp16(fp32: Path, out: Path) -> None:
    """fp16 weights and arithmetic; uint8 input and float32 output kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(fp32))
    half = convert_float_to_float16(proto, keep_io_types=True)
    onnx.save(half, str(out), save_as_external_data=False)


def embed_spec(path: Path, spec: ModelSpec) -> None:
    """(Re)write the ModelSpec into ``path``'s metadata and check the model."""
    import onnx

    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=SPEC_KEY, value=spec.to_json())
    onnx.save(proto, str(path), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejects the {spec.precision} model: "
                          f"{first_line(exc)}") from exc


# -- the report ----------------------------------------------------------------------------

def _logits(model: Model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([model.logits(x[i:i + batch]) for i in range(0, len(x), batch)]) \
        .astype(np.float64)


def compare(fp32: Path, converted: Path, spec: ModelSpec, precision: str,
            report_data: Path | None, work: Path, minimum: int = REPORT_IMAGES,
            provider: str = "cpu", model: torch.nn.Module | None = None
            ) -> PrecisionReport:
    """Run both models on the same cells; see the module docstring. ``model`` (the
    PyTorch model) adds the error of both against its float64 oracle."""
    from leukoedge.evaluate import metrics
    from leukoedge.session import SessionConfig, load_model

    x, items, source = report_images(spec, report_data, work, minimum)
    ref_model = load_model(fp32, SessionConfig(provider="cpu"))
    ref = _logits(ref_model, x)
    del ref_model
    try:
        conv_model = load_model(converted, SessionConfig(provider=provider))
        got = _logits(conv_model, x)
        used = conv_model.provider
    except LeukoedgeError as exc:
        return PrecisionReport(precision, len(x), source, provider, None, None, None, None,
                               problem=exc.message)
    thr = spec.logit_threshold
    a, b = ref >= thr, got >= thr
    diff = np.abs(got - ref)
    pearson = float(np.corrcoef(ref, got)[0, 1]) if ref.std() > 0 and got.std() > 0 else 1.0
    rep = PrecisionReport(
        precision, len(x), source, used, float(np.mean(a == b)), pearson,
        float(diff.max()), float(diff.mean()),
        disagreeing=[str(items[i].path.name) for i in np.flatnonzero(a != b)][:20])
    truth = [it.label for it in items if it.label is not None]
    lab = [i for i, it in enumerate(items) if it.label is not None]
    if lab:
        m_ref = metrics(truth, [int(a[i]) for i in lab])
        m_got = metrics(truth, [int(b[i]) for i in lab])
        rep.labelled = len(lab)
        rep.fp32_accuracy, rep.accuracy = m_ref["accuracy"], m_got["accuracy"]
        rep.fp32_weighted_f1, rep.weighted_f1 = m_ref["weighted_f1"], m_got["weighted_f1"]
    if model is not None:
        _oracle_errors(rep, model, x, ref, got)
    return rep


def _oracle_errors(rep: PrecisionReport, model: torch.nn.Module, x: np.ndarray, ref: np.ndarray,
                   got: np.ndarray) -> None:
    """Fill in the errors against the float64 oracle on up to ``parity.MAX_IMAGES``
    cells spread evenly over the report's."""
    import time

    from . import parity

    idx = np.asarray(parity.spread(len(x), parity.MAX_IMAGES), dtype=int)
    if not len(idx):
        return
    t0 = time.perf_counter()
    f64 = parity.oracle_logits(model, x[idx])
    rep.oracle_seconds = time.perf_counter() - t0
    err = np.abs(got[idx] - f64)
    rep.oracle_images = len(idx)
    rep.oracle_max_abs_err, rep.oracle_mean_abs_err = float(err.max()), float(err.mean())
    rep.fp32_oracle_max_abs_err = float(np.abs(ref[idx] - f64).max())


def convert(precision: str, fp32: Path, out: Path, spec: ModelSpec, ckpt: dict[str, Any],
            calibration: Path | None, report_data: Path | None,
            minimum: int = REPORT_IMAGES, model: torch.nn.Module | None = None
            ) -> PrecisionReport:
    """Write the ``precision`` version of ``fp32`` to ``out`` (spec embedded) and return
    its report. The caller refuses it when the report did not pass. ``model`` (PyTorch)
    adds the errors against its float64 oracle to the report."""
    work = Path(tempfile.mkdtemp(prefix=".precision-", dir=out.parent))
    try:
        calib_src, n_calib = None, 0
        if precision == "int8":
            files, calib_src = calibration_files(ckpt, calibration)
            n_calib = quantize_int8(fp32, out, spec, files)
        elif precision == "fp16":
            convert_fp16(fp32, out)
        else:
            raise ExportError(f"unknown precision {precision!r}")
        embed_spec(out, spec.with_updates(precision=precision))
        rep = compare(fp32, out, spec, precision, report_data, work, minimum,
                      provider="auto" if precision == "fp16" else "cpu", model=model)
        rep.calibration, rep.calibration_images = calib_src, n_calib
        rep.min_agreement = MIN_AGREEMENT
        return rep
    finally:
        shutil.rmtree(work, ignore_errors=True)
