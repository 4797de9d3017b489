from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from leukoedge.errors import ImageError
from leukoedge.preprocess import MAX_PIXELS, preprocess


def cell_array(size: int = 90) -> np.ndarray:
    """A violet disc on black, like a C-NMC cell."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    a = np.zeros((size, size, 3), np.uint8)
    a[r < size / 3] = (140, 90, 170)
    return a


def save(img: Image.Image, path: Path, **kw: object) -> Path:
    img.save(path, **kw)
    return path


def test_real_bmp_shape_dtype_and_content(shared_cells: Path) -> None:
    f = next((shared_cells / "fold_0" / "all").glob("*.bmp"))
    a = preprocess(f, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and a.flags["C_CONTIGUOUS"]
    assert a[0, 0].max() < 10, "corners of a C-NMC cell are black"
    assert a[32, 32].mean() > 50, "the centre holds the cell"


def test_bmp_header_variants(tmp_path: Path) -> None:
    """40-byte BITMAPINFOHEADER (training images) and 124-byte V5 (test images)."""
    arr = cell_array()
    p40 = save(Image.fromarray(arr), tmp_path / "v3.bmp")
    assert struct.unpack_from("<I", p40.read_bytes(), 14)[0] == 40
    # Build a V5 header by hand: same pixels, 124-byte info header.
    raw = p40.read_bytes()
    pixels = raw[54:]
    w = h = arr.shape[0]
    v5 = struct.pack("<IiiHHIIiiII", 124, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    v5 += b"\0" * (124 - len(v5))
    head = b"BM" + struct.pack("<IHHI", 14 + 124 + len(pixels), 0, 0, 14 + 124)
    p124 = tmp_path / "v5.bmp"
    p124.write_bytes(head + v5 + pixels)
    a, b = preprocess(p40, 45), preprocess(p124, 45)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("TIFF", "tif"),
                                     ("BMP", "BMP")])
def test_formats(tmp_path: Path, fmt: str, ext: str) -> None:
    arr = cell_array()
    p = save(Image.fromarray(arr), tmp_path / f"c.{ext}", format=fmt)
    ref = preprocess(save(Image.fromarray(arr), tmp_path / "ref.png"), 30).astype(int)
    got = preprocess(p, 30).astype(int)
    assert np.abs(got - ref).mean() < (4 if fmt == "JPEG" else 0.001)


def test_modes(tmp_path: Path) -> None:
    arr = cell_array()
    gray = Image.fromarray(arr).convert("L")
    g = preprocess(save(gray, tmp_path / "l.png"), 30)
    assert np.array_equal(g[..., 0], g[..., 1]) and g.max() > 0

    pal = Image.fromarray(arr).convert("P")
    assert preprocess(save(pal, tmp_path / "p.png"), 30).max() > 0

    cmyk = Image.fromarray(arr).convert("CMYK")
    c = preprocess(save(cmyk, tmp_path / "c.jpg", quality=95), 30)
    assert c.mean() > 5


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., :3] = 255  # white everywhere ...
    a[10:30, 10:30, 3] = 255  # ... but opaque only in the middle
    out = preprocess(save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"), 40)
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[20, 20].tolist() == [255, 255, 255]


def test_16_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    a = np.full((20, 20), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    p = save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(p).mode.startswith("I")
    out = preprocess(p, 20)
    assert 125 <= int(out.mean()) <= 130  # clipping would give 255


def test_non_square_is_padded_not_cropped(tmp_path: Path) -> None:
    a = np.full((20, 60, 3), 200, np.uint8)
    out = preprocess(save(Image.fromarray(a), tmp_path / "wide.png"), 30)
    assert out[0, 15].max() == 0 and out[15, 15].min() == 200
    assert out[15, 1].min() == 200, "the full width is kept"


def test_crop_fraction_keeps_the_centre(tmp_path: Path) -> None:
    a = np.zeros((100, 100, 3), np.uint8)
    a[40:60, 40:60] = 255
    out = preprocess(save(Image.fromarray(a), tmp_path / "c.png"), 20, crop_fraction=0.2)
    assert out.min() > 200


def test_tiny_and_large_images(tmp_path: Path) -> None:
    one = preprocess(save(Image.new("RGB", (1, 1), (9, 8, 7)), tmp_path / "1.png"), 16)
    assert one.shape == (16, 16, 3) and one[8, 8].tolist() == [9, 8, 7]
    big = preprocess(save(Image.new("RGB", (4000, 3000), (50, 60, 70)), tmp_path / "b.bmp"),
                     32)
    assert big[16, 16].tolist() == [50, 60, 70]


def bomb_png(w: int, h: int) -> bytes:
    """A PNG header claiming w x h pixels (no real pixel data)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png(40000, 40000))
    with pytest.raises(ImageError, match="limit|too large"):
        preprocess(p, 32)
    assert 40000 * 40000 > MAX_PIXELS


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n", bytes(range(256)) * 4])
def test_unreadable_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.bmp"
    p.write_bytes(content)
    with pytest.raises(ImageError) as e:
        preprocess(p, 32)
    assert "x.bmp" in str(e.value)


def test_truncated_bmp(tmp_path: Path, shared_cells: Path) -> None:
    src = next((shared_cells / "fold_0" / "hem").glob("*.bmp")).read_bytes()
    p = tmp_path / "t.bmp"
    p.write_bytes(src[: len(src) // 2])
    with pytest.raises(ImageError, match="t.bmp"):
        preprocess(p, 32)


def test_png_named_bmp_is_read(tmp_path: Path) -> None:
    p = tmp_path / "really_png.bmp"
    Image.fromarray(cell_array()).save(p, format="PNG")
    assert preprocess(p, 30).max() > 0


def test_directory_and_missing(tmp_path: Path) -> None:
    (tmp_path / "d.bmp").mkdir()
    with pytest.raises(ImageError, match="directory"):
        preprocess(tmp_path / "d.bmp", 32)
    with pytest.raises(ImageError, match="not found"):
        preprocess(tmp_path / "nope.bmp", 32)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_array_or_image_error(raw: bytes) -> None:
    try:
        a = preprocess(raw, 16)
    except ImageError:
        return
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8


@given(st.integers(1, 64), st.integers(1, 64), st.sampled_from(["RGB", "L", "RGBA", "P",
                                                                  "I;16", "1", "LA", "CMYK"]),
       st.integers(8, 48))
def test_any_mode_and_size_gives_the_spec_shape(w: int, h: int, mode: str, size: int) -> None:
    img = Image.new(mode, (w, h))
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("I;16", "CMYK", "LA") else "PNG")
    a = preprocess(buf.getvalue(), size)
    assert a.shape == (size, size, 3) and a.dtype == np.uint8


def test_decode_batch_skips_a_bad_file_and_reports_it(tmp_path):
    from PIL import Image

    from leukoedge.preprocess import decode_batch

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    dec = decode_batch([good, bad, good], 16, workers=2)
    assert dec.kept == [0, 2]
    assert dec.pixels.shape == (2, 16, 16, 3) and dec.pixels.dtype == np.uint8
    assert [i for i, _ in dec.skipped] == [1] and "bad.png" in dec.skipped[0][1]
    assert dec.pixels[0, 8, 8, 0] > 150
