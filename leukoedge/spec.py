"""ModelSpec: the contract between training and deployment, carried inside the ONNX file.

One versioned JSON value under the metadata key ``leukoedge.spec``. ``classify`` reads
everything it needs from it (input size, crop, labels, threshold, temperature) and refuses
a model whose spec is missing, malformed, too large, or of a newer schema version. The spec
is parsed as JSON with a size cap; it is never evaluated, and no file path is ever taken
from it.

Schema versions and the forward-compatibility rule (docs/design.md, "The ModelSpec"):

- v1: the fields up to ``precision``. v2 adds ``training``, ``temperature``,
  ``calibration``, ``outputs``, ``tta`` and ``extensions``, all optional with defaults.
- A spec is written with the *lowest* version that holds it: while every v2 field is at
  its default, they are left out and ``schema_version`` is 1, so releases that read only
  v1 still run the model. A v1 file is read as v2 with the defaults.
- A reader refuses a higher ``schema_version`` ("upgrade leukoedge"): a new version is for
  a change an older reader must not ignore. Unknown top-level fields are refused too (a
  misspelt field must not pass silently). Information a reader may ignore goes under
  ``extensions`` (namespaced keys, e.g. ``"acme.qc"``): kept and round-tripped, never
  interpreted. Output names after ``"logit"`` that a reader does not know, and ``tta``
  values it does not know, are accepted: both happen inside the graph, and the reader uses
  only the logit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError, first_line

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

SPEC_KEY = "leukoedge.spec"
SCHEMA_VERSION = 2  # the newest this release reads and writes
MAX_SPEC_BYTES = 64 * 1024

# Defined here only; the rest of the runtime and the training plugin import them.
#: The class names by class id: 0 = HEM, 1 = ALL (the positive class).
LABELS = ("hem", "all")
#: Numeric precision of the graph's weights and arithmetic (the uint8 input is the same).
PRECISIONS = ("fp32", "fp16", "int8")
#: The ONNX opset (``ai.onnx`` domain) of the graphs leukoedge builds: export's default.
ONNX_OPSET = 18
#: Where ``export`` writes models and, with no ``--model``, the runtime looks for them
#: (relative to the working directory).
EXPORTED = Path("exported")

INTERPOLATIONS = ("bilinear", "bicubic", "box", "lanczos", "nearest")
INPUT_LAYOUT = "NHWC-uint8-RGB"
#: Graph outputs this release knows: the ALL logit ``[N]`` (always first), a class
#: activation heatmap ``[N, h, w]``, an embedding ``[N, d]``.
KNOWN_OUTPUTS = ("logit", "cam", "features")
#: Fields added in schema version 2, with their defaults (left out of the JSON at default).
V2_DEFAULTS: dict[str, Any] = {"training": {}, "temperature": 1.0, "calibration": {},
                               "outputs": ("logit",), "tta": "none", "extensions": {}}
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_MAX_DEPTH = 16


@dataclass(frozen=True)
class ModelSpec:
    """Everything a deployment needs to know about a model, and where it came from.

    The graph takes ``image``: uint8 ``[N, H, W, 3]`` RGB with ``H = W = input_size`` and
    does the cast, scaling (``/255``), normalisation (``mean``/``std``, 0-1 scale) and
    transpose itself. Its first output is the logit of the positive class ``[N]``; more
    outputs, in the order ``outputs`` names them, may follow. The probability is
    ``sigmoid(logit / temperature)`` (:meth:`probability`, the one place it is computed)
    and the label is positive when the probability is >= ``threshold``.

    Host-side preprocessing is fully described by ``input_size``, ``crop_fraction`` (the
    central square kept, as a fraction of the shorter side, before resizing) and
    ``interpolation``; :func:`leukoedge.preprocess.preprocess` implements it.
    """

    architecture: str
    input_size: int
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
    # -- schema version 2 ---------------------------------------------------------------
    #: provenance of a shipped model: ``patients`` (list of ids), ``recipe`` (object: name
    #: and settings), ``cv`` (object: cross-validated metrics, folds, protocol), ``data``
    #: (a description); other keys allowed. A JSON object, bounded by the spec's size cap.
    training: dict[str, Any] = field(default_factory=dict)
    #: P(ALL) = sigmoid(logit / temperature); > 0. 1.0 = the raw model.
    temperature: float = 1.0
    #: how temperature and threshold were chosen: ``method``, ``target``,
    #: ``data_fingerprint``, ``patients``; other keys allowed.
    calibration: dict[str, Any] = field(default_factory=dict)
    #: the graph's outputs, in order; the first is always "logit" (see KNOWN_OUTPUTS).
    outputs: tuple[str, ...] = ("logit",)
    #: test-time symmetries applied inside the graph ("none", "d1", "c4", "d4").
    tta: str = "none"
    #: information a reader may ignore, under namespaced keys; kept, never interpreted.
    extensions: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SpecError("invalid ModelSpec: " + "; ".join(problems))

    # -- derived values -------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        """The lowest schema version that holds this spec (1 while every v2 field is at
        its default), which is what :meth:`to_json` writes."""
        v2 = any(getattr(self, n) != d for n, d in V2_DEFAULTS.items())
        return 2 if v2 else 1

    def probability(self, logits: npt.ArrayLike) -> np.ndarray:
        """P(ALL) of each logit: ``sigmoid(logit / temperature)``, in float64.

        The one function that turns logits into probabilities: classify, evaluate and the
        reports all go through it, so the temperature is applied exactly once.
        """
        import numpy as np

        x = np.asarray(logits, dtype=np.float64) / self.temperature
        out = np.empty_like(x)
        pos = x >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
        ex = np.exp(x[~pos])
        out[~pos] = ex / (1.0 + ex)
        return out

    @property
    def logit_threshold(self) -> float:
        """The raw logit at which :meth:`probability` equals ``threshold``: a logit at or
        above it is labelled positive (comparing logits avoids rounding near 0 and 1)."""
        t = self.threshold
        if t <= 0.0:
            return -math.inf
        if t >= 1.0:
            return math.inf
        return self.temperature * math.log(t / (1.0 - t))

    def with_updates(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON object, v2 fields at their default and fp32 precision left out."""
        d = asdict(self)
        d["schema_version"] = self.schema_version
        d["labels"] = list(self.labels)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["outputs"] = list(self.outputs)
        if self.precision == "fp32":
            del d["precision"]
        for name, default in V2_DEFAULTS.items():
            if getattr(self, name) == default:
                del d[name]
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
            raise SpecError(f"model spec is not valid JSON: {first_line(exc)}") from exc
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
        known = {f.name for f in fields(cls)} | {"schema_version"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"model spec has unknown fields: {', '.join(unknown[:5])}",
                            "a field is refused unless this leukoedge knows it; information "
                            "a reader may ignore belongs under 'extensions'")
        too_new = [n for n in V2_DEFAULTS if n in raw] if version < 2 else []
        if too_new:
            raise SpecError(f"model spec says schema version {version} but has "
                            f"{', '.join(too_new)}, which need version 2")
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
    if isinstance(x, bool):
        return False
    return isinstance(x, int) or (isinstance(x, float) and math.isfinite(x))


