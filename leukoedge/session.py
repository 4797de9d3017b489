"""onnxruntime sessions: provider choice, session options and verification (and the probe
``doctor`` uses), the spec check, inference.

``load_model(path, provider)`` returns a :class:`Model` whose spec was read from the
file and checked against the graph, running on a provider that was verified through the
created session's own ``get_providers()`` (``get_available_providers()`` lists CUDA on
CPU-only machines that have the GPU wheel, so it proves nothing).
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .drift import DriftStats, from_spec
from .errors import (
    MissingExtraError,
    ModelError,
    ProviderError,
    SpecError,
    UsageError,
    first_line,
)
from .preprocess import cell_colour
from .spec import ONNX_OPSET, SPEC_KEY, ModelSpec

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt", "openvino")
PRECISION_CHOICES = ("f32", "bf16")
_ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_PROVIDER_LIBS = {
    "cuda": "libonnxruntime_providers_cuda.so",
    "tensorrt": "libonnxruntime_providers_tensorrt.so",
}
DEFAULT_TRT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "leukoedge" / "trt"


def import_ort() -> ModuleType:
    """Import onnxruntime, or say which extra installs it."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingExtraError(
            "onnxruntime is not installed",
            "pip install 'leukoedge[cpu]' (or 'leukoedge[gpu]' for CUDA; not both; in a "
            "clone: pip install -e '.[cpu]')",
        ) from exc
    ort.set_default_logger_severity(3)
    module: ModuleType = ort
    return module


def ort_errors(ort: ModuleType) -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception types (they derive from ``Exception`` directly)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel",
             "NoSuchFile", "NotFound", "NotImplemented", "RuntimeException", "EPFail",
             "EngineError", "ModelRequiresCompilation")
    found = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return found + (RuntimeError, OSError, ValueError)


