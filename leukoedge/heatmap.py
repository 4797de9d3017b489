"""Heatmap overlays (``classify --cam DIR``): the model's ``cam`` output drawn on the image.

The map (``[h, w]``, raw: positive = evidence for ALL) covers what the model saw: the
central ``crop_fraction`` of the image padded to a square (:mod:`.preprocess`). It is
upsampled bilinearly (pixel centres, edges clamped) onto the *original* image's pixels,
through that same geometry; pixels outside the crop get no colour. Display choices, made
here and nowhere else: each map is divided by its own largest ``|value|`` (so colours
compare regions within one cell, not cells), drawn in a blue-grey-red diverging colormap
(red: evidence for ALL, blue: against), blended with opacity ``OPACITY * |value|`` (no
evidence leaves the cell as it is). numpy and Pillow only.

Overlays mirror the inputs' relative paths under DIR, from the deepest folder that holds
every input (two input folders keep their names, so nothing collides), named after the
whole file name plus ``.png`` (``a.bmp`` -> ``a.bmp.png``: distinct inputs never share an
overlay). Each is written to a temporary file beside it and renamed into place
(:func:`.output.atomic_path`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError, OutputExistsError, UsageError
from .output import atomic_path, escape_path
from .preprocess import open_image, to_rgb

#: blue - light grey - red (anchors of the diverging colormap, at -1, 0 and 1)
_ANCHORS = np.array([[59, 76, 192], [221, 221, 221], [180, 4, 38]], dtype=np.float64)
OPACITY = 0.6
SUFFIX = ".png"


def colormap(t: np.ndarray) -> np.ndarray:
    """``t`` in [-1, 1] -> RGB float [..., 3] in 0..255 (linear between the anchors)."""
    t = np.clip(t, -1.0, 1.0)
    x = np.array([-1.0, 0.0, 1.0])
    return np.asarray(np.stack([np.interp(t, x, _ANCHORS[:, c]) for c in range(3)], axis=-1),
                      dtype=np.float64)


def _axis(n: int, offset: int, start: float, length: float, cells: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For original pixels 0..n-1 on one axis: the two map cells to blend, the weight of
    the second, and whether the pixel lies inside the crop."""
    centre = np.arange(n, dtype=np.float64) + 0.5 + offset  # in the padded square
    u = (centre - start) / length * cells - 0.5
    inside = (centre >= start) & (centre <= start + length)
    u = np.clip(u, 0.0, cells - 1.0)
    lo = np.floor(u).astype(np.int64)
    hi = np.minimum(lo + 1, cells - 1)
    return lo, hi, u - lo, inside


