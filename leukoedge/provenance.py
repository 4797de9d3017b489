"""Which model made a predictions file: the ``<out>.meta.json`` sidecar ``classify`` writes.

A predictions file's rows carry logits and labels but not the model; ``report`` and
``evaluate --from-predictions`` need its threshold, temperature, drift flag and patient
rule to show the same calls as ``classify``. The sidecar holds them with the model file's
sha256. Files without one (older runs, other tools) stay readable: without ``--model`` the
scores are shown and no patient is flagged for drift ("cannot flag"), never with another
threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .data import file_sha256
from .errors import DataError, SpecError, first_line
from .output import atomic_write_text, escape_path
from .patient import PatientRule, from_spec, parse

if TYPE_CHECKING:
    from .session import Model

SUFFIX = ".meta.json"
FORMAT = 1
MAX_BYTES = 256 * 1024


def meta_path(predictions: Path) -> Path:
    """``predictions.csv`` -> ``predictions.csv.meta.json``."""
    return predictions.with_name(predictions.name + SUFFIX)


@dataclass(frozen=True)
class PredictionsMeta:
    """What the patient summary needs of the model that wrote a predictions file."""

    model: str  # the model file's name
    model_sha256: str
    threshold: float
    temperature: float
    drift_flag: float | None  # None: the model has no drift statistics
    rule: PatientRule  # the model's patient rule (its spec's, or the default)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "written_by": f"leukoedge {__version__} classify",
                "model": self.model, "model_sha256": self.model_sha256,
                "threshold": self.threshold, "temperature": self.temperature,
                "drift_flag": self.drift_flag, "patient_rule": self.rule.to_json()}


def of_model(m: Model) -> PredictionsMeta:
    """The sidecar of rows made by ``m`` (its threshold as given, ``--threshold``
    included)."""
    try:
        sha = file_sha256(m.path)
    except OSError as exc:
        raise DataError(f"cannot read {escape_path(m.path)}: {first_line(exc)}") from exc
    return PredictionsMeta(m.path.name, sha, m.spec.threshold, m.spec.temperature,
                           None if m.drift is None else m.drift.patient_flag,
                           from_spec(m.spec))


def write_meta(predictions: Path, meta: PredictionsMeta) -> None:
    atomic_write_text(meta_path(predictions), json.dumps(meta.to_json(), indent=1) + "\n")


def _finite(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def read_meta(predictions: Path) -> PredictionsMeta | None:
    """The sidecar of ``predictions``, or None when there is none; DataError if it is
    there but malformed (one line naming it)."""
    path = meta_path(predictions)
    if not path.is_file():
        return None
    where = escape_path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{where}: larger than {MAX_BYTES} bytes")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{where}: not readable JSON ({first_line(exc)})",
                        "delete it to read the predictions without it") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{where}: not a leukoedge predictions sidecar of format {FORMAT}")
    sha, flag = raw.get("model_sha256"), raw.get("drift_flag")
    ok = (isinstance(raw.get("model"), str) and isinstance(sha, str) and len(sha) == 64
          and _finite(raw.get("threshold")) and 0 <= raw["threshold"] <= 1
          and _finite(raw.get("temperature")) and raw["temperature"] > 0
          and (flag is None or (_finite(flag) and flag > 0)))
    if not ok:
        raise DataError(f"{where}: malformed (model, model_sha256, threshold, temperature "
                        "or drift_flag)", "delete it to read the predictions without it")
    try:
        rule = parse(raw.get("patient_rule"))
    except SpecError as exc:
        raise DataError(f"{where}: {exc.message}") from exc
    return PredictionsMeta(raw["model"], str(sha), float(raw["threshold"]),
                           float(raw["temperature"]), None if flag is None else float(flag),
                           rule)


def record_model(out_file: Path, m: Model, resumed: bool) -> str | None:
    """``<out>.meta.json``: which model wrote the rows (docs/usage.md). A resumed file that
    has none keeps none (its first rows came from a model nobody recorded: the line to say
    so is returned); one written by another model is refused (UsageError)."""
    from .errors import UsageError

    meta = of_model(m)
    if resumed:
        old = read_meta(out_file)
        if old is None:
            return (f"{out_file} has no {meta_path(out_file).name}: its model stays "
                    "unrecorded (report and evaluate will need --model)")
        if old.model_sha256 != meta.model_sha256:
            raise UsageError(f"{out_file} was written by {old.model} (sha256 "
                             f"{old.model_sha256[:12]}...), not by {m.path.name}",
                             "resume with the same --model, or write a new --out")
    write_meta(out_file, meta)
    return None
