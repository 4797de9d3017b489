"""Only declared errors escape the parsers, whatever bytes they are fed.

Random bytes are refused at the first magic number, so they exercise little. These tests
start from VALID files of each format (image formats, a ModelSpec, an ONNX model, the
prelim label CSV, a result file) and mutate them, mostly in their headers, and require:
a result, or the one declared error type of that parser. Anything else (a TypeError of
ours, an unexpected Pillow exception, UnicodeDecodeError...) fails the test. Hypothesis
runs under the ``ci`` profile (tests/conftest.py): bounded and derandomised.
The same properties run unbounded under atheris: see fuzz/ and docs/reliability.md.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from functools import cache
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import leukoedge.preprocess as pp
from leukoedge.errors import DataError, ImageError, ModelError, SpecError
from leukoedge.spec import ModelSpec

# Pillow warns about the damaged metadata these tests feed it; the CLI silences those
# warnings (preprocess._quiet_bomb_warning), pytest resets filters per test.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"

# -- images --------------------------------------------------------------------------


@cache
def image_seeds() -> dict[str, bytes]:
    """Small valid files of every format and mode: the fuzz harness's own seed set."""
    sys.path.insert(0, str(FUZZ))
    from make_corpus import images

    return images()


INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65536, 1 << 31]


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """1-4 edits of ``data``: header bytes, 16/32-bit fields, truncation, splices."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not b:
            break
        kind = draw(st.sampled_from(["byte", "int", "truncate", "splice", "bit"]))
        header = min(len(b), 128)
        if kind == "byte":
            i = draw(st.integers(0, header - 1) | st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
        elif kind == "int":
            i = draw(st.integers(0, header - 1))
            width = draw(st.sampled_from([2, 4]))
            v = draw(st.sampled_from(INTERESTING)) & ((1 << (8 * width)) - 1)
            order = draw(st.sampled_from(["little", "big"]))
            b[i:i + width] = v.to_bytes(width, order)
        elif kind == "truncate":
            b = b[: draw(st.integers(0, len(b)))]
        elif kind == "splice":
            i, j = draw(st.integers(0, len(b) - 1)), draw(st.integers(0, len(b) - 1))
            b[i:i] = b[j:j + draw(st.integers(1, 16))]
        else:
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(b)


def preprocess_or_image_error(raw: bytes) -> None:
    # A lower pixel cap keeps each example fast (a mutated header may claim 40 MP); the
    # code paths are the same.
    with mock.patch.object(pp, "MAX_PIXELS", 1_000_000):
        try:
            a = pp.preprocess(raw, 16)
        except ImageError:
            return
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8


@pytest.mark.parametrize("fmt", sorted(image_seeds()))
def test_seeds_are_valid(fmt: str) -> None:
    assert pp.preprocess(image_seeds()[fmt], 16).shape == (16, 16, 3)


@pytest.mark.parametrize("fmt", sorted(image_seeds()))
@given(data=st.data())
def test_mutated_valid_images_give_array_or_image_error(fmt: str, data: st.DataObject) -> None:
    preprocess_or_image_error(data.draw(mutations(image_seeds()[fmt]), label="file"))


def test_pillow_notimplemented_is_an_image_error() -> None:
    """Regression: Pillow's DDS plugin raises NotImplementedError on unknown formats."""
    raw = bytearray(image_seeds()["rgba.dds"])
    raw[80:84] = (128).to_bytes(4, "little")
    with pytest.raises(ImageError, match="not a readable image"):
        pp.preprocess(bytes(raw), 16)


