"""Write the seed corpora: small valid files of each image format and mode, and specs.

    python fuzz/make_corpus.py

Deterministic; the files are committed (a few KiB in all).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from leukoedge.spec import SCHEMA_VERSION, ModelSpec

HERE = Path(__file__).resolve().parent / "corpus"


def images() -> dict[str, bytes]:
    size = 24
    yy, xx = np.mgrid[:size, :size]
    a = np.zeros((size, size, 3), np.uint8)
    a[np.hypot(yy - size / 2, xx - size / 2) < size / 3] = (140, 90, 170)
    im = Image.fromarray(a)
    g16 = Image.fromarray(a[..., 0].astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = 6
    cases = {
        "rgb.bmp": (im, "BMP", {}), "palette8.bmp": (im.convert("P"), "BMP", {}),
        "mono.bmp": (im.convert("1"), "BMP", {}), "rgb.png": (im, "PNG", {}),
        "rgba.png": (im.convert("RGBA"), "PNG", {}),
        "palette_trns.png": (im.convert("P"), "PNG", {"transparency": 0}),
        "gray16.png": (g16, "PNG", {}), "gray.png": (im.convert("L"), "PNG", {}),
        "rgb.jpg": (im, "JPEG", {"quality": 80}),
        "progressive.jpg": (im, "JPEG", {"progressive": True}),
        "cmyk.jpg": (im.convert("CMYK"), "JPEG", {}), "exif.jpg": (im, "JPEG", {"exif": exif}),
        "animated.gif": (im.convert("P"), "GIF",
                         {"save_all": True, "append_images": [im.rotate(90).convert("P")]}),
        "pages.tif": (im, "TIFF", {"save_all": True, "append_images": [im.rotate(90)]}),
        "lzw.tif": (im, "TIFF", {"compression": "tiff_lzw"}), "gray16.tif": (g16, "TIFF", {}),
        "rgb.webp": (im, "WEBP", {}), "rgb.ppm": (im, "PPM", {}),
        "rle.tga": (im, "TGA", {"compression": "tga_rle"}), "rgb.ico": (im, "ICO", {}),
        "rgba.dds": (im.convert("RGBA"), "DDS", {}),
    }
    out = {}
    for name, (img, fmt, kw) in cases.items():
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()
    return out


def specs() -> dict[str, bytes]:
    full = ModelSpec(architecture="resnet18", input_size=224, crop_fraction=0.9,
                     interpolation="bicubic", mean=(0.5, 0.4, 0.6), std=(0.2, 0.2, 0.2),
                     threshold=0.42, data_fingerprint="sha256:" + "ab" * 32, train_images=8000,
                     created_at="2025-01-01T00:00:00Z", tool_version="0.1.0",
                     metrics={"val_weighted_f1": 0.87}, notes="seed")
    minimal = {"schema_version": 1, "architecture": "x", "input_size": 8}
    return {"full.json": full.to_json().encode(),
            "minimal.json": json.dumps(minimal).encode(),
            "newer.json": json.dumps({**minimal,
                                      "schema_version": SCHEMA_VERSION + 1}).encode()}


def main() -> None:
    for sub, files in (("image", images()), ("spec", specs())):
        (HERE / sub).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (HERE / sub / name).write_bytes(data)


if __name__ == "__main__":
    main()
