from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from leukoedge.errors import SpecError
from leukoedge.spec import MAX_SPEC_BYTES, SCHEMA_VERSION, ModelSpec


def make(**kw: Any) -> ModelSpec:
    base: dict[str, Any] = {"architecture": "scratch", "input_size": 128}
    base.update(kw)
    return ModelSpec(**base)


def test_round_trip_keeps_every_field() -> None:
    s = make(mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), threshold=0.4,
             data_fingerprint="sha256:ab", train_images=10, metrics={"val_f1": 0.9})
    back = ModelSpec.from_json(s.to_json())
    assert back == s
    # nothing of v2 in it: written as v1, so releases that read only v1 still run it
    assert json.loads(s.to_json())["schema_version"] == 1


#: exactly what the previous release (schema 1 only) wrote for an int8 export
V1_FROM_PREVIOUS_RELEASE = (
    '{"architecture": "scratch", "created_at": "2026-11-20T10:00:00Z", "crop_fraction": 1.0, '
    '"data_fingerprint": "sha256:abababababababababababababababababababababababababababababab'
    'abab", "input_layout": "NHWC-uint8-RGB", "input_size": 128, "interpolation": "bilinear"'
    ', "labels": ["hem", "all"], "mean": [0.485, 0.456, 0.406], "metrics": {"epoch": 28.0, '
    '"val_accuracy": 0.91, "val_weighted_f1": 0.906}, "notes": "validation: split by patient'
    ', 1200 images", "positive": "all", "precision": "int8", "schema_version": 1, "std": '
    '[0.229, 0.224, 0.225], "threshold": 0.5, "tool_version": "0.1.0", "train_images": 9000}')
V1_KEYS = {"architecture", "created_at", "crop_fraction", "data_fingerprint", "input_layout",
           "input_size", "interpolation", "labels", "mean", "metrics", "notes", "positive",
           "schema_version", "std", "threshold", "tool_version", "train_images"}


def test_a_v1_spec_of_the_previous_release_loads_with_v2_defaults() -> None:
    s = ModelSpec.from_json(V1_FROM_PREVIOUS_RELEASE)
    assert (s.architecture, s.input_size, s.precision) == ("scratch", 128, "int8")
    assert s.metrics["val_weighted_f1"] == 0.906
    assert (s.training, s.temperature, s.calibration, s.outputs, s.tta, s.extensions) == (
        {}, 1.0, {}, ("logit",), "none", {})
    assert s.schema_version == 1
    # written again, it is the same JSON, byte for byte
    assert s.to_json() == V1_FROM_PREVIOUS_RELEASE


def test_a_spec_with_v2_defaults_only_is_written_as_v1() -> None:
    d = json.loads(make().to_json())
    assert set(d) == V1_KEYS and d["schema_version"] == 1
    # the same spec labelled 2 by another writer reads as the same spec
    d["schema_version"] = 2
    assert ModelSpec.from_dict(d) == make()


FULL_V2 = dict(
    training={"patients": ["UID_1", "UID_H2"], "recipe": {"name": "scratch-128",
                                                          "settings": {"epochs": 30}},
              "cv": {"folds": 5, "protocol": "grouped by patient",
                     "weighted_f1": {"mean": 0.88, "std": 0.02}},
              "data": "C-NMC 2019 training folds 0-2"},
    temperature=1.7,
    calibration={"method": "temperature scaling, NLL", "target": "out-of-fold logits",
                 "data_fingerprint": "sha256:cd", "patients": ["UID_3"]},
    outputs=("logit", "cam", "features"), tta="d4",
    extensions={"acme.qc": {"reviewed": True}},
)


def test_every_v2_field_round_trips_and_is_written_as_v2() -> None:
    s = make(**FULL_V2)
    d = json.loads(s.to_json())
    assert d["schema_version"] == SCHEMA_VERSION == 2
    assert d["outputs"] == ["logit", "cam", "features"] and d["temperature"] == 1.7
    assert ModelSpec.from_json(s.to_json()) == s
    for name, value in FULL_V2.items():  # each one alone makes it v2
        assert make(**{name: value}).schema_version == 2, name


def test_forward_compatibility_rule() -> None:
    """docs/design.md: a newer version and unknown fields are refused; extensions, unknown
    output names and unknown test-time symmetries are kept and ignored."""
    d = make().to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SpecError) as e:
        ModelSpec.from_dict(d)
    assert "upgrade" in str(e.value)
    d = make().to_dict()
    d["colour_model"] = "hsv"
    with pytest.raises(SpecError, match="unknown fields: colour_model") as e:
        ModelSpec.from_dict(d)
    assert "extensions" in str(e.value)
    later = make(extensions={"leukoedge.v3_hint": [1, 2], "acme.qc": {"ok": True}},
                 outputs=("logit", "saliency_v9"), tta="d8_scaled")
    back = ModelSpec.from_json(later.to_json())
    assert back.extensions == {"leukoedge.v3_hint": [1, 2], "acme.qc": {"ok": True}}
    assert back.outputs == ("logit", "saliency_v9") and back.tta == "d8_scaled"


