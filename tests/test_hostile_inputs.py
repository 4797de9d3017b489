"""Hostile inputs, end to end through ``leukoedge classify`` (typer's CliRunner).

Every input tried is one entry of :data:`FILE_CASES` (one file or folder among others in
one input folder: one row each, one run), :data:`MODEL_CASES` (a broken ``--model``) or
:data:`RUN_CASES` (a path, folder or output that stops the run). Each entry says what the
user gets; the tests check exactly that, and the table in ``docs/reliability.md`` is
generated from the same entries (``python tests/test_hostile_inputs.py`` prints it;
:func:`test_the_doc_table_is_generated_from_these_cases` keeps the two in step).

Expected error texts are prefixes of the text after ``<path>: `` in the ``error`` column
(or of the one line the CLI prints), so that the version-dependent details Pillow or
onnxruntime add in parentheses do not make the tests brittle.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

OK = "ok"  # the file is classified: a row with prob_all and label, no error
NO_ROW = "no row"  # the entry is not an image to classify (ignored or walked as a folder)
EXIT_ROW_ERROR, EXIT_OK, EXIT_USAGE, EXIT_CANNOT_RUN = 1, 0, 2, 3


def cell(size: int = 90) -> np.ndarray:
    """A violet disc on black, like a C-NMC cell."""
    yy, xx = np.mgrid[:size, :size]
    a = np.zeros((size, size, 3), np.uint8)
    a[np.hypot(yy - size / 2, xx - size / 2) < size / 3] = (140, 90, 170)
    return a


def encode(img: object, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)  # type: ignore[attr-defined]
    return buf.getvalue()


def pil(arr: np.ndarray | None = None, mode: str | None = None):  # type: ignore[no-untyped-def]
    from PIL import Image

    img = Image.fromarray(cell() if arr is None else arr)
    return img.convert(mode) if mode else img


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h RGB pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + png_chunk(b"IEND", b""))


def bmp_header_only(w: int, h: int) -> bytes:
    """A 24-bit BMP whose header claims w x h pixels, followed by 64 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\0" * 64


def dds_unknown_format() -> bytes:
    """A DDS file whose pixel-format flags Pillow does not implement (NotImplementedError,
    which once escaped the decoder and killed the whole run)."""
    raw = bytearray(encode(pil(mode="RGBA"), "DDS"))
    struct.pack_into("<I", raw, 80, 128)  # DDS_PIXELFORMAT.dwFlags
    return bytes(raw)