def ort_distribution() -> str:
    """Which onnxruntime wheel is installed (onnxruntime, onnxruntime-gpu, ...)."""
    from importlib import metadata

    for dist in ("onnxruntime-gpu", "onnxruntime", "onnxruntime-openvino",
                 "onnxruntime-directml"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def provider_load_problem(ort: ModuleType, provider: str) -> str | None:
    """Why ``provider`` cannot run here, or None when its library at least loads."""
    if provider == "cpu":
        return None
    name = _ORT_NAMES[provider]
    if name not in ort.get_available_providers():
        return (f"this onnxruntime build ({ort_distribution()}) has no {name}; "
                "install the GPU build: pip uninstall onnxruntime && "
                "pip install 'leukoedge[gpu]' (in a clone: pip install -e '.[gpu]')")
    if ort.__file__ is None:  # a namespace package: nothing to try to load
        return None
    lib = Path(ort.__file__).parent / "capi" / _PROVIDER_LIBS[provider]
    if lib.exists():
        try:
            ctypes.CDLL(str(lib))
        except OSError as exc:
            return (f"{name} cannot load its libraries ({first_line(exc)}); install the CUDA and "
                    "cuDNN libraries: pip install 'onnxruntime-gpu[cuda,cudnn]', or add "
                    "the system CUDA/cuDNN to LD_LIBRARY_PATH")
    return None


def probe_provider(ort: ModuleType, provider: str) -> str | None:
    """Create a tiny session on ``provider``; None when it really runs there, else why not
    (a library that loads proves nothing without a usable device and driver)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    m.ir_version = 8
    name = _ORT_NAMES[provider]
    try:
        sess = ort.InferenceSession(m.SerializeToString(),
                                    providers=[name, "CPUExecutionProvider"])
    except ort_errors(ort) as exc:
        return f"session creation failed: {first_line(exc)}"
    if name not in sess.get_providers():
        return "the provider's library loads but the session fell back to the CPU " \
               "(no usable GPU or driver?)"
    return None


def provider_status(ort: ModuleType) -> dict[str, str]:
    """Each provider (cpu, cuda, tensorrt) -> ``"ok"`` or why it cannot run here: its
    library must load (:func:`provider_load_problem`) and a session must really run on it
    (:func:`probe_provider`). What ``leukoedge doctor`` shows."""
    status: dict[str, str] = {}
    for p in ("cpu", "cuda", "tensorrt"):
        problem = provider_load_problem(ort, p)
        if problem is None and p != "cpu":
            problem = probe_provider(ort, p)
        status[p] = "ok" if problem is None else problem
    return status


@dataclass
class SessionConfig:
    """How to run a model; separate from the model itself."""

    provider: str = "auto"
    threads: int | None = None  # intra-op threads; None = cores present
    device_id: int = 0
    trt_cache: Path = DEFAULT_TRT_CACHE
    trt_fp16: bool = False
    optimization: str = "all"  # basic | extended | all
    cuda_tf32: bool = True  # False: CUDA provider option use_tf32=0 (exact fp32, parity)
    #: f32, or bf16 (``--provider openvino`` on a CPU with bf16, after a passed gate)
    precision: str = "f32"
    bf16_gate: bool = True  # False: only the gate check itself compiles an unchecked bf16
    #: False: onnxruntime's idle intra-op threads sleep instead of spinning (``serve``: they
    #: share the cores with the event loop and the decoding threads)
    spin: bool = True

    def __post_init__(self) -> None:
        if self.provider not in PROVIDER_CHOICES and not self.provider.startswith("openvino:"):
            raise UsageError(f"unknown provider {self.provider!r}",
                             f"choose one of {', '.join(PROVIDER_CHOICES)} "
                             "(or openvino:DEVICE, a device 'leukoedge doctor' lists)")
        if self.precision not in PRECISION_CHOICES:
            raise UsageError(f"unknown precision {self.precision!r}",
                             f"choose one of {', '.join(PRECISION_CHOICES)}")
        if self.precision == "bf16" and not self.openvino:
            raise UsageError(f"--precision bf16 runs on --provider openvino only, not "
                             f"{self.provider}", "add --provider openvino")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")

    @property
    def openvino(self) -> bool:
        """Whether the model runs on the OpenVINO runtime (never chosen by ``auto``)."""
        return self.provider == "openvino" or self.provider.startswith("openvino:")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _provider_list(cfg: SessionConfig, want: str) -> list[Any]:
    cuda = ("CUDAExecutionProvider", {
        "device_id": cfg.device_id,
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": "1",
    })
    if not cfg.cuda_tf32:  # onnxruntime's default is TF32 on (Ampere and later GPUs)
        cuda[1]["use_tf32"] = "0"
    cpu = "CPUExecutionProvider"
    if want == "tensorrt":
        cfg.trt_cache.mkdir(parents=True, exist_ok=True)
        trt = ("TensorrtExecutionProvider", {
            "device_id": cfg.device_id,
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cfg.trt_cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cfg.trt_cache),
            "trt_fp16_enable": "True" if cfg.trt_fp16 else "False",
        })
        return [trt, cuda, cpu]
    if want == "cuda":
        return [cuda, cpu]
    return [cpu]


@dataclass
class Model:
    """A loaded, verified model: spec, session, provider actually in use."""

    path: Path
    spec: ModelSpec
    session: Any
    provider: str  # cpu | cuda | tensorrt | openvino, as verified
    input_name: str
    output_name: str
    notes: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    device_id: int = 0
    #: the graph's output names by the spec's names (``{"logit": ..., "features": ...}``)
    outputs: dict[str, str] = field(default_factory=dict)
    #: the spec's drift statistics (None: the model carries none; rows get no score)
    drift: DriftStats | None = None
    #: f32 or bf16 (OpenVINO's compiled precision; onnxruntime runs the graph's own)
    precision: str = "f32"
    #: what the runtime raises when a graph fails while running (empty: onnxruntime's)
    run_errors: tuple[type[BaseException], ...] = ()

    def run(self, batch: np.ndarray, names: tuple[str, ...] = ("logit",)
            ) -> dict[str, np.ndarray]:
        """Run uint8 ``[N, H, W, 3]`` images; return the outputs the spec calls ``names``
        (only those are computed and copied), as arrays of the graph's own dtype."""
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"expected uint8 [N,H,W,3], got {batch.dtype} {batch.shape}")
        graph_names = [self.outputs.get(n, self.output_name if n == "logit" else n)
                       for n in names]
        try:
            if self.provider in ("cuda", "tensorrt"):
                io = self.session.io_binding()
                io.bind_cpu_input(self.input_name, np.ascontiguousarray(batch))
                for g in graph_names:
                    io.bind_output(g, "cuda", self.device_id)
                self.session.run_with_iobinding(io)
                got = io.copy_outputs_to_cpu()
            else:
                got = self.session.run(graph_names, {self.input_name: batch})
        except (self.run_errors or ort_errors(import_ort())) as exc:
            raise ModelError(f"{self.path}: the model failed while running "
                             f"({first_line(exc)})",
                             "the graph does not run on a valid input; re-export it") from exc
        return {n: np.asarray(a) for n, a in zip(names, got)}

    @property
    def has_cam(self) -> bool:
        """Whether the graph has a heatmap output (``export --cam``)."""
        return "cam" in self.spec.outputs

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``[N]`` and, when the model carries drift statistics, each image's
        drift score ``[N]`` (:mod:`leukoedge.drift`); else None."""
        logits, scores, _ = self.predict_all(batch, cam=False)
        return logits, scores

    def predict_all(self, batch: np.ndarray, cam: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """:meth:`predict`, and with ``cam`` the heatmaps float32 ``[N, h, w]`` from the
        same run (a model without a ``cam`` output is a UsageError)."""
        if cam and not self.has_cam:
            raise UsageError(f"{self.path} has no heatmap output",
                             "export the model with 'leukoedge export --cam'")
        extra = (*(self.drift.outputs if self.drift is not None else ()),
                 *(("cam",) if cam else ()))
        if not extra:
            return self.logits(batch), None, None
        outs = self.run(batch, ("logit", *extra))
        logits = self._check_logits(outs["logit"], batch)
        for name in extra:
            a = outs[name]
            if a.ndim < 1 or a.shape[0] != batch.shape[0] or (name == "cam" and a.ndim != 3):
                raise ModelError(f"{self.path}: output {name!r} has shape {list(a.shape)} "
                                 f"for {batch.shape[0]} images", "re-export the model")
        maps = np.asarray(outs["cam"], dtype=np.float32) if cam else None
        if self.drift is None:
            return logits, None, maps
        try:
            scores = self.drift.score(cell_colour(batch), outs)
        except ValueError as exc:  # a feature width that disagrees with the statistics
            raise ModelError(f"{self.path}: its drift statistics do not fit its outputs "
                             f"({first_line(exc)})", "re-export the model") from exc
        return logits, scores, maps

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run uint8 ``[N, H, W, 3]`` images; return float32 logits ``[N]``."""
        return self._check_logits(self.run(batch)["logit"], batch)

    def _check_logits(self, out: np.ndarray, batch: np.ndarray) -> np.ndarray:
        logits = np.asarray(out, dtype=np.float32)
        if logits.size != batch.shape[0]:
            raise ModelError(f"{self.path}: the model returned {logits.size} values for "
                             f"{batch.shape[0]} images; a leukoedge model returns one logit "
                             "per image", "re-export it with 'leukoedge export'")
        return logits.reshape(batch.shape[0])

    def warm_up(self, batch_size: int) -> None:
        s = self.spec.input_size
        self.logits(np.zeros((batch_size, s, s, 3), dtype=np.uint8))