def test_v2_fields_in_a_file_that_says_v1_are_refused() -> None:
    d = make().to_dict()
    d["temperature"] = 2.0
    with pytest.raises(SpecError, match="temperature, which need version 2"):
        ModelSpec.from_dict(d)


@pytest.mark.parametrize("change", [
    {"temperature": 0}, {"temperature": -1.0}, {"temperature": "1"}, {"temperature": True},
    {"outputs": []}, {"outputs": ["cam"]}, {"outputs": ["logit", "logit"]},
    {"outputs": ["logit", 3]}, {"outputs": ["logit", {"x": 1}]}, {"outputs": "logit"},
    {"outputs": ["logit", "Has Space"]}, {"tta": ""}, {"tta": 5}, {"tta": "D4!"},
    {"training": []}, {"training": {"patients": "UID_1"}}, {"training": {"patients": [1]}},
    {"training": {"recipe": "scratch"}}, {"training": {"cv": 0.9}}, {"training": {"data": 3}},
    {"calibration": {"method": 1}}, {"calibration": {"patients": "UID_1"}},
    {"calibration": "platt"}, {"extensions": [1]},
])
def test_invalid_v2_values_are_refused(change: dict[str, object]) -> None:
    d = make().to_dict()
    d.update(change, schema_version=2)
    with pytest.raises(SpecError):
        ModelSpec.from_dict(d)


def test_free_form_objects_are_plain_json_of_bounded_size() -> None:
    deep: dict[str, Any] = {}
    cur = deep
    for _ in range(40):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(SpecError, match="nested deeper"):
        make(training=deep)
    with pytest.raises(SpecError, match="not finite"):
        make(calibration={"ece": float("nan")})
    with pytest.raises(SpecError, match="not JSON"):
        make(extensions={"acme.when": object()})
    with pytest.raises(SpecError, match="at most 65536"):  # a writer cannot make it unreadable
        make(training={"patients": [f"UID_{i}" for i in range(8000)]})
    ok = make(training={"patients": [f"UID_{i}" for i in range(500)]})
    assert len(ok.to_json()) < MAX_SPEC_BYTES


def test_probability_applies_the_temperature_once() -> None:
    logits = np.array([-30.0, -2.0, -0.5, 0.0, 0.3, 1.0, 4.0, 40.0], dtype=np.float32)
    for t in (1.0, 0.5, 2.5):
        s = make(temperature=t, threshold=0.7)
        expect = 1.0 / (1.0 + np.exp(-logits.astype(np.float64) / t))
        np.testing.assert_allclose(s.probability(logits), expect, rtol=1e-12)
        # the label rule on logits agrees with the probability rule
        assert list(logits >= s.logit_threshold) == list(s.probability(logits) >= 0.7)
    assert make(temperature=2.0, threshold=0.8).logit_threshold == pytest.approx(
        2.0 * 1.3862944)
    assert make().probability(np.array([-800.0, 800.0])).tolist() == [0.0, 1.0]  # no overflow


def test_logit_threshold_matches_probability() -> None:
    assert make(threshold=0.5).logit_threshold == pytest.approx(0.0)
    assert make(threshold=0.8).logit_threshold == pytest.approx(1.3862944)


@pytest.mark.parametrize("change", [
    {"input_size": 0}, {"input_size": "128"}, {"labels": ["all", "hem"]},
    {"threshold": 1.5}, {"std": [1, 0, 1]}, {"mean": [1, 2]}, {"interpolation": "magic"},
    {"positive": "hem"}, {"schema_version": True}, {"metrics": {"x": "y"}},
    {"crop_fraction": 0}, {"unknown_field": 1},
])
def test_invalid_values_are_refused(change: dict[str, object]) -> None:
    d = make().to_dict()
    d.update(change)
    with pytest.raises(SpecError):
        ModelSpec.from_dict(d)


@pytest.mark.parametrize("text", ["", "[]", "null", "{", '{"schema_version": 1}',
                                  '{"schema_version": 1, "architecture": "x", '
                                  '"input_size": NaN}'])
def test_malformed_json_is_refused(text: str) -> None:
    with pytest.raises(SpecError):
        ModelSpec.from_json(text)


def test_size_cap() -> None:
    d = make().to_dict()
    d["notes"] = "x" * (MAX_SPEC_BYTES + 1)
    with pytest.raises(SpecError, match="larger than"):
        ModelSpec.from_json(json.dumps(d))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5),
    max_leaves=20,
)