@pytest.mark.parametrize("w,h", [(40000, 1), (1, 40000), (59416, 24)])
def test_extreme_aspect_never_builds_a_huge_square(w: int, h: int) -> None:
    """Regression: 59416x24 (1.4 MP, under the cap) once built a 59416^2 canvas (56 s)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 100, 50)).save(buf, format="PNG")
    with mock.patch.object(Image, "new", wraps=Image.new) as new:
        out = pp.preprocess(buf.getvalue(), 32)
    assert all(c.args[1][0] * c.args[1][1] <= pp.MAX_PIXELS for c in new.call_args_list)
    assert out[0, 0].tolist() == [0, 0, 0] and out.max() > 0


def test_padding_still_matches_for_ordinary_images() -> None:
    """The shrink only applies when the square would pass the cap: 20x60 is unchanged."""
    from PIL import Image

    a = np.full((20, 60, 3), 200, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    canvas = np.zeros((60, 60, 3), np.uint8)
    canvas[20:40] = a
    ref = np.asarray(Image.fromarray(canvas).resize((30, 30), Image.Resampling.BILINEAR,
                                                    reducing_gap=pp.REDUCING_GAP))
    assert np.array_equal(pp.preprocess(buf.getvalue(), 30), ref)


# -- ModelSpec -----------------------------------------------------------------------

VALID_SPEC = ModelSpec(architecture="scratch", input_size=128, threshold=0.4,
                       metrics={"val_f1": 0.9}, notes="n").to_json()


def spec_or_spec_error(raw: str | bytes) -> None:
    try:
        spec = ModelSpec.from_json(raw)
    except SpecError:
        return
    assert ModelSpec.from_json(spec.to_json()) == spec  # what parses, round-trips


@given(mutations(VALID_SPEC.encode()))
@example(VALID_SPEC.encode().replace(b'"threshold": 0.4', b'"threshold": 1e400'))
@example(VALID_SPEC.encode().replace(b'"input_size": 128', b'"input_size": ' + b"9" * 5000))
@example(b"[" * 100_000)
@example(VALID_SPEC.encode()[:-1] + b', "notes": "\\ud800"}')
def test_mutated_spec_bytes_give_spec_or_spec_error(raw: bytes) -> None:
    spec_or_spec_error(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)


@given(st.sampled_from(sorted(json.loads(VALID_SPEC))), json_values)
def test_valid_spec_with_one_field_replaced_gives_spec_or_spec_error(key: str,
                                                                     value: object) -> None:
    d = json.loads(VALID_SPEC)
    d[key] = value
    try:
        text = json.dumps(d)
    except ValueError:
        return
    spec_or_spec_error(text)


# -- the prelim label CSV ------------------------------------------------------------

LABELS_CSV = ("Patient_ID,new_names,labels\n"
              "UID_57_29_1_all.bmp,1.bmp,1\nUID_H10_43_1_hem.bmp,2.bmp,0\n")


def labels_or_data_error(text: str) -> None:
    from leukoedge.data import read_prelim_labels

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "labels.csv"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            table = read_prelim_labels(p)
        except DataError:
            return
    assert table and all(v[0] in (0, 1) for v in table.values())


csv_alphabet = st.sampled_from(list(',"\n\r\t\0\x0b\x1c\u2028 01ab.;') + ["Patient_ID",
                               "new_names", "labels", "UID_1_1_1_all.bmp"])


@given(st.lists(csv_alphabet, max_size=40).map("".join))
@example('Patient_ID,new_names,labels\n"' + "x" * 200_000 + '",1.bmp,1\n')
@example("Patient_ID,new_names,labels\nUID_1_1_1_all.bmp,1.bmp,1,extra,fields\n")
@example("Patient_ID,new_names,labels\nUID_1_1_1_all.bmp\n")
def test_arbitrary_csv_text_gives_labels_or_data_error(text: str) -> None:
    labels_or_data_error(text)


@given(mutations(LABELS_CSV.encode()))
def test_mutated_label_file_gives_labels_or_data_error(raw: bytes) -> None:
    labels_or_data_error(raw.decode("utf-8", "surrogateescape"))


# -- result files when resuming ------------------------------------------------------

RESULT_CSV = ("path,patient,prob_all,label,error\n/x/1.bmp,UID_1,0.250000,hem,\n"
              "/x/2.bmp,,,,/x/2.bmp: not a readable image\n")


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
@given(data=st.data())
def test_resume_from_a_mutated_result_file_resumes_or_data_error(ext: str,
                                                                 data: st.DataObject) -> None:
    from leukoedge.output import ResultWriter, Row

    seed = RESULT_CSV.encode() if ext == "csv" else (
        b'{"path": "/x/1.bmp", "patient": null, "prob_all": 0.5, "label": "all", '
        b'"error": null}\n')
    raw = data.draw(mutations(seed), label="file")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"r.{ext}"
        p.write_bytes(raw)
        try:
            w = ResultWriter(p, resume=True)
        except DataError:
            return
        with w:
            assert all(isinstance(x, str) for x in w.done)
            w.write([Row("/x/3.bmp", None, 0.5, "all", None)])
        assert p.read_bytes().endswith(b"\n")


# -- ONNX models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    import onnx_models as om

    return om.mean_brightness_model(32).SerializeToString()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-models") / "m.onnx"


@given(data=st.data())
def test_mutated_onnx_gives_model_or_model_error(model_bytes: bytes, scratch: Path,
                                                 data: st.DataObject) -> None:
    """load_model (onnxruntime) and describe_model (onnx, for ``info``) on damaged models."""
    from leukoedge.inspect_model import describe_model
    from leukoedge.session import SessionConfig, load_model

    raw = data.draw(mutations(model_bytes) | st.binary(max_size=64), label="model")
    scratch.write_bytes(raw)
    try:
        m = load_model(scratch, SessionConfig(provider="cpu", threads=1))
    except ModelError:  # SpecError is a ModelError
        pass
    else:
        assert m.logits(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2,)
    try:
        d = describe_model(scratch)
    except ModelError:
        return
    json.dumps(d)


def test_invalid_utf8_in_a_model_is_a_model_error(model_bytes: bytes, tmp_path: Path) -> None:
    """Regression: onnxruntime decodes names and metadata lazily (UnicodeDecodeError)."""
    from leukoedge.session import load_model

    for needle in (b"logit", b"leukoedge.spec"):
        raw = model_bytes.replace(needle, b"\xfa" + needle[1:])
        (tmp_path / "m.onnx").write_bytes(raw)
        with pytest.raises(ModelError):
            load_model(tmp_path / "m.onnx")



# -- the atheris harnesses (fuzz/) run here on their seed corpora, without atheris -----



@pytest.mark.parametrize("harness,corpus", [("fuzz_image_loader", "image"),
                                            ("fuzz_spec", "spec")])
def test_fuzz_harnesses_accept_their_seed_corpus(harness: str, corpus: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "atheris", None)  # import atheris -> ImportError
    monkeypatch.setattr(pp, "MAX_PIXELS", pp.MAX_PIXELS)  # the harness lowers it: restore
    monkeypatch.syspath_prepend(str(FUZZ))
    for name in ("_common", harness):
        monkeypatch.delitem(sys.modules, name, raising=False)
    mod = importlib.import_module(harness)
    seeds = sorted((FUZZ / "corpus" / corpus).iterdir())
    assert len(seeds) >= 3
    for seed in seeds:
        mod.TestOneInput(seed.read_bytes())
    if corpus == "image":  # the seeds are valid images, every one
        assert all(pp.preprocess(s.read_bytes(), 8).shape == (8, 8, 3) for s in seeds)
