"""Export a checkpoint to ONE self-contained ONNX file, with the ModelSpec inside.

Graph interface: input ``image`` uint8 ``[N, S, S, 3]`` (N dynamic), output ``logit``
float ``[N]``; the ModelSpec JSON under the metadata key ``leukoedge.spec``.

Exporter: ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), the default of
current torch; the TorchScript exporter (``--exporter legacy``) is deprecated and warns on
every call. Both give a truly dynamic batch axis for these models (checked by the parity
run at batch 1 and 16). Weights are stored inline (``save_as_external_data=False``).

Order of work, all on a temporary file in the output's folder: export, embed the spec,
``onnx.checker.check_model``, parity check against the float64 oracle (:mod:`.parity`;
it loads the file with the runtime's own loader). Only when all of that passed is the
file moved into place with ``os.replace``; on any failure nothing is left at the output
path.
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

import torch

from leukoedge.errors import ExportError, OutputExistsError, ParityError, UsageError
from leukoedge.spec import SPEC_KEY, ModelSpec

from . import checkpoint as ckpt_io
from . import parity
from .cam import MapCheck
from .precision import PrecisionReport

EXPORTERS = ("dynamo", "legacy")
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18
EXPORTED = Path("exported")


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
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise ExportError(f"torch.onnx.export ({exporter}) failed: {first}",
                          "try --exporter legacy or another --opset") from exc
    finally:
        logger.setLevel(level)


def _finish(path: Path, spec: ModelSpec, final: Path) -> int:
    """Embed the spec, check names/shapes, save inline to ``final``; return the opset."""
    import onnx

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
    keep = [p for p in proto.metadata_props if p.key != SPEC_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=SPEC_KEY, value=spec.to_json())
    proto.producer_name = proto.producer_name or "pytorch"
    onnx.save(proto, str(final), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(final), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx.checker rejects the exported model: "
                          f"{str(exc).splitlines()[0][:300]}") from exc
    with open(final, "rb") as fh:
        os.fsync(fh.fileno())
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
    """
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} is unknown",
                         f"choose one of {', '.join(PRECISIONS)}")
    if exporter not in EXPORTERS:
        raise UsageError(f"--exporter {exporter!r} is unknown",
                         f"choose {' or '.join(EXPORTERS)}")
    if not 7 <= opset <= 23:
        raise UsageError(f"--opset {opset} is out of range", "use 17..21; default 18")
    from . import cam as cam_mod

    tta_name = cam_mod.tta_name(tta)
    ckpt_path = ckpt_io.resolve(target)
    out = out or default_out(ckpt_path)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", "name the .onnx file")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists", "add --overwrite or choose --out")
    ckpt = ckpt_io.load(ckpt_path)
    spec = ckpt_io.spec_of(ckpt)
    model = ckpt_io.model_of(ckpt).float().to("cpu")
    graph_model: torch.nn.Module = model
    cells = None
    if drift_data:
        from . import drift_fit
        from .models import WithFeatures

        cells = drift_fit.training_pixels(drift_data, spec)  # before any work: bad data
        graph_model = WithFeatures(model).eval()
        spec = spec.with_updates(outputs=("logit", "features"))
    reference: torch.nn.Module = model  # what parity's float64 oracle runs
    if cam or tta_name != "none":
        in_graph = cam_mod.InGraph(model, cam=cam, features=bool(drift_data), tta=tta_name)
        graph_model = reference = in_graph.eval()
        spec = spec.with_updates(outputs=in_graph.outputs, tta=tta_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        raw = work / "raw.onnx"
        final = work / out.name
        _torch_export(graph_model, spec.input_size, raw, opset, exporter)
        got_opset = _finish(raw, spec, final)
        result = parity.check(final, reference, spec, parity_data, parity_batch)
        if not result.passed:
            which = result.failures or result.label_flips
            exc = ParityError(f"export rejected, {result.summary()}; differing: "
                              f"{', '.join(Path(n).name for n in which[:5])}",
                              "nothing was written; try --exporter legacy")
            exc.parity = result  # type: ignore[attr-defined]  # so the CLI can report it
            raise exc
        if cells is not None:
            from . import drift_fit
            from .precision import embed_spec

            drift_fit.require(drift_fit.check_features(final, graph_model, cells.pixels))
            spec = drift_fit.with_stats(spec, drift_fit.fit(final, cells))
            embed_spec(final, spec)
        report = None
        map_check = None
        if precision != "fp32":
            from . import precision as prec

            fp32 = final.rename(work / "fp32.onnx")
            report = prec.convert(precision, fp32, final, spec, ckpt, calibration,
                                  report_data, report_images or prec.REPORT_IMAGES,
                                  model=reference)
            _gate(report)
            if cam:
                map_check = cam_mod.compare_maps(fp32, final, spec, parity_data)
                cam_mod.require(map_check)
            if cells is not None and precision == "int8":
                # int8 features are not the fp32 graph's (measured: median score x1.5):
                # the statistics are fitted again, with the int8 graph itself
                from . import drift_fit
                from .precision import embed_spec

                embed_spec(final, drift_fit.with_stats(spec.with_updates(precision=precision),
                                                       drift_fit.fit(final, cells)))
        size = final.stat().st_size
        with open(final, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, ckpt_path, spec, got_opset, exporter, size, result, precision,
                        report, map_check)


def _gate(report: PrecisionReport) -> None:
    """Refuse a reduced-precision model that disagrees with fp32 (or cannot be checked)."""
    if report.passed:
        return
    if report.agreement is None:
        if report.precision == "fp16":
            return  # fp16 is for GPUs; the CPU may lack its kernels: the report says so
        exc = ExportError(f"{report.precision} export rejected: the converted model does not "
                          f"run here ({report.problem})", "nothing was written")
        exc.report = report  # type: ignore[attr-defined]
        raise exc
    exc = ExportError(
        f"{report.precision} export rejected: label agreement with fp32 "
        f"{report.agreement:.2%} < {report.min_agreement:.0%} on {report.images} cells "
        f"({report.source})",
        "nothing was written; calibrate on more typical cells (--calibration) or use fp32")
    exc.report = report  # type: ignore[attr-defined]  # so the CLI can show the table
    raise exc
