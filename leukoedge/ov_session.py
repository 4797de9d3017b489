"""The OpenVINO runtime behind the one session interface (``--provider openvino``).

:class:`OVSession` answers the calls :mod:`leukoedge.session` makes of an onnxruntime
``InferenceSession`` (``get_inputs``, ``get_outputs``, ``get_modelmeta``,
``get_providers``, ``run``), so the spec is read from the same ONNX file, the same graph
checks apply, and everything downstream of :class:`~leukoedge.session.Model` (rows,
resume, drift, heatmaps, the service) is unchanged. OpenVINO reads the ONNX file itself
(its ONNX front end keeps the file's ``metadata_props`` under ``rt_info["framework"]``).

Precision is a property of the compiled model and is always set explicitly:
``INFERENCE_PRECISION_HINT`` f32 unless bf16 was asked for (bf16 is the CPU plugin's own
default where the hardware has it, so "exact" must be asked for). bf16 needs the CPU's
``amx_bf16`` or ``avx512_bf16`` (:func:`cpu_bf16_isa`) and a passed gate
(:mod:`leukoedge.bf16_gate`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import MissingExtraError, ProviderError

PIP_HINT = "pip install 'leukoedge[openvino]'"
#: OpenVINO element type names -> onnxruntime's type strings (what check_graph reads)
_TYPES = {"u8": "tensor(uint8)", "f32": "tensor(float)", "f16": "tensor(float16)",
          "f64": "tensor(double)", "i64": "tensor(int64)", "i32": "tensor(int32)",
          "i8": "tensor(int8)", "boolean": "tensor(bool)"}


def import_ov() -> ModuleType:
    """Import the OpenVINO runtime, or say which extra installs it."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingExtraError("--provider openvino needs the OpenVINO runtime, which is "
                                "not installed", PIP_HINT) from exc
    module: ModuleType = ov
    return module


def ov_errors() -> tuple[type[BaseException], ...]:
    """What OpenVINO raises for a file it cannot read or a graph it cannot run (its
    exceptions derive from RuntimeError)."""
    return (RuntimeError, OSError, ValueError, TypeError)


def ov_version(ov: ModuleType) -> str:
    """The runtime's version without the build suffix, e.g. ``2026.4.1``."""
    return str(ov.__version__).split("-")[0]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as ``lscpu`` prints them (empty where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_isa(flags: set[str] | None = None) -> str | None:
    """The instruction set OpenVINO's CPU plugin runs bf16 on here: ``amx_bf16`` (AMX
    tiles, preferred when present), ``avx512_bf16``, or None (no bf16 hardware). AMX and
    AVX512-BF16 kernels round differently, so a bf16 gate is bound to this name."""
    f = cpu_flags() if flags is None else flags
    for isa in ("amx_bf16", "avx512_bf16"):
        if isa in f:
            return isa
    return None


def bf16_problem(ov: ModuleType) -> str | None:
    """Why bf16 cannot run on OpenVINO's CPU device here, or None when it can."""
    isa = cpu_bf16_isa()
    if isa is None:
        return "this CPU has neither amx_bf16 nor avx512_bf16 (see the flags of 'lscpu')"
    try:
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except ov_errors() as exc:
        return f"OpenVINO's CPU device does not answer ({exc})"
    if "BF16" not in [str(c) for c in caps]:
        return f"the CPU has {isa} but OpenVINO's CPU device does not list BF16"
    return None


def device_of(provider: str) -> str:
    """``openvino`` -> ``CPU``; ``openvino:GPU`` -> ``GPU`` (any device doctor lists)."""
    _, _, dev = provider.partition(":")
    return dev.upper() or "CPU"


@dataclass(frozen=True)
class Port:
    """An input or output as onnxruntime's ``NodeArg`` shows it: name, type, shape."""

    name: str
    type: str
    shape: list[Any]


@dataclass(frozen=True)
class Meta:
    custom_metadata_map: dict[str, str]


class OVSession:
    """A compiled OpenVINO model behind onnxruntime's session calls. One infer request
    per thread (a request is not thread-safe; the compiled model is)."""

    def __init__(self, ov: ModuleType, path: Path, device: str, precision: str,
                 threads: int) -> None:
        core = ov.Core()
        model = core.read_model(str(path))
        self._inputs = [_port(p) for p in model.inputs]
        self._outputs = [_port(p) for p in model.outputs]
        self._meta = _metadata(model)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision,
                                  "PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
            config["NUM_STREAMS"] = 1
        self.compiled = core.compile_model(model, device, config)
        self.device = device
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = str(hint.get_type_name() if hasattr(hint, "get_type_name") else hint)
        self._index = {p.name: i for i, p in enumerate(self._outputs)}
        self._local = threading.local()

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def get_modelmeta(self) -> Meta:
        return self._meta

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        req = getattr(self._local, "req", None)
        if req is None:
            req = self._local.req = self.compiled.create_infer_request()
        (x,) = feed.values()
        req.infer({0: np.ascontiguousarray(x)})
        idx = range(len(self._outputs)) if names is None else [self._index[n] for n in names]
        return [np.array(req.get_output_tensor(i).data, copy=True) for i in idx]


def _port(p: Any) -> Port:
    shape = [d.get_length() if d.is_static else None for d in p.get_partial_shape()]
    et = p.get_element_type().get_type_name()
    return Port(p.get_any_name(), _TYPES.get(et, f"tensor({et})"), shape)


def _metadata(model: Any) -> Meta:
    """The ONNX file's ``metadata_props`` as OpenVINO's ONNX front end kept them."""
    rt = model.get_rt_info()
    if "framework" not in rt:
        return Meta({})
    fw = rt["framework"]
    items = fw.items() if isinstance(fw, dict) else fw.astype(dict).items()
    return Meta({str(k): v.astype(str) if hasattr(v, "astype") else str(v)
                 for k, v in items})


def open_ov_session(path: Path, provider: str, precision: str, threads: int) -> OVSession:
    """:class:`OVSession` of ``path``; a device OpenVINO does not have here is a
    :class:`ProviderError`. A file OpenVINO cannot read raises one of :func:`ov_errors`."""
    ov = import_ov()
    device = device_of(provider)
    have = list(ov.Core().available_devices)
    if device not in have:
        raise ProviderError(f"--provider {provider}: OpenVINO has no device {device} here "
                            f"(it has {', '.join(have) or 'none'})",
                            "run 'leukoedge doctor' to see the OpenVINO devices")
    return OVSession(ov, path, device, precision, threads)


def ov_status() -> dict[str, str]:
    """What ``doctor`` shows of OpenVINO: version, devices, bf16 (and why not); or why
    it is unavailable."""
    try:
        ov = import_ov()
    except MissingExtraError as exc:
        return {"openvino": f"{exc.message}; {exc.hint}"}
    core = ov.Core()
    devices = []
    for d in core.available_devices:
        try:
            name = core.get_property(d, "FULL_DEVICE_NAME")
        except ov_errors():
            name = "?"
        devices.append(f"{d} ({name})")
    problem = bf16_problem(ov)
    return {"openvino": "ok", "openvino version": ov_version(ov),
            "openvino devices": ", ".join(devices) or "none",
            "openvino bf16": f"available ({cpu_bf16_isa()})" if problem is None
            else f"no: {problem}"}