def read_spec_from_metadata(meta: dict[str, str], where: str) -> ModelSpec:
    raw = meta.get(SPEC_KEY)
    if raw is None:
        raise SpecError(f"{where}: not a leukoedge model (no '{SPEC_KEY}' metadata)",
                        "export it with 'leukoedge export', which embeds the ModelSpec")
    try:
        return ModelSpec.from_json(raw)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc.message}", exc.hint) from exc


def check_graph(spec: ModelSpec, inputs: list[Any], outputs: list[Any], where: str) -> None:
    """The graph must take what the spec says: uint8 [N, S, S, 3], one logit per image
    first, then the further outputs ``spec.outputs`` names (cam [N, h, w], features
    [N, d]; names this release does not know are not checked, and never read)."""
    if len(inputs) != 1:
        raise SpecError(f"{where}: model has {len(inputs)} inputs; a leukoedge model has one")
    if len(outputs) < 1:
        raise SpecError(f"{where}: model has no output")
    if len(outputs) != len(spec.outputs):
        raise SpecError(f"{where}: the graph has {len(outputs)} output(s); its spec names "
                        f"{len(spec.outputs)} ({', '.join(spec.outputs)})",
                        "re-export the model, or fix the spec's 'outputs'")
    for name, o in list(zip(spec.outputs, outputs))[1:]:
        rank = {"cam": 3, "features": 2}.get(name)
        if rank is not None and len(list(o.shape)) != rank:
            raise SpecError(f"{where}: output '{o.name}' ({name}) has shape {list(o.shape)}; "
                            f"expected {rank} axes")
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(uint8)":
        raise SpecError(f"{where}: input '{inp.name}' is {inp.type}; the spec's layout "
                        f"{spec.input_layout} needs tensor(uint8)")
    shape = list(inp.shape)
    s = spec.input_size
    if len(shape) != 4 or shape[1:] != [s, s, 3]:
        raise SpecError(f"{where}: input shape {shape} disagrees with the spec "
                        f"(expects [N, {s}, {s}, 3])")
    if isinstance(shape[0], int) and shape[0] != 1:
        raise SpecError(f"{where}: input batch axis is fixed at {shape[0]}; expected dynamic")
    oshape = list(out.shape)
    if not (len(oshape) == 1 or (len(oshape) == 2 and oshape[1] == 1)):
        raise SpecError(f"{where}: output shape {oshape}; expected [N] (one logit per image)")
    if out.type not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        raise SpecError(f"{where}: output is {out.type}; expected a float logit")


