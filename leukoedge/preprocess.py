"""The one image pipeline, shared by training and deployment.

``preprocess(path, size)`` turns any image Pillow can read into the uint8 RGB ``[size,
size, 3]`` array a leukoedge model takes:

1. open lazily and refuse images over :data:`MAX_PIXELS` from the header alone
   (decompression bombs) before any pixel is decoded;
2. bring every mode to 8-bit RGB: RGB as is (no copy); L, P, CMYK, YCbCr... through
   Pillow; 16/32-bit integer gray (``I;16``, ``I``) scaled to 8 bits (/257), not clipped;
   float gray clipped to 0..255; anything with alpha (RGBA, LA, PA, P or L/RGB with a
   transparent colour) composited on black, the background of the cells;
3. non-square images are padded to a square with black, centred (nothing is cut off);
4. the central ``crop_fraction`` of the square is kept and resized to ``size`` with an
   antialiased filter, in one Pillow call (``box=`` + ``reducing_gap``).

Every problem with one file raises :class:`~leukoedge.errors.ImageError` naming the file;
in batch runs that becomes an error row.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image

from .errors import ImageError

#: Largest image accepted, in pixels (width * height). Real C-NMC cells are 450x450
#: (0.2 MP); 40 MP leaves room for whole smears while refusing decompression bombs.
MAX_PIXELS = 40_000_000

#: Pillow first shrinks by an integer factor with a box filter (``Image.reduce``), then
#: resamples the rest. With 1.0, decode + resize of a 450 px BMP runs at ~900/s instead of
#: ~490/s at 128 px (1.6x at 224 px) on one core; the result differs from a plain resize by
#: 0.13 grey levels on average. Part of the pipeline: training uses it too.
REDUCING_GAP = 1.0

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Exceptions Pillow's decoders are known to raise on malformed files. Listed, not
# ``Exception``: a bug of ours must not be relabelled as a bad image.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    Image.DecompressionBombError,
)

Source = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

_filters_set = False


def _quiet_bomb_warning() -> None:
    """Our own cap (lower than Pillow's) decides; Pillow's warning would only be noise."""
    global _filters_set
    if not _filters_set:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        _filters_set = True


def describe(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, bytes):
        return "<bytes>"
    return getattr(source, "name", "<stream>")


def open_image(source: Source) -> Image.Image:
    """Open an image lazily and check its size; pixels are not decoded yet."""
    _quiet_bomb_warning()
    name = describe(source)
    if isinstance(source, bytes):
        import io

        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        p = Path(os.fsdecode(source))
        if p.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        if not p.exists():
            raise ImageError(f"{name}: file not found")
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large ({exc}); limit is {MAX_PIXELS} "
                         "pixels") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{name}: file not found") from exc
    except PermissionError as exc:
        raise ImageError(f"{name}: permission denied") from exc
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: not a readable image ({_short(exc)})") from exc
    w, h = img.size
    if w < 1 or h < 1:
        img.close()
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(f"{name}: image is {w}x{h} = {w * h} pixels, over the limit of "
                         f"{MAX_PIXELS} (decompression bomb guard)")
    return img


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def to_rgb(img: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit RGB as described in the module docstring."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img)
        if a.ndim != 2:
            raise ValueError(f"unexpected {mode} array shape {a.shape}")
        a = a.astype(np.int64)
        if mode.startswith("I;16") or int(a.max(initial=0)) > 255:
            a = (np.clip(a, 0, 65535) * 255 + 32767) // 65535
        g = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2))
    if mode == "F":
        g = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32)), 0, 255)
        g = np.rint(g).astype(np.uint8)
        return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        rgb = (rgba[:, :, :3] * alpha + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    return img.convert("RGB")


def _square_box(w: int, h: int, crop_fraction: float) -> tuple[float, float, float, float]:
    side = min(w, h) * crop_fraction
    cx, cy = w / 2.0, h / 2.0
    return (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)


def preprocess(
    source: Source,
    size: int,
    crop_fraction: float = 1.0,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """Read one image and return the model input: uint8 RGB ``[size, size, 3]``.

    Raises :class:`ImageError` for anything wrong with this one file.
    """
    resample = _RESAMPLE[interpolation]
    name = describe(source)
    img = open_image(source)
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        rgb = to_rgb(img)
        w, h = rgb.size
        if w != h:
            side = max(w, h)
            canvas = Image.new("RGB", (side, side))
            canvas.paste(rgb, ((side - w) // 2, (side - h) // 2))
            rgb, w, h = canvas, side, side
        box = _square_box(w, h, crop_fraction)
        out = rgb.resize((size, size), resample, box=box, reducing_gap=REDUCING_GAP)
        arr = np.asarray(out, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image is too large ({_short(exc)})") from exc
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot decode image ({_short(exc)})") from exc
    finally:
        img.close()
    if arr.shape != (size, size, 3):
        raise ImageError(f"{name}: decoded to unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def preprocess_for(source: Source, spec: object) -> np.ndarray:
    """``preprocess`` with the input size, crop and interpolation a ModelSpec names."""
    return preprocess(
        source,
        spec.input_size,  # type: ignore[attr-defined]
        spec.crop_fraction,  # type: ignore[attr-defined]
        spec.interpolation,  # type: ignore[attr-defined]
    )