def animated_gif() -> bytes:
    frames = [pil(mode="P"), pil(np.full((90, 90, 3), 255, np.uint8), "P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)


def multipage_tiff() -> bytes:
    return encode(pil(), "TIFF", save_all=True,
                  append_images=[pil(np.full((90, 90, 3), 255, np.uint8))])


def exif_rotated_jpeg() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    return encode(pil(), "JPEG", exif=exif, quality=95)


# -- one input folder, one row per file ------------------------------------------------


@dataclass(frozen=True)
class FileCase:
    """One entry of the input folder and the row the user gets for it."""

    name: str | bytes  # bytes: a name that is not valid UTF-8
    what: str  # the input, in words (first column of the doc table)
    make: Callable[[Path, bytes], None]  # (path, bytes of a real cell) -> creates it
    expect: str  # OK, NO_ROW, or the start of the error text after "<path>: "
    note: str = ""  # added to the doc's "what the user gets" column
    needs_non_root: bool = False

    @property
    def id(self) -> str:
        return os.fsdecode(self.name).encode("ascii", "backslashreplace").decode()


def data(content: bytes | Callable[[], bytes]) -> Callable[[Path, bytes], None]:
    def make(path: Path, real: bytes) -> None:
        path.write_bytes(content() if callable(content) else content)

    return make


def from_real(fn: Callable[[bytes], bytes]) -> Callable[[Path, bytes], None]:
    def make(path: Path, real: bytes) -> None:
        path.write_bytes(fn(real))

    return make


def make_symlink_loop(path: Path, real: bytes) -> None:
    path.symlink_to(path.name)


def make_fifo(path: Path, real: bytes) -> None:
    os.mkfifo(path)


def make_socket(path: Path, real: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.fsdecode(path))
    s.close()  # the socket file stays


def make_unreadable(path: Path, real: bytes) -> None:
    path.write_bytes(real)
    path.chmod(0)


def make_dir_with_image(path: Path, real: bytes) -> None:
    path.mkdir()
    (path / "inside_hem.bmp").write_bytes(real)


def make_vanishing(path: Path, real: bytes) -> None:
    path.write_bytes(real)  # deleted after discovery: see test fixture `hostile_run`


def large_png() -> bytes:
    """3000 x 3000 (9 MP, 44 times a real cell)."""
    a = np.zeros((3000, 3000, 3), np.uint8)
    a[1000:2000, 1000:2000] = (140, 90, 170)
    return encode(pil(a), "PNG", compress_level=1)


def gray16_png() -> bytes:
    return encode(pil(cell()[..., 0].astype(np.uint16) * 257), "PNG")


NOT_IMAGE = "not a readable image (no image format recognised)"
TRUNCATED = "cannot decode image (image file is truncated"
TOO_LARGE = "image is too large ("

FILE_CASES: list[FileCase] = [
    FileCase("good_1_all.bmp", "a real C-NMC cell (BMP)", from_real(lambda r: r), OK),
    FileCase("empty.bmp", "an empty file named `.bmp`", data(b""), NOT_IMAGE),
    FileCase("zero.png", "a 0-byte `.png`", data(b""), NOT_IMAGE),
    FileCase("truncated.bmp", "a BMP cut in half", from_real(lambda r: r[: len(r) // 2]),
             TRUNCATED),
    FileCase("random.bmp", "4 KiB of random bytes named `.bmp`",
             data(lambda: np.random.default_rng(0).bytes(4096)), NOT_IMAGE),
    FileCase("text.bmp", "a text file named `.bmp`", data(b"this is not an image\n" * 20),
             NOT_IMAGE),
    FileCase("png_named.bmp", "a PNG named `.bmp`", data(lambda: encode(pil(), "PNG")), OK,
             "read by content, not extension"),
    FileCase("jpeg_named.png", "a JPEG named `.png`", data(lambda: encode(pil(), "JPEG")), OK),
    FileCase("UPPER_CASE.BMP", "an upper-case extension `.BMP`", from_real(lambda r: r), OK),
    FileCase("gray16.png", "a 16-bit grey PNG", data(gray16_png), OK, "scaled to 8 bits"),
    FileCase("gray.png", "an 8-bit grey PNG", data(lambda: encode(pil(mode="L"), "PNG")), OK),
    FileCase("palette.png", "a palette PNG", data(lambda: encode(pil(mode="P"), "PNG")), OK),
    FileCase("palette8.bmp", "an 8-bit palette BMP",
             data(lambda: encode(pil(mode="P"), "BMP")), OK),
    FileCase("rgba.png", "an RGBA PNG", data(lambda: encode(pil(mode="RGBA"), "PNG")), OK,
             "alpha composited on black"),
    FileCase("cmyk.jpg", "a CMYK JPEG", data(lambda: encode(pil(mode="CMYK"), "JPEG")), OK),
    FileCase("one_pixel.png", "a 1x1 image",
             data(lambda: encode(pil(np.full((1, 1, 3), 99, np.uint8)), "PNG")), OK),
    FileCase("large.png", "a 3000x3000 image (44 x a real cell)", data(large_png), OK),
    FileCase("strip.png", "a 40000x1 strip (under the pixel cap, absurd aspect)",
             data(lambda: encode(pil(np.full((1, 40000, 3), 200, np.uint8)), "PNG")), OK,
             "shrunk before padding: the black square is never materialised"),
    FileCase("bomb.png", "a PNG header claiming 40000x40000 pixels (decompression bomb)",
             data(lambda: png_header_only(40000, 40000)), TOO_LARGE,
             "refused from the header, nothing decoded"),
    FileCase("bomb.bmp", "a BMP header claiming 7000x7000 (49 MP, over the 40 MP cap)",
             data(lambda: bmp_header_only(7000, 7000)), TOO_LARGE),
    FileCase("huge_truncated.png", "a PNG header claiming 6000x6000 (under the cap) with "
             "100 bytes of data", data(lambda: png_header_only(6000, 6000)), TRUNCATED),
    FileCase("animated.gif", "an animated GIF", data(animated_gif), OK, "first frame"),
    FileCase("pages.tif", "a TIFF with two pages", data(multipage_tiff), OK, "first page"),
    FileCase("exif_rotated.jpg", "a JPEG with EXIF orientation 6", data(exif_rotated_jpeg),
             OK, "orientation not applied: cells have no up; training does the same"),
    FileCase("dds_unknown.bmp", "a DDS with a pixel format Pillow does not implement",
             data(dds_unknown_format), "not a readable image ("),
    FileCase("loop.bmp", "a symbolic link to itself (link loop)", make_symlink_loop,
             "symbolic link loop"),
    FileCase(b"bad_\xff\xfe.bmp", "a non-UTF-8 file name (bytes ff fe), junk content",
             data(b"junk"), NOT_IMAGE, "path written escaped: `bad_\\xff\\xfe.bmp`"),
    FileCase(b"cell_\xff_hem.bmp", "a non-UTF-8 file name, a real cell",
             from_real(lambda r: r), OK, "path written escaped: `cell_\\xff_hem.bmp`"),
    FileCase("x.bmp", "a directory named `x.bmp` (holding one cell)", make_dir_with_image,
             NO_ROW, "walked as a folder: the cell inside is classified"),
    FileCase("fifo.bmp", "a FIFO named `.bmp` (no writer)", make_fifo,
             "not a regular file (a FIFO)", "refused without blocking"),
    FileCase("socket.bmp", "a Unix socket named `.bmp`", make_socket,
             "not a regular file (a socket)"),
    FileCase("no_permission.bmp", "a file without read permission (skipped as root)",
             make_unreadable, "permission denied", needs_non_root=True),
    FileCase("vanishes.bmp", "a file deleted between discovery and decoding",
             make_vanishing, "file not found"),
    FileCase("notes.txt", "a PNG named `.txt` inside the folder",
             data(lambda: encode(pil(), "PNG")), NO_ROW,
             "not an image extension: ignored in folders"),
    FileCase("explicit.dat", "a PNG named `.dat` given explicitly on the command line",
             data(lambda: encode(pil(), "PNG")), OK, "a path named explicitly is always read"),
]

EXPLICIT = "explicit.dat"  # passed on the command line; sits outside the input folder


def raw_name(case: FileCase) -> bytes:
    return case.name if isinstance(case.name, bytes) else case.name.encode()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory, shared_cells: Path,
                tiny_model: Path) -> tuple[int, str, dict[str, dict[str, str]], Path]:
    """Build the hostile folder, classify it once; rows keyed by their escaped path."""
    from typer.testing import CliRunner

    from leukoedge import data as data_mod
    from leukoedge.cli import assemble

    base = tmp_path_factory.mktemp("hostile")
    folder = base / "in"
    folder.mkdir()
    real = sorted((shared_cells / "fold_0" / "all").glob("*.bmp"))[0].read_bytes()
    for case in FILE_CASES:
        where = base if case.name == EXPLICIT else folder
        case.make(Path(os.fsdecode(os.fsencode(where) + b"/" + raw_name(case))), real)
    out = base / "rows.csv"

    collect = data_mod.collect  # commands import it when they run: patch it at its source

    def collect_then_delete(*args: object, **kw: object):  # type: ignore[no-untyped-def]
        items = collect(*args, **kw)  # type: ignore[arg-type]
        (folder / "vanishes.bmp").unlink()
        return items

    data_mod.collect = collect_then_delete  # type: ignore[assignment]
    try:
        r = CliRunner().invoke(assemble(), ["classify", str(folder), str(base / EXPLICIT),
                                            "--model", str(tiny_model), "--out", str(out),
                                            "--batch-size", "8"])
    finally:
        data_mod.collect = collect
    rows = {}
    if out.exists():
        with open(out, newline="", encoding="utf-8") as fh:
            rows = {row["path"]: row for row in csv.DictReader(fh)}
    return r.exit_code, r.output, rows, base


def escaped(base: Path, case: FileCase) -> str:
    from leukoedge.output import escape_path

    where = base if case.name == EXPLICIT else base / "in"
    return escape_path(os.fsencode(where) + b"/" + raw_name(case))


def test_the_run_exits_1_with_one_row_per_file_and_no_traceback(hostile_run) -> None:  # type: ignore[no-untyped-def]
    code, output, rows, base = hostile_run
    assert code == EXIT_ROW_ERROR, output
    assert "Traceback" not in output
    expected = {escaped(base, c) for c in FILE_CASES if c.expect != NO_ROW}
    expected.add(escape_path_of(base / "in" / "x.bmp" / "inside_hem.bmp"))
    assert set(rows) == expected


def escape_path_of(p: Path) -> str:
    from leukoedge.output import escape_path

    return escape_path(p)


@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.id)
def test_each_file_gets_the_documented_row(hostile_run, case: FileCase) -> None:  # type: ignore[no-untyped-def]
    code, output, rows, base = hostile_run
    if case.needs_non_root and os.geteuid() == 0:
        pytest.skip("root reads any file; the FIFO and socket cases cover unreadable files")
    key = escaped(base, case)
    if case.expect == NO_ROW:
        assert key not in rows
        if case.name == "x.bmp":
            inner = rows[escape_path_of(base / "in" / "x.bmp" / "inside_hem.bmp")]
            assert inner["error"] == "" and inner["label"] in ("all", "hem")
        return
    row = rows[key]
    if case.expect == OK:
        assert row["error"] == "", row
        assert row["label"] in ("all", "hem") and 0.0 <= float(row["prob_all"]) <= 1.0
    else:
        assert row["prob_all"] == "" and row["label"] == "", row
        assert row["error"].startswith(f"{key}: {case.expect}"), row["error"]
        assert "\n" not in row["error"] and "Traceback" not in row["error"]


# -- broken models: one clear line, exit 3, no output file ------------------------------


@dataclass(frozen=True)
class ModelCase:
    name: str
    what: str
    make: Callable[[Path, Path], Path | None]  # (path to create, a good model) -> the
    # model path, when it is not the one given
    expect: str  # the start of the one error line after "<model path>: "
    code: int = EXIT_CANNOT_RUN


def model_bytes(fn: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def make(path: Path, good: Path) -> None:
        path.write_bytes(fn(good.read_bytes()))

    return make


def built(**kw: object) -> Callable[[Path, Path], None]:
    def make(path: Path, good: Path) -> None:
        import onnx_models as om

        om.save(om.mean_brightness_model(32, **kw), path)  # type: ignore[arg-type]

    return make


def spec_json(**changes: object) -> str:
    from leukoedge.spec import ModelSpec

    d = ModelSpec(architecture="x", input_size=32).to_dict()
    d.update(changes)
    return json.dumps(d)


def graph_model(kind: str) -> Callable[[Path, Path], None]:
    """Models that load and pass every check but misbehave when run."""

    def make(path: Path, good: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from leukoedge.spec import SPEC_KEY, ModelSpec

        inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 32, 32, 3])
        out = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])
        nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
                 helper.make_node("ReduceMean", ["f", "axes"], ["r"], keepdims=0)]
        inits = [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
        if kind == "gather":  # index out of range: fails inside onnxruntime
            nodes.append(helper.make_node("Gather", ["r", "i"], ["logit"], axis=1))
            inits.append(numpy_helper.from_array(np.array(9, np.int64), "i"))
        elif kind == "too_many":  # [N, 3] flattened: three values per image
            nodes.append(helper.make_node("Reshape", ["r", "s"], ["logit"]))
            inits.append(numpy_helper.from_array(np.array([-1], np.int64), "s"))
        else:  # NaN: 0 * log(-1)
            nodes += [helper.make_node("ReduceMean", ["r", "one"], ["m"], keepdims=0),
                      helper.make_node("Sub", ["m", "m"], ["z"]),
                      helper.make_node("Sub", ["z", "o"], ["neg"]),
                      helper.make_node("Log", ["neg"], ["logit"])]
            inits += [numpy_helper.from_array(np.array([1], np.int64), "one"),
                      numpy_helper.from_array(np.array(1.0, np.float32), "o")]
        g = helper.make_graph(nodes, kind, [inp], [out], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        m.ir_version = 9
        helper.set_model_props(m, {SPEC_KEY: ModelSpec(architecture="x",
                                                       input_size=32).to_json()})
        onnx.save(m, str(path))

    return make


def external_data(location: str) -> Callable[[Path, Path], None]:
    """A model whose initializer 'c' is read from ``location`` (ONNX external data): the
    one file path a model can name. onnxruntime must refuse paths outside its folder."""

    def make(path: Path, good: Path) -> Path:
        import onnx_models as om
        from onnx import TensorProto

        model = path.parent / "models" / path.name  # tmp/models/x.onnx
        secret = path.parent / "outside" / "secret.bin"  # tmp/outside/secret.bin exists
        for d in (model.parent, secret.parent, model.parent / "inside"):
            d.mkdir(exist_ok=True)
        secret.write_bytes(b"\0\0\x80\x3f")  # 1.0 as float32
        (model.parent / "inside" / "c.bin").write_bytes(b"\0\0\x80\x3f")
        m = om.mean_brightness_model(32)
        t = next(i for i in m.graph.initializer if i.name == "c")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location.format(secret=secret)), ("length", "4")):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        model.write_bytes(m.SerializeToString())
        return model

    return make