def load_model(path: str | os.PathLike[str], config: SessionConfig | None = None) -> Model:
    """Open ``path`` on the asked-for provider, verified; check its spec against its graph.

    The steps: the file (:func:`_model_file`), the provider (:func:`choose_provider`), the
    session (:func:`session_options`, :func:`open_session`), the provider it really runs
    on (:func:`verify_provider`), the spec and interface (:func:`read_interface`)."""
    cfg = config or SessionConfig()
    p = _model_file(path)
    if cfg.openvino:
        return _load_openvino(p, cfg)
    ort = import_ort()
    want = choose_provider(ort, cfg.provider)
    notes: list[str] = []
    if want == "tensorrt":
        notes.append(f"TensorRT builds an engine per input shape on first use (minutes); "
                     f"cached in {cfg.trt_cache}")
    t0 = time.perf_counter()
    sess = open_session(ort, p, cfg, want)
    active, note = verify_provider(ort, sess, cfg.provider)
    if note is not None:
        notes.append(note)
    face = read_interface(ort_errors(ort), sess, str(p))
    return Model(
        path=p, spec=face.spec, session=sess, provider=active,
        input_name=face.input_name, output_name=face.output_name,
        notes=notes, load_seconds=time.perf_counter() - t0, device_id=cfg.device_id,
        outputs=face.outputs, drift=face.drift,
    )