def upsample(cam: np.ndarray, width: int, height: int, crop_fraction: float
             ) -> np.ndarray:
    """The map on the original image's pixels ``[height, width]``; NaN outside the crop."""
    mh, mw = cam.shape
    side = max(width, height)
    crop = side * crop_fraction
    start = side / 2.0 - crop / 2.0
    x0, x1, fx, inx = _axis(width, (side - width) // 2, start, crop, mw)
    y0, y1, fy, iny = _axis(height, (side - height) // 2, start, crop, mh)
    c = cam.astype(np.float64)
    top = c[y0][:, x0] * (1 - fx) + c[y0][:, x1] * fx
    bottom = c[y1][:, x0] * (1 - fx) + c[y1][:, x1] * fx
    out = top * (1 - fy)[:, None] + bottom * fy[:, None]
    out[~(iny[:, None] & inx[None, :])] = np.nan
    return np.asarray(out, dtype=np.float64)


def _scaled(cam: np.ndarray, width: int, height: int, crop_fraction: float) -> np.ndarray:
    """The map on ``[height, width]`` pixels divided by its largest ``|value|``, in
    [-1, 1]; 0 outside the crop."""
    m = upsample(cam, width, height, crop_fraction)
    peak = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.0
    return np.nan_to_num(m / peak if peak > 0 else np.zeros_like(m))


def overlay(rgb: np.ndarray, cam: np.ndarray, crop_fraction: float) -> np.ndarray:
    """``rgb`` uint8 ``[H, W, 3]`` with ``cam`` drawn on it (module docstring)."""
    h, w = rgb.shape[:2]
    t = _scaled(cam, w, h, crop_fraction)
    alpha = (OPACITY * np.abs(t))[..., None]
    out = rgb.astype(np.float64) * (1 - alpha) + colormap(t) * alpha
    return np.asarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def layer(cam: np.ndarray, width: int, height: int, crop_fraction: float) -> np.ndarray:
    """The overlay alone, RGBA uint8 ``[height, width, 4]``: the colour with the opacity
    :func:`overlay` blends it with, so drawing it over the image gives :func:`overlay`'s
    picture (transparent outside the crop and where there is no evidence)."""
    t = _scaled(cam, width, height, crop_fraction)
    alpha = OPACITY * np.abs(t) * 255.0
    rgba = np.concatenate([colormap(t), alpha[..., None]], axis=-1)
    return np.asarray(np.clip(np.rint(rgba), 0, 255), dtype=np.uint8)


#: the longest side of a served heatmap (``serve``'s ``?heatmaps=1``): the page draws it
#: over a thumbnail 128 px wide, and the map itself is 7x7 to 16x16 cells
SERVED_SIDE = 192


def data_url(source: bytes, cam: np.ndarray, crop_fraction: float,
             side: int = SERVED_SIDE) -> str | None:
    """``cam`` as a transparent PNG layer (:func:`layer`) with the aspect of the image in
    ``source`` (its header is read, its pixels are not), at most ``side`` pixels on its
    longer side, as a ``data:image/png;base64,...`` URL; None when ``source`` cannot be
    opened (it was decoded once already, so only a changed file gets here)."""
    import base64
    import io

    try:
        img = open_image(source)
    except ImageError:
        return None
    try:
        w, h = img.size
    finally:
        img.close()
    scale = min(1.0, side / max(w, h, 1))
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    buf = io.BytesIO()
    Image.fromarray(layer(cam, w, h, crop_fraction), "RGBA").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render(path: str | os.PathLike[str], cam: np.ndarray, crop_fraction: float) -> Image.Image:
    """Decode the original image (the same safe opening as preprocessing) and draw."""
    img = open_image(path)
    try:
        rgb = np.asarray(to_rgb(img), dtype=np.uint8)
    finally:
        img.close()
    return Image.fromarray(overlay(rgb, cam, crop_fraction))


def common_root(inputs: Sequence[str | os.PathLike[str]]) -> Path:
    """The deepest folder holding every input (a file input counts as its folder)."""
    folders = []
    for raw in inputs:
        p = Path(os.path.abspath(os.fsdecode(raw)))
        folders.append(str(p if p.is_dir() else p.parent))
    if not folders:
        raise UsageError("no inputs to mirror under --cam")
    return Path(os.path.commonpath(folders))


class OverlayWriter:
    """Where each input's overlay goes, the refusal of existing ones, and writing them."""

    def __init__(self, out_dir: Path, inputs: Sequence[str | os.PathLike[str]],
                 crop_fraction: float, overwrite: bool = False) -> None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--cam {escape_path(out_dir)} is a file", "name a folder")
        self.out_dir = out_dir
        self.root = common_root(inputs)
        self.crop_fraction = crop_fraction
        self.overwrite = overwrite

    def dest(self, path: str | os.PathLike[str]) -> Path:
        p = Path(os.path.abspath(os.fsdecode(path)))
        try:
            rel = p.relative_to(self.root)
        except ValueError:  # cannot happen for collected inputs; keep it under DIR anyway
            rel = Path(p.name)
        return self.out_dir / rel.parent / (rel.name + SUFFIX)

    def refuse_existing(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Without ``overwrite``: an overlay already there for any of ``paths`` is refused
        before any work (the files a resumed run skips are not passed here)."""
        if self.overwrite:
            return
        found = [d for d in (self.dest(p) for p in paths) if d.exists()]
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise OutputExistsError(
                f"heatmap {escape_path(found[0])}{more} already exist(s)",
                "add --overwrite to replace them, --resume to finish a run, or choose "
                "another --cam folder")

    def write(self, path: str | os.PathLike[str], cam: np.ndarray) -> str | None:
        """Draw and write ``path``'s overlay; its escaped path, or None when the original
        cannot be decoded again (it changed since preprocessing). A failed write (disk
        full, permissions) is a DataError: it stops the run, as the result file's does."""
        dest = self.dest(path)
        try:
            img = render(path, cam, self.crop_fraction)
        except ImageError:
            return None
        with atomic_path(dest, "heatmap", "free some space or choose another --cam folder, "
                         "then rerun with --resume") as tmp, open(tmp, "wb") as fh:
            img.save(fh, format="PNG")
        return escape_path(dest)