MODEL_CASES: list[ModelCase] = [
    ModelCase("missing.onnx", "a model path that does not exist", lambda p, g: None,
              "model file not found"),
    ModelCase("empty.onnx", "an empty model file", model_bytes(lambda b: b""),
              "cannot load as an ONNX model"),
    ModelCase("truncated.onnx", "a truncated model (first half)",
              model_bytes(lambda b: b[: len(b) // 2]), "cannot load as an ONNX model"),
    ModelCase("text.onnx", "a text file named `.onnx`",
              model_bytes(lambda b: b"not a model at all\n"), "cannot load as an ONNX model"),
    ModelCase("folder.onnx", "a folder named `.onnx`", lambda p, g: p.mkdir(),
              "is a folder, not an ONNX model file"),
    ModelCase("fifo.onnx", "a FIFO named `.onnx`", lambda p, g: os.mkfifo(p),
              "not a regular file"),
    ModelCase("ext_abs.onnx", "external data at an absolute path (`/…/secret.bin`)",
              external_data("{secret}"), "cannot load as an ONNX model ("),
    ModelCase("ext_up.onnx", "external data escaping the model's folder (`../…`)",
              external_data("../outside/secret.bin"), "cannot load as an ONNX model ("),
    ModelCase("nospec.onnx", "an ONNX model without the spec", built(spec=None),
              "not a leukoedge model (no 'leukoedge.spec' metadata)"),
    ModelCase("notjson.onnx", "a spec that is not JSON", built(spec="{'python': 1}"),
              "model spec is not valid JSON"),
    ModelCase("newer.onnx", "a spec of a newer schema (3)",
              built(spec=spec_json(schema_version=3)),
              "model spec has schema version 3; this leukoedge reads up to 2"),
    ModelCase("bigspec.onnx", "a spec over 64 KiB", built(spec=spec_json(notes="x" * 70000)),
              "model spec is larger than 65536 bytes"),
    ModelCase("badspec.onnx", "a spec with an invalid value (input_size 0)",
              built(spec=spec_json(input_size=0)), "invalid ModelSpec: input_size"),
    ModelCase("shape.onnx", "an input shape (64) that disagrees with the spec (32)",
              built(input_size_in_graph=64), "input shape ['N', 64, 64, 3] disagrees"),
    ModelCase("float.onnx", "a float input instead of uint8",
              built(input_type=1), "input 'image' is tensor(float)"),
    ModelCase("fixed.onnx", "a fixed batch axis of 4", built(batch_dim=4),
              "input batch axis is fixed at 4"),
    ModelCase("outputs.onnx", "a heatmap output the spec does not name",
              built(cam=True), "the graph has 2 output(s); its spec names 1 (logit)"),
    ModelCase("fails.onnx", "a model that fails while running (Gather out of range)",
              graph_model("gather"), "the model failed while running"),
    ModelCase("too_many.onnx", "a model returning 3 values per image",
              graph_model("too_many"), "the model returned 6 values for 2 images"),
    ModelCase("nan.onnx", "a model returning NaN", graph_model("nan"),
              "the model returned NaN for this image", code=EXIT_ROW_ERROR),
]


def test_external_data_inside_the_model_folder_loads(tmp_path: Path, tiny_model: Path) -> None:
    """The refusals above are about where the data lies, not about external data as such."""
    from leukoedge.session import load_model

    model = external_data("inside/c.bin")(tmp_path / "ok.onnx", tiny_model)
    assert load_model(model).logits(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1,)


@pytest.fixture(scope="module")
def two_cells(tmp_path_factory: pytest.TempPathFactory, shared_cells: Path) -> Path:
    d = tmp_path_factory.mktemp("two")
    for f in sorted((shared_cells / "fold_0" / "hem").glob("*.bmp"))[:2]:
        (d / f.name).write_bytes(f.read_bytes())
    return d


def invoke(*args: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from leukoedge.cli import assemble

    return CliRunner().invoke(assemble(), [os.fspath(a) for a in args])


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_each_broken_model_gets_one_clear_line(case: ModelCase, tmp_path: Path,
                                               tiny_model: Path, two_cells: Path) -> None:
    path = case.make(tmp_path / case.name, tiny_model) or tmp_path / case.name
    out = tmp_path / "rows.csv"
    r = invoke("classify", two_cells, "--model", path, "--out", out)
    assert r.exit_code == case.code, r.output
    assert "Traceback" not in r.output
    if case.code == EXIT_ROW_ERROR:  # a per-image problem: error rows
        with open(out, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 2
        assert all(row["error"].startswith(case.expect) and row["label"] == ""
                   for row in rows), rows
        return
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.output
    assert lines[0].startswith(f"error: {path}: {case.expect}"), lines[0]
    if case.name not in ("fails.onnx", "too_many.onnx"):  # these fail once rows are due
        assert not out.exists()


# -- runs that cannot start: one line, exit 2 or 3 -------------------------------------


@dataclass(frozen=True)
class RunCase:
    name: str
    what: str
    args: Callable[[Path, Path, Path], list[str]]  # (tmp, cells, model) -> argv
    code: int
    expect: str  # a substring of the one error line


def _loop(p: Path) -> Path:
    p.symlink_to(p.name)
    return p


def _touch(p: Path, text: str = "path,patient\n") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _empty_dir(p: Path) -> Path:
    p.mkdir()
    return p


def _text_only_dir(p: Path) -> Path:
    _touch(p / "readme.txt")
    _touch(p / "labels.csv")
    return p


def _ev(t: Path, c: Path, m: Path, *more: str | Path) -> list[str]:
    return ["evaluate", str(c), "--model", str(m), *map(str, more)]


def _cl(t: Path, c: Path, m: Path, *more: str | Path) -> list[str]:
    return ["classify", str(c), "--model", str(m), *map(str, more)]


RUN_CASES: list[RunCase] = [
    RunCase("missing_path", "an input path that does not exist",
            lambda t, c, m: ["classify", str(t / "nope"), "--model", str(m), "--out",
                             str(t / "o.csv")], EXIT_CANNOT_RUN, "nope: no such file or folder"),
    RunCase("empty_folder", "an empty folder",
            lambda t, c, m: ["classify", str(_empty_dir(t / "empty")), "--model", str(m),
                             "--out", str(t / "o.csv")], EXIT_CANNOT_RUN, "no image found"),
    RunCase("no_images", "a folder with only `.txt`/`.csv` files",
            lambda t, c, m: ["classify", str(_text_only_dir(t / "txt")), "--model", str(m),
                             "--out", str(t / "o.csv")], EXIT_CANNOT_RUN, "no image found"),
    RunCase("input_loop", "an input path that is a symbolic link loop",
            lambda t, c, m: ["classify", str(_loop(t / "loop.bmp")), "--model", str(m),
                             "--out", str(t / "o.csv")], EXIT_ROW_ERROR, ""),
    RunCase("out_exists", "`--out` exists (no `--overwrite`/`--resume`)",
            lambda t, c, m: _cl(t, c, m, "--out", _touch(t / "o.csv")), EXIT_USAGE,
            "already exists"),
    RunCase("out_in_input", "`--out` inside an input folder",
            lambda t, c, m: _cl(t, c, m, "--out", c / "o.csv"), EXIT_USAGE,
            "inside the input folder"),
    RunCase("out_is_input", "`--out` is one of the input files",
            lambda t, c, m: ["classify", str(next(c.rglob("*.bmp"))), "--model", str(m),
                             "--out", str(next(c.rglob("*.bmp"))), "--overwrite"], EXIT_USAGE,
            "is one of the input files"),
    RunCase("out_loop", "`--out` is a symbolic link loop",
            lambda t, c, m: _cl(t, c, m, "--out", _loop(t / "o.csv")), EXIT_USAGE,
            "is a symbolic link loop"),
    RunCase("out_under_file", "`--out` below a regular file (`file.txt/o.csv`)",
            lambda t, c, m: _cl(t, c, m, "--out", _touch(t / "f.txt") / "o.csv"), EXIT_USAGE,
            "a part of its folder path is a file"),
    RunCase("out_folder", "`--out` is a folder, with `--overwrite`",
            lambda t, c, m: _cl(t, c, m, "--out", _empty_dir(t / "d"), "--overwrite"),
            EXIT_USAGE, "is a folder"),
    RunCase("resume_foreign", "`--resume` into a CSV that is not a leukoedge result",
            lambda t, c, m: _cl(t, c, m, "--out", _touch(t / "o.csv", "a,b\n1,2\n"),
                                "--resume"), EXIT_CANNOT_RUN, "not a leukoedge result file"),
    RunCase("resume_huge_field", "`--resume` into a CSV with a 200 KB field",
            lambda t, c, m: _cl(t, c, m, "--out",
                                _touch(t / "o.csv", "path\n\"" + "x" * 200_000 + "\"\n"),
                                "--resume"), EXIT_CANNOT_RUN, "not a leukoedge result file"),
    RunCase("labels_junk", "`--labels` pointing to a binary file",
            lambda t, c, m: _cl(t, c, m, "--out", t / "o.csv", "--labels",
                                _touch(t / "l.csv", "\x00\x01\x02")), EXIT_CANNOT_RUN,
            "label file needs the columns"),
    RunCase("labels_fifo", "`--labels` pointing to a FIFO",
            lambda t, c, m: _cl(t, c, m, "--out", t / "o.csv", "--labels", _fifo(t / "l.csv")),
            EXIT_CANNOT_RUN, "not a regular file"),
    RunCase("report_exists", "`evaluate --report` exists",
            lambda t, c, m: _ev(t, c, m, "--report", _touch(t / "r.json")), EXIT_USAGE,
            "already exists"),
    RunCase("predictions_exists", "`evaluate --predictions` exists",
            lambda t, c, m: _ev(t, c, m, "--predictions", _touch(t / "p.csv")), EXIT_USAGE,
            "already exists"),
    RunCase("report_in_input", "`evaluate --report` inside an input folder",
            lambda t, c, m: _ev(t, c, m, "--report", c / "r.json"), EXIT_USAGE,
            "inside the input folder"),
    RunCase("predictions_in_input", "`evaluate --predictions` inside an input folder",
            lambda t, c, m: _ev(t, c, m, "--predictions", c / "p.csv"), EXIT_USAGE,
            "inside the input folder"),
    RunCase("report_is_predictions", "`evaluate --report X --predictions X`",
            lambda t, c, m: _ev(t, c, m, "--report", t / "x", "--predictions", t / "x"),
            EXIT_USAGE, "name the same file"),
    RunCase("report_unwritable", "`evaluate --report` is a folder, with `--overwrite`",
            lambda t, c, m: _ev(t, c, m, "--report", _empty_dir(t / "r"), "--overwrite"),
            EXIT_CANNOT_RUN, "cannot write"),
]


def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("case", RUN_CASES, ids=lambda c: c.name)
def test_each_run_problem_gets_one_clear_line(case: RunCase, tmp_path: Path, tiny_model: Path,
                                              two_cells: Path, shared_cells: Path) -> None:
    cells = tmp_path / "cells"
    cells.mkdir()
    for sub in ("all", "hem"):  # labelled, for evaluate
        f = sorted((shared_cells / "fold_0" / sub).glob("*.bmp"))[0]
        (cells / sub).mkdir()
        (cells / sub / f.name).write_bytes(f.read_bytes())
    before = sorted(p.name for p in cells.rglob("*"))
    r = invoke(*case.args(tmp_path, cells, tiny_model))
    assert r.exit_code == case.code, r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in cells.rglob("*")) == before, "nothing written into inputs"
    if case.code == EXIT_ROW_ERROR:
        return
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and case.expect in lines[0], r.output


# -- the table in docs/reliability.md ---------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- hostile-table:begin -->", "<!-- hostile-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The doc's table, generated from the cases above."""
    lines = ["| input | what the user gets | exit |", "|---|---|---|"]
    lines.append("| **in a folder (one row per file, one run)** | | |")
    for c in FILE_CASES:
        if c.expect == OK:
            got = "classified" + (f" ({c.note})" if c.note else "")
            code = "0"
        elif c.expect == NO_ROW:
            got = f"no row: {c.note}"
            code = "0"
        else:
            got = f"error row `<path>: {c.expect}…`" + (f" ({c.note})" if c.note else "")
            code = "1"
        lines.append(f"| {_cell(c.what)} | {_cell(got)} | {code} |")
    lines.append("| **`--model`** (one line printed, nothing classified) | | |")
    for m in MODEL_CASES:
        if m.code == EXIT_ROW_ERROR:
            got = f"error row for every image `{m.expect}`"
        else:
            got = f"`error: <model>: {m.expect}…`"
        lines.append(f"| {_cell(m.what)} | {_cell(got)} | {m.code} |")
    lines.append("| **paths and outputs** | | |")
    for r in RUN_CASES:
        got = "one error row (`symbolic link loop`)" if r.code == EXIT_ROW_ERROR \
            else f"`error: …{r.expect}…`"
        lines.append(f"| {_cell(r.what)} | {_cell(got)} | {r.code} |")
    return "\n".join(lines) + "\n"


def test_the_doc_table_is_generated_from_these_cases() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    current = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert current == markdown_table(), \
        "docs/reliability.md is stale: run `python tests/test_hostile_inputs.py --write`"


def _write_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{markdown_table()}{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        _write_doc()
    else:
        sys.stdout.write(markdown_table())