#: a value each field accepts, so that a dict drawn from these parses often enough
VALID_VALUES: dict[str, st.SearchStrategy[object]] = {
    "architecture": st.sampled_from(["scratch", "resnet50"]),
    "input_size": st.integers(8, 4096),
    "threshold": st.floats(0.0, 1.0),
    "labels": st.just(["hem", "all"]),
    "mean": st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3),
    "std": st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3),
    "metrics": st.dictionaries(st.text(max_size=8), st.floats(-1.0, 1.0), max_size=3),
    "crop_fraction": st.floats(0.05, 1.0),
    "interpolation": st.sampled_from(["bilinear", "bicubic", "nearest"]),
    "precision": st.sampled_from(["fp32", "fp16", "int8"]),
    "notes": st.text(max_size=20),
    "training": st.fixed_dictionaries({}, optional={"patients": st.lists(st.text(max_size=6)),
                                                    "data": st.text(max_size=8)}),
    "temperature": st.floats(0.1, 10.0),
    "calibration": st.fixed_dictionaries({}, optional={"method": st.text(max_size=8)}),
    "outputs": st.sampled_from([["logit"], ["logit", "cam"], ["logit", "features", "cam"]]),
    "tta": st.sampled_from(["none", "d4"]),
    "extensions": st.dictionaries(st.sampled_from(["acme.qc", "x.y"]), json_values,
                                  max_size=2),
}


valid_spec_dicts = st.fixed_dictionaries(
    {"schema_version": st.sampled_from([1, 2]), "architecture": VALID_VALUES["architecture"],
     "input_size": VALID_VALUES["input_size"]},
    optional={n: v for n, v in VALID_VALUES.items() if n not in ("architecture", "input_size")},
)


@st.composite
def spec_dicts(draw: st.DrawFn) -> dict[str, object]:
    """A spec object of valid values (refused when it says version 1 and holds a v2
    field), and half the time one field, or an unknown one, set to any JSON value."""
    d: dict[str, object] = draw(valid_spec_dicts)
    if draw(st.booleans()):
        name = draw(st.sampled_from(["schema_version", *VALID_VALUES, "colour_model"]))
        d[name] = draw(json_values)
    return d


def parse_outcome(text: str | bytes) -> ModelSpec | str:
    """The spec ``text`` holds, or the message of the SpecError refusing it; any other
    exception escapes (and fails the test)."""
    try:
        return ModelSpec.from_json(text)
    except SpecError as exc:
        assert exc.message.startswith(("model spec ", "invalid ModelSpec: ")), exc.message
        return exc.message


def assert_faithful(spec: ModelSpec, raw: dict[str, object]) -> None:
    """A spec parsed from ``raw`` holds exactly what ``raw`` said, and is written back
    with a version no higher than ``raw``'s and read back equal."""
    for name, value in raw.items():
        if name != "schema_version":
            got = getattr(spec, name)
            assert (list(got) if isinstance(got, tuple) else got) == value, name
    assert isinstance(raw["schema_version"], int)
    assert spec.schema_version <= raw["schema_version"]
    assert ModelSpec.from_json(spec.to_json()) == spec


VALID_V2 = {"schema_version": 2, "architecture": "scratch", "input_size": 128,
            "temperature": 1.5, "outputs": ["logit", "cam"], "extensions": {"acme.qc": 1}}


@given(json_values | spec_dicts())
@example(VALID_V2)  # both outcomes run whatever the draws
@example(VALID_V2 | {"schema_version": 1})
def test_json_gives_the_spec_it_says_or_a_spec_error(value: object) -> None:
    text = json.dumps(value)  # NaN and Infinity are written as such: the parser refuses them
    got = parse_outcome(text)
    if isinstance(got, ModelSpec):
        raw = json.loads(text)
        assert isinstance(raw, dict)
        assert_faithful(got, raw)


def test_the_examples_of_the_property_take_both_branches() -> None:
    """The examples the property above always runs: one parses, one is refused."""
    assert_faithful(ModelSpec.from_dict(VALID_V2), VALID_V2)
    assert "need version 2" in str(parse_outcome(json.dumps(VALID_V2 | {"schema_version": 1})))


@given(st.binary(max_size=200) | spec_dicts().map(lambda d: json.dumps(d).encode()))
@example(json.dumps(VALID_V2).encode())
@example(b'{"schema_version": 1, "architecture": "\xff"}')
@example(b"\xff\xfe{}")
def test_bytes_parse_like_the_text_they_hold(raw: bytes) -> None:
    """``from_json`` takes the file's bytes or its text: the same answer either way, and
    bytes that are not UTF-8 are refused as such."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert parse_outcome(raw) == "model spec is not UTF-8 text"
        return
    assert parse_outcome(raw) == parse_outcome(text)


def test_precision_round_trips_and_fp32_is_omitted_for_old_readers() -> None:
    assert "precision" not in json.loads(make().to_json())
    assert ModelSpec.from_json(make().to_json()).precision == "fp32"
    s = make(precision="int8")
    assert json.loads(s.to_json())["precision"] == "int8"
    assert ModelSpec.from_json(s.to_json()) == s
    with pytest.raises(SpecError, match="precision"):
        make(precision="int4")
