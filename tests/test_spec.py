from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leukoedge.errors import SpecError
from leukoedge.spec import MAX_SPEC_BYTES, SCHEMA_VERSION, ModelSpec


def make(**kw: object) -> ModelSpec:
    base: dict[str, object] = {"architecture": "scratch", "input_size": 128}
    base.update(kw)
    return ModelSpec(**base)  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    s = make(mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), threshold=0.4,
             data_fingerprint="sha256:ab", train_images=10, metrics={"val_f1": 0.9})
    back = ModelSpec.from_json(s.to_json())
    assert back == s
    assert json.loads(s.to_json())["schema_version"] == SCHEMA_VERSION


def test_logit_threshold_matches_probability() -> None:
    assert make(threshold=0.5).logit_threshold == pytest.approx(0.0)
    assert make(threshold=0.8).logit_threshold == pytest.approx(1.3862944)


def test_newer_schema_is_refused_with_upgrade_hint() -> None:
    d = make().to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SpecError) as e:
        ModelSpec.from_dict(d)
    assert "upgrade" in str(e.value)


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


@given(json_values)
def test_arbitrary_json_gives_spec_or_spec_error(value: object) -> None:
    try:
        text = json.dumps(value)
    except ValueError:
        return
    try:
        spec = ModelSpec.from_json(text)
    except SpecError:
        return
    assert isinstance(spec, ModelSpec)


@given(st.dictionaries(st.sampled_from(["schema_version", "architecture", "input_size",
                                        "threshold", "labels", "mean", "std", "metrics",
                                        "crop_fraction", "interpolation"]), json_values))
def test_arbitrary_fields_give_spec_or_spec_error(value: dict[str, object]) -> None:
    try:
        ModelSpec.from_dict(value)
    except SpecError:
        pass


@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_spec_or_spec_error(raw: bytes) -> None:
    try:
        ModelSpec.from_json(raw)
    except SpecError:
        pass


def test_precision_round_trips_and_fp32_is_omitted_for_old_readers() -> None:
    assert "precision" not in json.loads(make().to_json())
    assert ModelSpec.from_json(make().to_json()).precision == "fp32"
    s = make(precision="int8")
    assert json.loads(s.to_json())["precision"] == "int8"
    assert ModelSpec.from_json(s.to_json()) == s
    with pytest.raises(SpecError, match="precision"):
        make(precision="int4")
