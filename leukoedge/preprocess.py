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

import errno
import io
import math
import os
import stat
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import ImageError, first_line

if TYPE_CHECKING:
    from .spec import ModelSpec

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
    NotImplementedError,  # DDS/BLP headers with pixel formats Pillow does not implement
    Image.DecompressionBombError,
)

Source = Union[str, "os.PathLike[str]", bytes, IO[bytes]]

_filters_set = False


def _quiet_bomb_warning() -> None:
    """Our own cap (lower than Pillow's) decides; Pillow's warning would only be noise.

    So are the UserWarnings Pillow's plugins issue on damaged metadata ("Corrupt EXIF
    data", "Tag data larger than file"): they name no file and the outcome (an array or
    an ImageError naming the file) is what the user needs.
    """
    global _filters_set
    if not _filters_set:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        _filters_set = True


def describe(source: Source) -> str:
    """A one-line, valid-UTF-8 name for messages: paths escaped as in result rows."""
    if isinstance(source, (str, os.PathLike)):
        from .output import escape_path

        return escape_path(source)
    if isinstance(source, bytes):
        return "<bytes>"
    return str(getattr(source, "name", "<stream>"))


def _os_error_text(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image"
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    return f"cannot open ({exc.strerror or type(exc).__name__})"


def _open_regular_file(path: str | os.PathLike[str], name: str) -> IO[bytes]:
    """Open ``path`` for reading, refusing anything but a regular file.

    ``O_NONBLOCK`` so that a FIFO without a writer cannot hang the run (it is then refused
    from ``fstat``); the check is made on the opened descriptor, so a file swapped between
    the check and the read cannot slip through. Reading from our own descriptor also keeps
    Pillow from memory-mapping the file: a file truncated by someone else while it is mapped
    would kill the process with SIGBUS instead of failing this one file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = _os_error_text(exc)
        if exc.errno == errno.ENXIO:  # a Unix socket: say what it is
            try:
                why = f"not a regular file ({_kind(os.stat(path).st_mode)}), not an image"
            except OSError:
                pass
        raise ImageError(f"{name}: {why}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{name}: is a directory, not an image")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{name}: not a regular file ({_kind(st.st_mode)}), not an image")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except ImageError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise ImageError(f"{name}: {_os_error_text(exc)}") from exc


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


@contextmanager
def _stream(source: Source, name: str) -> Iterator[IO[bytes]]:
    """The bytes of ``source`` as a seekable stream, closed afterwards if we opened it."""
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        with _open_regular_file(source, name) as fh:
            yield fh
    else:
        yield source


def _open_stream(stream: IO[bytes], name: str) -> ImageFile.ImageFile:
    """``Image.open`` a stream lazily and check its size; pixels are not decoded yet."""
    _quiet_bomb_warning()
    try:
        img = Image.open(stream)
    except Image.DecompressionBombError as exc:  # Pillow's own cap, above ours
        raise ImageError(f"{name}: image is too large ({first_line(exc)}); the limit is "
                         f"{MAX_PIXELS} pixels (decompression bomb guard)") from exc
    except UnidentifiedImageError as exc:  # its text names the stream object: useless here
        raise ImageError(f"{name}: not a readable image (no image format recognised)") \
            from exc
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: not a readable image ({first_line(exc)})") from exc
    w, h = img.size
    if w < 1 or h < 1:
        img.close()
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        img.close()
        raise ImageError(f"{name}: image is too large ({w}x{h} = {w * h} pixels); the "
                         f"limit is {MAX_PIXELS} pixels (decompression bomb guard)")
    return img


def open_image(source: Source) -> ImageFile.ImageFile:
    """Open an image lazily and check its size; pixels are not decoded yet.

    For a path, the returned image owns the file it opened (closed by ``img.close()`` or
    after ``img.load()``), as with ``Image.open(path)``.
    """
    name = describe(source)
    if isinstance(source, bytes):
        return _open_stream(io.BytesIO(source), name)
    if not isinstance(source, (str, os.PathLike)):
        return _open_stream(source, name)
    fh = _open_regular_file(source, name)
    try:
        img = _open_stream(fh, name)
    except ImageError:
        fh.close()
        raise
    img._exclusive_fp = True  # what Image.open(path) sets
    return img


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
    with _stream(source, name) as stream:
        return _preprocess_stream(stream, name, size, crop_fraction, resample)


def _preprocess_stream(stream: IO[bytes], name: str, size: int, crop_fraction: float,
                       resample: Image.Resampling) -> np.ndarray:
    img = _open_stream(stream, name)
    try:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        rgb = to_rgb(img)
        w, h = rgb.size
        if w != h:
            side = max(w, h)
            if side * side > MAX_PIXELS:
                # The pixel cap holds for the file, not for its black square: a 40000x1
                # strip would become a 40000x40000 canvas (4.8 GB). Shrink it by an integer
                # factor first (a box filter, as reducing_gap does) so the canvas fits too.
                rgb = rgb.reduce(-(-side // math.isqrt(MAX_PIXELS)))
                w, h = rgb.size
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
        raise ImageError(f"{name}: image is too large ({first_line(exc)})") from exc
    except DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot decode image ({first_line(exc)})") from exc
    finally:
        img.close()
    if arr.shape != (size, size, 3):
        raise ImageError(f"{name}: decoded to unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


@dataclass
class Decoded:
    """What :func:`decode_batch` made of a list of files."""

    pixels: np.ndarray                   # uint8 [K, size, size, 3], the readable files
    kept: list[int]                      # their indices in the list given
    skipped: list[tuple[int, str]] = field(default_factory=list)  # index, why (one line)


def decode_batch(sources: Sequence[Source], size: int, crop_fraction: float = 1.0,
                 interpolation: str = "bilinear", workers: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Decoded:
    """Decode and resize many files into one uint8 batch: the one batch decoder.

    Threads, because Pillow releases the GIL while decoding and resizing. A file that
    cannot be read is skipped and reported in ``Decoded.skipped`` with the reason (as a
    batch run turns a bad file into an error row); the caller says so. ``progress`` is
    called with 1 after each file.
    """
    out = np.empty((len(sources), size, size, 3), dtype=np.uint8)
    why: dict[int, str] = {}
    n_workers = workers or min(8, len(os.sched_getaffinity(0)))

    def one(i: int) -> None:
        try:
            out[i] = preprocess(sources[i], size, crop_fraction, interpolation)
        except ImageError as exc:
            why[i] = exc.message

    if len(sources) <= 1 or n_workers <= 1:
        for i in range(len(sources)):
            one(i)
            if progress is not None:
                progress(1)
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for _ in pool.map(one, range(len(sources))):
                if progress is not None:
                    progress(1)
    if not why:
        return Decoded(out, list(range(len(sources))))
    keep = [i for i in range(len(sources)) if i not in why]
    return Decoded(out[keep], keep, [(i, why[i]) for i in sorted(why)])


def decode_for(sources: Sequence[Source], spec: ModelSpec, workers: int | None = None,
               progress: Callable[[int], None] | None = None) -> Decoded:
    """:func:`decode_batch` with the input size, crop and interpolation a spec names."""
    return decode_batch(sources, spec.input_size, spec.crop_fraction, spec.interpolation,
                        workers, progress)


def preprocess_for(source: Source, spec: ModelSpec) -> np.ndarray:
    """``preprocess`` with the input size, crop and interpolation a ModelSpec names."""
    return preprocess(source, spec.input_size, spec.crop_fraction, spec.interpolation)


#: A pixel belongs to the cell when its R+G+B (0-765) exceeds this: the background of the
#: C-NMC cells is black (the same rule as the training plugin's greyworld normalisation).
CELL_LEVEL = 30


def cell_colour(images: np.ndarray) -> np.ndarray:
    """Colour statistics of each cell of a batch of model inputs (uint8 ``[N, S, S, 3]``,
    what :func:`preprocess` returns): float64 ``[N, 6]``, the mean and the standard
    deviation of each channel's optical density ``-ln((I + 1) / 256)`` over the cell's
    pixels (R+G+B > :data:`CELL_LEVEL`; the whole image when none is).

    Optical density rather than RGB because stains absorb light (Beer-Lambert): the amount
    of each stain is linear in optical density, so a lighter or darker staining moves these
    statistics along a line instead of bending them near white. Used by the drift score
    (:mod:`leukoedge.drift`), so classify, serve and validation compute it alike.
    """
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"expected uint8 [N,S,S,3], got {x.dtype} {x.shape}")
    n = x.shape[0]
    flat = x.reshape(n, -1, 3)
    mask = flat.sum(axis=2, dtype=np.int32) > CELL_LEVEL
    mask[~mask.any(axis=1)] = True  # no cell pixel: the whole image
    # one histogram of the 256 levels per image and channel, then moments from the table:
    # integer work over the pixels, float work over 256 levels (10x faster than per pixel)
    base = ((np.arange(n, dtype=np.int32)[:, None] * 3 + np.arange(3, dtype=np.int32))
            * 256)  # [N, 3]
    idx = flat + base[:, None, :]  # int32 [N, P, 3]
    idx[~mask] = n * 3 * 256  # background: one extra bin, dropped
    hist = np.bincount(idx.ravel(), minlength=n * 3 * 256 + 1)[:-1].reshape(n, 3, 256)
    hist = hist.astype(np.float64)
    count = hist.sum(axis=2)
    mean = hist @ _OD_TABLE / count
    var = np.maximum(hist @ (_OD_TABLE ** 2) / count - mean * mean, 0.0)
    out: np.ndarray = np.concatenate([mean, np.sqrt(var)], axis=1)
    return out


_OD_TABLE = -np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
