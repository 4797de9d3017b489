"""ModelSpec: the contract between training and deployment, carried inside the ONNX file.

One versioned JSON value under the metadata key ``leukoedge.spec``. ``classify`` reads
everything it needs from it (input size, crop, labels, threshold) and refuses a model whose
spec is missing, malformed, too large, or of a newer schema version. The spec is parsed as
JSON with a size cap; it is never evaluated, and no file path is ever taken from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import SpecError

SPEC_KEY = "leukoedge.spec"
SCHEMA_VERSION = 1
MAX_SPEC_BYTES = 64 * 1024

LABELS = ("hem", "all")  # index = class id; 1 = ALL (positive)
INTERPOLATIONS = ("bilinear", "bicubic", "box", "lanczos", "nearest")
INPUT_LAYOUT = "NHWC-uint8-RGB"
#: Numeric precision of the graph's weights and arithmetic (the uint8 input is the same).
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ModelSpec:
    """Everything a deployment needs to know about a model, and where it came from.

    The graph takes ``image``: uint8 ``[N, H, W, 3]`` RGB with ``H = W = input_size`` and
    does the cast, scaling (``/255``), normalisation (``mean``/``std``, 0-1 scale) and
    transpose itself. It returns the logit of the positive class ``[N]``. The probability is
    ``sigmoid(logit)`` and the label is positive when the probability is >= ``threshold``.

    Host-side preprocessing is fully described by ``input_size``, ``crop_fraction`` (the
    central square kept, as a fraction of the shorter side, before resizing) and
    ``interpolation``; :func:`leukoedge.preprocess.preprocess` implements it.
    """

    architecture: str
    input_size: int
    schema_version: int = SCHEMA_VERSION
    labels: tuple[str, str] = LABELS
    positive: str = "all"
    crop_fraction: float = 1.0
    interpolation: str = "bilinear"
    input_layout: str = INPUT_LAYOUT
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    threshold: float = 0.5
    data_fingerprint: str = ""
    train_images: int = 0
    created_at: str = ""
    tool_version: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    #: fp32 (export default), fp16 (for GPUs) or int8 (static QDQ). Omitted from the JSON
    #: when fp32, so an fp32 model stays readable by a leukoedge that predates the field.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SpecError("invalid ModelSpec: " + "; ".join(problems))

    # -- derived values -------------------------------------------------------------
    @property
    def positive_index(self) -> int:
        return self.labels.index(self.positive)

    @property
    def logit_threshold(self) -> float:
        """The threshold on the logit equivalent to ``threshold`` on the probability."""
        t = self.threshold
        if t <= 0.0:
            return -math.inf
        if t >= 1.0:
            return math.inf
        return math.log(t / (1.0 - t))

    def with_updates(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.precision == "fp32":
            del d["precision"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse a spec, refusing anything that is not a valid spec of a known schema."""
        if isinstance(text, bytes):
            if len(text) > MAX_SPEC_BYTES:  # before decoding a possibly huge value
                raise SpecError(f"model spec is larger than {MAX_SPEC_BYTES} bytes")
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SpecError("model spec is not UTF-8 text") from exc
        if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
            raise SpecError(f"model spec is larger than {MAX_SPEC_BYTES} bytes")
        try:
            raw = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise SpecError(f"model spec is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        if not isinstance(raw, dict):
            raise SpecError("model spec must be a JSON object")
        version = raw.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise SpecError("model spec has no integer schema_version")
        if version > SCHEMA_VERSION:
            raise SpecError(
                f"model spec has schema version {version}; this leukoedge reads up to "
                f"{SCHEMA_VERSION}",
                "upgrade leukoedge (pip install -U leukoedge) to use this model",
            )
        if version < 1:
            raise SpecError(f"model spec has an invalid schema version {version}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"model spec has unknown fields: {', '.join(unknown[:5])}")
        missing = [n for n in ("architecture", "input_size") if n not in raw]
        if missing:
            raise SpecError(f"model spec lacks {', '.join(missing)}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            kwargs[f.name] = _coerce(f.name, raw[f.name])
        return cls(**kwargs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _coerce(name: str, value: Any) -> Any:
    """Check JSON types field by field; turn lists into the tuples the dataclass holds."""
    if name in ("labels", "mean", "std"):
        if not isinstance(value, list):
            raise SpecError(f"model spec field {name} must be a list")
        return tuple(value)
    if name == "metrics":
        if not isinstance(value, dict):
            raise SpecError("model spec field metrics must be an object")
        return dict(value)
    return value


def _problems(s: ModelSpec) -> list[str]:
    p: list[str] = []
    str_fields = ("architecture", "positive", "interpolation", "input_layout",
                  "data_fingerprint", "created_at", "tool_version", "notes", "precision")
    for n in str_fields:
        if not isinstance(getattr(s, n), str):
            p.append(f"{n} must be a string")
    if not isinstance(s.schema_version, int) or isinstance(s.schema_version, bool):
        p.append("schema_version must be an integer")
    if isinstance(s.architecture, str) and not s.architecture:
        p.append("architecture is empty")
    if (not isinstance(s.input_size, int) or isinstance(s.input_size, bool)
            or not 8 <= s.input_size <= 4096):
        p.append("input_size must be an integer in 8..4096")
    if (not isinstance(s.labels, tuple) or len(s.labels) != 2
            or not all(isinstance(x, str) for x in s.labels)):
        p.append("labels must be two strings")
    elif tuple(s.labels) != LABELS:
        p.append(f"labels must be {list(LABELS)}, got {list(s.labels)}")
    if s.positive != "all":
        p.append("positive class must be 'all'")
    if not _is_num(s.crop_fraction) or not 0.05 <= s.crop_fraction <= 1.0:
        p.append("crop_fraction must be a number in 0.05..1")
    if s.interpolation not in INTERPOLATIONS:
        p.append(f"interpolation must be one of {', '.join(INTERPOLATIONS)}")
    if isinstance(s.precision, str) and s.precision not in PRECISIONS:
        p.append(f"precision must be one of {', '.join(PRECISIONS)}")
    if s.input_layout != INPUT_LAYOUT:
        p.append(f"input_layout must be {INPUT_LAYOUT}")
    for n in ("mean", "std"):
        v = getattr(s, n)
        if not isinstance(v, tuple) or len(v) != 3 or not all(_is_num(x) for x in v):
            p.append(f"{n} must be three finite numbers")
    if isinstance(s.std, tuple) and len(s.std) == 3 and any(
            _is_num(x) and x <= 0 for x in s.std):
        p.append("std must be positive")
    if not _is_num(s.threshold) or not 0.0 <= s.threshold <= 1.0:
        p.append("threshold must be a number in 0..1")
    if (not isinstance(s.train_images, int) or isinstance(s.train_images, bool)
            or s.train_images < 0):
        p.append("train_images must be a non-negative integer")
    if not isinstance(s.metrics, dict) or not all(
            isinstance(k, str) and _is_num(v) for k, v in s.metrics.items()):
        p.append("metrics must map names to finite numbers")
    return p