def _load_openvino(p: Path, cfg: SessionConfig) -> Model:
    """:func:`load_model` on the OpenVINO runtime: the same file checks, spec and graph
    checks (:func:`read_interface`) through :class:`~leukoedge.ov_session.OVSession`; bf16
    only where the CPU has it and the model passed its gate (:mod:`leukoedge.bf16_gate`)."""
    from .ov_session import bf16_problem, import_ov, open_ov_session, ov_errors

    ov = import_ov()
    if cfg.precision == "bf16":
        problem = bf16_problem(ov)
        if problem is not None:
            raise ProviderError(f"--precision bf16 cannot run here: {problem}",
                                "run in f32 (the default)")
        if cfg.bf16_gate:
            _check_bf16_gate(ov, p)
    t0 = time.perf_counter()
    try:
        sess = open_ov_session(p, cfg.provider, cfg.precision, cfg.threads or cores())
    except ov_errors() as exc:
        raise ModelError(f"{p}: cannot load as an ONNX model ({first_line(exc)})",
                         "re-export it with 'leukoedge export'") from exc
    face = read_interface(ov_errors(), sess, str(p))
    notes = [] if sess.device == "CPU" else [f"OpenVINO device {sess.device}"]
    if face.spec.precision == "int8":  # OpenVINO's own int8 kernels: measured to disagree
        notes.append("OpenVINO runs this int8 file with its own low-precision kernels; "
                     "check its calls first: 'leukoedge bench FP32.onnx --runtimes --int8 "
                     f"{p} --cells CELLS' (docs/performance.md, OpenVINO)")
    return Model(
        path=p, spec=face.spec, session=sess, provider="openvino",
        input_name=face.input_name, output_name=face.output_name,
        notes=notes,
        load_seconds=time.perf_counter() - t0, device_id=cfg.device_id,
        outputs=face.outputs, drift=face.drift, precision=cfg.precision,
        run_errors=ov_errors(),
    )


def _check_bf16_gate(ov: ModuleType, p: Path) -> None:
    """A :class:`ProviderError` unless the gate store holds a passed bf16 check for this
    file, this OpenVINO version and this CPU's bf16 instruction set."""
    from .bf16_gate import gate_problem, read_store, store_path
    from .data import file_sha256
    from .ov_session import cpu_bf16_isa, ov_version

    problem = gate_problem(read_store(store_path()), p, file_sha256(p), ov_version(ov),
                           cpu_bf16_isa() or "none")
    if problem is not None:
        raise ProviderError(problem)


def _model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, refused unless it is a regular file."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: model file not found")
    if p.is_dir():
        raise ModelError(f"{p}: is a folder, not an ONNX model file")
    if not p.is_file():  # a FIFO would block onnxruntime's read forever
        raise ModelError(f"{p}: not a regular file, not an ONNX model file")
    return p


def choose_provider(ort: ModuleType, asked: str) -> str:
    """The provider to open a session on: for ``auto`` CUDA when its library loads, else
    the CPU; an asked-for provider that cannot load here is a :class:`ProviderError`."""
    if asked == "auto":
        return "cuda" if provider_load_problem(ort, "cuda") is None else "cpu"
    problem = provider_load_problem(ort, asked)
    if problem is not None:
        raise ProviderError(f"--provider {asked} cannot run here: {problem}")
    return asked