def _coerce(name: str, value: Any) -> Any:
    """Check JSON types field by field; turn lists into the tuples the dataclass holds."""
    if name in ("labels", "mean", "std", "outputs"):
        if not isinstance(value, list):
            raise SpecError(f"model spec field {name} must be a list")
        return tuple(value)
    if name in ("metrics", "training", "calibration", "extensions"):
        if not isinstance(value, dict):
            raise SpecError(f"model spec field {name} must be an object")
        return dict(value)
    return value


def _json_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not plain JSON (str keys, finite numbers, bounded depth), or None."""
    if depth > _MAX_DEPTH:
        return f"is nested deeper than {_MAX_DEPTH} levels"
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, (int, float)):
        return None if _is_num(value) else "holds a number that is not finite"
    if isinstance(value, (list, tuple)):
        items: list[Any] = list(value)
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "has a key that is not a string"
        items = list(value.values())
    else:
        return f"holds a {type(value).__name__}, which is not JSON"
    for v in items:
        problem = _json_problem(v, depth + 1)
        if problem:
            return problem
    return None


def _str_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


#: known keys of the free-form objects, and the check each must pass
_KNOWN_KEYS: dict[str, dict[str, tuple[str, Any]]] = {
    "training": {"patients": ("a list of strings", _str_list),
                 "recipe": ("an object", lambda x: isinstance(x, dict)),
                 "cv": ("an object", lambda x: isinstance(x, dict)),
                 "data": ("a string", lambda x: isinstance(x, str)),
                 "weights": ("an object", lambda x: isinstance(x, dict))},
    "calibration": {"method": ("a string", lambda x: isinstance(x, str)),
                    "target": ("a string", lambda x: isinstance(x, str)),
                    "data_fingerprint": ("a string", lambda x: isinstance(x, str)),
                    "patients": ("a list of strings", _str_list)},
    "extensions": {},
}


def _v2_problems(s: ModelSpec) -> list[str]:
    p: list[str] = []
    if not _is_num(s.temperature) or s.temperature <= 0:
        p.append("temperature must be a finite number > 0")
    outs = s.outputs
    if (not isinstance(outs, tuple) or not 1 <= len(outs) <= 16
            or not all(isinstance(o, str) and _NAME_RE.match(o) for o in outs)):
        p.append("outputs must be 1 to 16 names (lowercase letters, digits, _)")
    elif outs[0] != "logit" or len(set(outs)) != len(outs):
        p.append("outputs must start with 'logit' and name each output once")
    if not isinstance(s.tta, str) or not _NAME_RE.match(s.tta):
        p.append("tta must be a name such as 'none' or 'd4'")
    for name, keys in _KNOWN_KEYS.items():
        value = getattr(s, name)
        if not isinstance(value, dict):
            p.append(f"{name} must be a JSON object")
            continue
        problem = _json_problem(value)
        if problem:
            p.append(f"{name} {problem}")
            continue
        for key, (what, ok) in keys.items():
            if key in value and not ok(value[key]):
                p.append(f"{name}.{key} must be {what}")
    if not p and isinstance(s.extensions, dict) and "leukoedge.drift" in s.extensions:
        # this project's own extension: checked by the releases that know it, ignored by
        # older ones (leukoedge.drift; docs/design.md, "The ModelSpec")
        from .drift import check

        try:
            check(s)
        except SpecError as exc:
            p.append(exc.message)
    return p


def _problems(s: ModelSpec) -> list[str]:
    p: list[str] = []
    str_fields = ("architecture", "positive", "interpolation", "input_layout",
                  "data_fingerprint", "created_at", "tool_version", "notes", "precision")
    for n in str_fields:
        if not isinstance(getattr(s, n), str):
            p.append(f"{n} must be a string")
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
    p.extend(_v2_problems(s))
    if not p:
        size = len(s.to_json().encode("utf-8"))
        if size > MAX_SPEC_BYTES:
            p.append(f"the spec would be {size} bytes of JSON; at most {MAX_SPEC_BYTES}")
    return p
