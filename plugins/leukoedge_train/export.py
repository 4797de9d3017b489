"""Export a checkpoint to ONE self-contained ONNX file, with the ModelSpec inside.

Graph interface: input ``image`` uint8 ``[N, S, S, 3]`` (N dynamic), output ``logit``
float ``[N]``; the ModelSpec JSON under the metadata key ``leukoedge.spec``.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), the default of
current torch; the TorchScript exporter (``--exporter legacy``) is deprecated and warns on
every call. Both give a truly dynamic batch axis for these models (checked by the parity
run at batch 1 and 16). Weights are stored inline (``save_as_external_data=False``).

Order of work, all in a temporary folder beside the output: export, embed the spec,
``onnx.checker.check_model``, parity check against the float64 oracle (:mod:`.parity`;
it loads the file with the runtime's own loader), then the drift statistics and the
reduced-precision conversion when asked for. Only when all of that passed is the file
moved into place (:func:`leukoedge.output.atomic_path`: fsynced, then renamed); on any
failure nothing is left at the output path.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from leukoedge.errors import (
    ExportError,
    OutputExistsError,
    ParityError,
    UsageError,
    first_line,
)
from leukoedge.output import atomic_path
from leukoedge.spec import EXPORTED, ONNX_OPSET, PRECISIONS, SPEC_KEY, ModelSpec

from . import cam as cam_mod
from . import checkpoint as ckpt_io
from . import parity
from .cam import MapCheck
from .precision import PrecisionReport
from .source_paths import strip_proto

if TYPE_CHECKING:
    from .drift_fit import Cells

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = ONNX_OPSET


@dataclass
class ExportResult:
    path: Path
    checkpoint: Path
    spec: ModelSpec
    opset: int
    exporter: str
    size_bytes: int
    parity: parity.ParityResult
    precision: str = "fp32"
    report: PrecisionReport | None = None  # fp16/int8: agreement with the fp32 export
    map_check: MapCheck | None = None  # fp16/int8 with --cam: the maps against fp32's


class ParityRejected(ParityError):
    """The exported file failed its parity check; ``parity`` is the check's result, so the
    CLI can show it."""

    def __init__(self, message: str, hint: str | None, result: parity.ParityResult) -> None:
        super().__init__(message, hint)
        self.parity = result


class PrecisionRejected(ExportError):
    """A reduced-precision export that its agreement report refuses; ``report`` is that
    report, so the CLI can show the table."""

    def __init__(self, message: str, hint: str | None, report: PrecisionReport) -> None:
        super().__init__(message, hint)
        self.report = report


def default_out(ckpt_path: Path) -> Path:
    return EXPORTED / f"{ckpt_io.run_name(ckpt_path)}.onnx"


def _torch_export(model: torch.nn.Module, size: int, path: Path, opset: int,
                  exporter: str) -> None:
    """Export ``model``; its outputs are named by its ``outputs`` attribute (default just
    ``logit``; :class:`.models.WithFeatures` adds ``features``)."""
    outputs: tuple[str, ...] = getattr(model, "outputs", ("logit",))
    example = (torch.zeros((2, size, size, 3), dtype=torch.uint8),)
    onnx_errors: tuple[type[BaseException], ...] = (RuntimeError, ValueError, TypeError,
                                                    AssertionError, NotImplementedError)
    err_cls = getattr(getattr(torch.onnx, "errors", None), "OnnxExporterError", None)
    if isinstance(err_cls, type):
        onnx_errors += (err_cls,)
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its opset-conversion notice; we report the result
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                from torch.export import Dim

                torch.onnx.export(
                    model, example, str(path), dynamo=True, opset_version=opset,
                    input_names=["image"], output_names=list(outputs),
                    dynamic_shapes={"image": {0: Dim("N", min=1, max=65536)}},
                    external_data=False, verbose=False)
            else:
                torch.onnx.export(
                    model, example, str(path), dynamo=False, opset_version=opset,
                    input_names=["image"], output_names=list(outputs),
                    dynamic_axes={"image": {0: "N"}, **{o: {0: "N"} for o in outputs}},
                    do_constant_folding=True)
    except onnx_errors as exc:
        raise ExportError(f"torch.onnx.export ({exporter}) failed: {first_line(exc)}",
                          "try --exporter legacy or another --opset") from exc
    finally:
        logger.setLevel(level)


def _finish(path: Path, spec: ModelSpec, final: Path, parameters: int | None = None) -> int:
    """Embed the spec (and the network's parameter count, which ``info`` shows: the
    file's initialisers also hold a heatmap's own copies of weights), check names/shapes,
    save inline to ``final``; return the opset."""
    import onnx

    from leukoedge.inspect_model import PARAMETERS_KEY

    proto = onnx.load(str(path))  # pulls in external data, if the exporter wrote any
    g = proto.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or inputs[0].name != "image" \
            or [o.name for o in g.output] != list(spec.outputs):
        raise ExportError(f"exported graph has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in g.output]}; expected image -> "
                          f"{', '.join(spec.outputs)}")
    dim0 = inputs[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ExportError(f"exported graph has a fixed batch axis ({dim0.dim_value})",
                          "try the other --exporter")
    dim0.dim_param = "N"
    for o in g.output:
        odim = o.type.tensor_type.shape.dim
        if odim:
            odim[0].dim_param = "N"
    keep = [p for p in proto.metadata_props if p.key not in (SPEC_KEY, PARAMETERS_KEY)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=SPEC_KEY, value=spec.to_json())
    if parameters is not None:
        proto.metadata_props.add(key=PARAMETERS_KEY, value=str(parameters))
    proto.producer_name = proto.producer_name or "pytorch"
    strip_proto(proto)  # the exporter's source locations name this machine's folders
    onnx.save(proto, str(final), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(final), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx.checker rejects the exported model: "
                          f"{first_line(exc)}") from exc
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def export_onnx(target: Path | None, out: Path | None = None, opset: int = DEFAULT_OPSET,
                exporter: str = "dynamo", parity_data: Path | None = None,
                overwrite: bool = False, parity_batch: int = 16, precision: str = "fp32",
                calibration: Path | None = None, report_data: Path | None = None,
                report_images: int | None = None,
                drift_data: Sequence[Path] | None = None, cam: bool = False,
                tta: int = 1) -> ExportResult:
    """Export a run's best checkpoint (or the one named) and check it; see module doc.

    ``precision`` fp16/int8: the fp32 export (parity-checked against PyTorch) is converted
    (see :mod:`.precision`), compared with itself on at least ``report_images`` cells and
    refused below 98% label agreement; only the converted model is written.

    ``drift_data`` (the model's training cells): the graph gets a second output,
    ``features``, checked against PyTorch, and the spec the drift statistics of those cells
    (:mod:`.drift_fit`), computed with the fp32 graph (fp32, fp16) or the int8 graph.

    ``cam``: a further output, ``cam`` ``[N, h, w]``, the ALL logit's class activation map
    (:mod:`.cam`); ``tta`` 2/4/8: the graph averages the model over that many symmetries of
    the input (spec ``tta``: d1/c4/d4). Both are checked by parity against the same
    computation in PyTorch (float64 oracle), the map like the logit. fp16/int8 convert the
    map's branch too, and check it on its own against the fp32 export's maps
    (:func:`.cam.compare_maps`; refused below a median correlation of 0.95).

    Refusals: :class:`ParityRejected` (parity), :class:`PrecisionRejected` (the
    fp16/int8 agreement report), :class:`~leukoedge.errors.ExportError` (the rest).
    """
    _check_options(precision, exporter, opset)
    tta_name = cam_mod.tta_name(tta)
    ckpt_path = ckpt_io.resolve(target)
    out = _output_path(ckpt_path, out, overwrite)
    ckpt = ckpt_io.load(ckpt_path)
    graph = _plan_graph(ckpt_io.model_of(ckpt).float().to("cpu"), ckpt_io.spec_of(ckpt),
                        drift_data, cam, tta_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        final = work / "checked" / out.name  # its own folder: no step's file is named so
        final.parent.mkdir()
        got_opset, result, spec = _export_checked(graph, work, final, opset, exporter,
                                                  parity_data, parity_batch)
        report, map_check = None, None
        if precision != "fp32":
            report, map_check = _convert(
                precision, work, final, spec, ckpt, graph, calibration=calibration,
                report_data=report_data, report_images=report_images, cam=cam,
                maps_data=parity_data)
        size = _publish(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, ckpt_path, spec, got_opset, exporter, size, result, precision,
                        report, map_check)


# -- the steps of export_onnx ------------------------------------------------------------

def _check_options(precision: str, exporter: str, opset: int) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is unknown",
                         f"choose one of {', '.join(PRECISIONS)}")
    if exporter not in EXPORTERS:
        raise UsageError(f"--exporter {exporter!r} is unknown",
                         f"choose {' or '.join(EXPORTERS)}")
    if not 7 <= opset <= 23:
        raise UsageError(f"--opset {opset} is out of range", f"use 7..23; default {ONNX_OPSET}")


def _output_path(ckpt_path: Path, out: Path | None, overwrite: bool) -> Path:
    """``out`` (default ``exported/RUN.onnx``), refused when it is a folder or exists."""
    out = out or default_out(ckpt_path)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", "name the .onnx file")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists", "add --overwrite or choose --out")
    return out


@dataclass
class _Graph:
    """What goes into the ONNX file and what its parity check compares it with."""

    model: torch.nn.Module  # exported
    reference: torch.nn.Module  # what parity's float64 oracle runs
    spec: ModelSpec  # its outputs and tta as exported; no drift statistics yet
    cells: Cells | None = None  # --drift-data: the training cells, decoded


def _plan_graph(model: torch.nn.Module, spec: ModelSpec, drift_data: Sequence[Path] | None,
                cam: bool, tta_name: str) -> _Graph:
    """The model as exported: with a ``features`` output for drift statistics, and the
    map and test-time symmetries inside (:class:`.cam.InGraph`). The drift cells are
    decoded here, before any work, so that bad data fails early."""
    graph = _Graph(model, model, spec)
    if drift_data:
        from . import drift_fit
        from .models import WithFeatures

        graph.cells = drift_fit.training_pixels(drift_data, spec)
        graph.model = WithFeatures(model).eval()
        graph.spec = spec.with_updates(outputs=("logit", "features"))
    if cam or tta_name != "none":
        # parity.reference builds the graph from the spec: the same function rebuilds it
        # from a file's spec for 'leukoedge parity', so both judge the same computation
        outputs = ("logit",) + (("features",) if drift_data else ()) + (("cam",) if cam else ())
        graph.spec = graph.spec.with_updates(outputs=outputs, tta=tta_name)
        graph.model = graph.reference = parity.reference(model, graph.spec)
    if graph.cells is not None:
        from . import drift_fit

        # wide features (lite0 1280, ResNet50 2048) leave the graph projected onto their
        # first principal directions; parity compares the logit and map, which are unchanged
        graph.model = drift_fit.project_if_wide(graph.model, graph.cells.pixels)
    return graph


def _export_checked(graph: _Graph, work: Path, final: Path, opset: int, exporter: str,
                    parity_data: Path | None, parity_batch: int
                    ) -> tuple[int, parity.ParityResult, ModelSpec]:
    """The fp32 file at ``final`` (the raw export in ``work``), parity-checked, with drift
    statistics when asked for: its opset, the parity result and its spec."""
    raw = work / "raw.onnx"
    _torch_export(graph.model, graph.spec.input_size, raw, opset, exporter)
    got_opset = _finish(raw, graph.spec, final,
                        sum(p.numel() for p in graph.reference.parameters()))
    result = parity.check(final, graph.reference, graph.spec, parity_data, parity_batch)
    _require_parity(result)
    spec = graph.spec
    if graph.cells is not None:
        from . import drift_fit
        from .precision import embed_spec

        drift_fit.require(drift_fit.check_features(final, graph.model, graph.cells.pixels))
        spec = drift_fit.with_stats(spec, drift_fit.fit(final, graph.cells))
        embed_spec(final, spec)
    return got_opset, result, spec


def _require_parity(result: parity.ParityResult) -> None:
    if result.passed:
        return
    which = result.failures or result.label_flips
    raise ParityRejected(f"export rejected, {result.summary()}; differing: "
                         f"{', '.join(Path(n).name for n in which[:5])}",
                         "nothing was written; try --exporter legacy", result)


def _convert(precision: str, work: Path, final: Path, spec: ModelSpec,
             ckpt: dict[str, Any], graph: _Graph, *, calibration: Path | None,
             report_data: Path | None, report_images: int | None, cam: bool,
             maps_data: Path | None) -> tuple[PrecisionReport, MapCheck | None]:
    """Replace the checked fp32 file at ``final`` by its ``precision`` version (the fp32
    file moves into ``work``), refused when it disagrees with fp32 (:func:`_gate`) or,
    with ``cam``, when its maps stray from fp32's (compared on ``maps_data``). int8 refits
    the drift statistics with itself."""
    from . import precision as prec

    fp32 = final.rename(work / "fp32.onnx")
    report = prec.convert(precision, fp32, final, spec, ckpt, calibration, report_data,
                          report_images or prec.REPORT_IMAGES, model=graph.reference)
    _gate(report)
    map_check = None
    if cam:
        map_check = cam_mod.compare_maps(fp32, final, spec, maps_data)
        cam_mod.require(map_check)
    if graph.cells is not None and precision == "int8":
        # int8 features are not the fp32 graph's (measured: median score x1.5):
        # the statistics are fitted again, with the int8 graph itself
        from . import drift_fit

        prec.embed_spec(final, drift_fit.with_stats(spec.with_updates(precision=precision),
                                                    drift_fit.fit(final, graph.cells)))
    return report, map_check


def _publish(built: Path, out: Path) -> int:
    """Move the checked file onto ``out`` through the one atomic write (fsynced, then
    renamed: readers see the old file or the new one); return its size in bytes."""
    size = built.stat().st_size
    with atomic_path(out) as tmp:
        os.replace(built, tmp)  # same file system: the work folder is out's sibling
    return size


def _gate(report: PrecisionReport) -> None:
    """Refuse a reduced-precision model that disagrees with fp32 (or cannot be checked)."""
    if report.passed:
        return
    if report.agreement is None:
        if report.precision == "fp16":
            return  # fp16 is for GPUs; the CPU may lack its kernels: the report says so
        raise PrecisionRejected(f"{report.precision} export rejected: the converted model "
                                f"does not run here ({report.problem})",
                                "nothing was written", report)
    raise PrecisionRejected(
        f"{report.precision} export rejected: label agreement with fp32 "
        f"{report.agreement:.2%} < {report.min_agreement:.0%} on {report.images} cells "
        f"({report.source})",
        "nothing was written; calibrate on more typical cells (--calibration) or use fp32",
        report)