def session_options(ort: ModuleType, cfg: SessionConfig) -> Any:
    """onnxruntime's ``SessionOptions`` for ``cfg``: threads, graph optimisation, quiet."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads or cores()
    so.inter_op_num_threads = 1
    if not cfg.spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.optimization]
    so.log_severity_level = 3
    return so


def open_session(ort: ModuleType, path: Path, cfg: SessionConfig, want: str) -> Any:
    """An ``InferenceSession`` of ``path`` on ``want`` (and its fallbacks); a file
    onnxruntime cannot load is a :class:`ModelError`."""
    try:
        # onnxruntime retries a failed session on the CPU and prints 4 lines to stdout;
        # on the CPU already, a retry is pointless and the lines are noise before our error
        return ort.InferenceSession(str(path), sess_options=session_options(ort, cfg),
                                    providers=_provider_list(cfg, want),
                                    enable_fallback=0 if want == "cpu" else 1)
    except ort_errors(ort) as exc:
        raise ModelError(f"{path}: cannot load as an ONNX model ({first_line(exc)})",
                         "re-export it with 'leukoedge export'") from exc


def verify_provider(ort: ModuleType, sess: Any, asked: str) -> tuple[str, str | None]:
    """The provider the session really runs on (``cpu``, ``cuda``, ``tensorrt``), read
    from its own ``get_providers()``, and a note when ``auto`` ended on the CPU. A GPU
    provider asked for by name that the session does not use is a :class:`ProviderError`."""
    got = sess.get_providers()
    active = {v: k for k, v in _ORT_NAMES.items()}.get(got[0], got[0])
    if asked in ("cuda", "tensorrt") and _ORT_NAMES[asked] not in got:
        raise ProviderError(
            f"--provider {asked} was asked for but the session runs on {got[0]}",
            "run 'leukoedge doctor' to see why the GPU provider does not load")
    if asked == "auto" and active == "cpu":
        reason = provider_load_problem(ort, "cuda") or "the CUDA provider did not start"
        return active, f"provider auto: running on the CPU ({reason.split(';')[0]})"
    return active, None


@dataclass(frozen=True)
class Interface:
    """What :func:`read_interface` read from a session: the spec, checked against the
    graph, the graph's names and the spec's drift statistics."""

    spec: ModelSpec
    input_name: str
    output_name: str
    outputs: dict[str, str]  # the graph's output names by the spec's names
    drift: DriftStats | None


def read_interface(errors: tuple[type[BaseException], ...], sess: Any, where: str
                   ) -> Interface:
    """The session's spec (from its metadata) checked against its inputs and outputs
    (``errors``: what the session's runtime raises)."""
    # Metadata, names, types and shapes are decoded lazily: invalid UTF-8 in any of them
    # raises UnicodeDecodeError here, not when the session is created.
    try:
        meta = sess.get_modelmeta().custom_metadata_map
        spec = read_spec_from_metadata(meta, where)
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        check_graph(spec, inputs, outputs, where)
        input_name, output_name = inputs[0].name, outputs[0].name
        names = {n: o.name for n, o in zip(spec.outputs, outputs)}
        shapes = {n: list(o.shape) for n, o in zip(spec.outputs, outputs)}
    except errors as exc:
        raise ModelError(f"{where}: cannot read the model's metadata or interface "
                         f"({first_line(exc)})", "re-export it with 'leukoedge export'") \
            from exc
    return Interface(spec, input_name, output_name, names, _drift_of(spec, shapes, where))


def _drift_of(spec: ModelSpec, shapes: dict[str, list[Any]], where: str) -> DriftStats | None:
    """The spec's drift statistics, checked against the widths of the outputs they use."""
    try:
        drift = from_spec(spec)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc.message}", exc.hint) from exc
    if drift is None:
        return None
    for c in drift.components:
        shape = shapes.get(c.name)
        if shape and isinstance(shape[-1], int) and shape[-1] != c.gaussian.dim:
            raise SpecError(f"{where}: output {c.name!r} has {shape[-1]} values per image; "
                            f"its drift statistics describe {c.gaussian.dim}",
                            "re-export the model")
    return drift


def newest_model(folder: Path) -> Path:
    """The most recently modified ``.onnx`` file in ``folder``."""
    models = sorted(folder.glob("*.onnx"), key=lambda q: (q.stat().st_mtime, q.name)) \
        if folder.is_dir() else []
    if not models:
        raise ModelError(f"no model given and none found in {folder}/",
                         "pass --model FILE.onnx, or train and export one: "
                         "'leukoedge train scratch DATA' then 'leukoedge export --to onnx'")
    return models[-1]


def choose_model(exported: Path | None = None) -> tuple[Path, str]:
    """No ``--model``: the newest model in ``exported/``, else the shipped model; with the
    line that says which (ModelError when there is none anywhere, saying what to do)."""
    from .models import default_model
    from .spec import EXPORTED

    folder = EXPORTED if exported is None else exported
    if any(folder.glob("*.onnx")):
        path = newest_model(folder)
        return path, f"using the newest model in {folder}/: {path.name}"
    shipped = default_model()
    if shipped is None:
        return newest_model(folder), ""  # raises: no model anywhere, says what to do
    return shipped, (f"using the shipped model {shipped} (trained on real C-NMC cells; "
                     "'leukoedge info' describes it)")
