"""Synthetic C-NMC-like single-cell images with known, tunable difficulty.

The generator draws segmented "blood-smear" cells that look like the C-NMC 2019
training images (450x450 RGB, one violet-stained cell on a pure black
background) and writes them in the dataset's training layout::

    out/fold_<f>/all/UID_<p>_<i>_<c>_all.bmp     (ALL, label 1)
    out/fold_<f>/hem/UID_H<p>_<i>_<c>_hem.bmp    (HEM, label 0)
    out/traits.csv                               (the "oracle" table)

The two classes differ only through a handful of morphological *traits*
(:class:`CellTraits`) whose class-conditional distributions overlap
(:data:`TRAIT_MODEL`).  Each patient has its own stain tint and brightness and
its own offset on every trait (:class:`PatientStyle`), so cells of one patient
are correlated -- the patient leak of the real dataset.  The difficulty of the
task is therefore known: a classifier on the true trait values reaches about
0.95 accuracy on held-out patients, mean colour alone carries little class
information, and pixel-level models profit from an image-level split.  See
``docs/synthetic.md`` for the measured numbers.

Synthetic cells are meant for tests and demos; they are not a substitute for
C-NMC data.

Only numpy and Pillow are used (no torch).  Every patient and every cell gets
its own random stream derived from ``(seed, patient, cell)`` through
:class:`numpy.random.SeedSequence`, so the output is byte-identical for the same
configuration regardless of the generation order.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .output import atomic_path, atomic_write_bytes

__all__ = [
    "REFERENCE_SIZE",
    "TRAIT_MODEL",
    "TRAIT_NAMES",
    "CellTraits",
    "PatientStyle",
    "SynthConfig",
    "SynthSummary",
    "TraitDistribution",
    "generate",
    "make_patients",
    "render_cell",
    "sample_cells",
    "sample_traits",
]

#: Image side (px) of the real C-NMC cells; all lengths below are given at this
#: size and scaled linearly for other sizes.
REFERENCE_SIZE = 450

# Stream tags for SeedSequence spawn keys (keep stable: they define the output).
_KEY_PATIENT = 1
_KEY_CELL = 2
_KEY_IMAGES = 3

# Resolution of the angular lookup table of an outline r(theta).
_N_ANGLES = 1024


# --------------------------------------------------------------------------- #
# Trait model
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class TraitDistribution:
    """Class-conditional distribution of one trait.

    A cell's value is ``class_mean + patient_offset + cell_noise`` clipped to
    ``[low, high]``, with ``patient_offset ~ N(0, patient_sd)`` drawn once per
    patient and ``cell_noise ~ N(0, cell_sd)`` drawn per cell.  Count traits
    (``poisson=True``) instead draw ``Poisson(max(class_mean + offset, 0))``.
    """

    hem_mean: float
    all_mean: float
    cell_sd: float
    patient_sd: float
    low: float
    high: float
    poisson: bool = False

    def mean(self, label: int) -> float:
        """Class mean for ``label`` (1 = ALL, 0 = HEM)."""
        return self.all_mean if label == 1 else self.hem_mean


#: The traits that separate ALL from HEM, with their class distributions.
#: Lengths are in pixels at :data:`REFERENCE_SIZE`.
TRAIT_MODEL: dict[str, TraitDistribution] = {
    # Equivalent radius of the whole cell.  Lymphoblasts are larger.
    "cell_radius": TraitDistribution(95.0, 107.0, 3.5, 8.5, 78.0, 124.0),
    # Nucleus area / cell area.  Blasts have scant cytoplasm.
    "nc_ratio": TraitDistribution(0.72, 0.82, 0.05, 0.02, 0.50, 0.95),
    # Chromatin coarseness in [0, 1]: high = clumped, high-contrast, coarse
    # (mature lymphocyte); low = fine, dispersed (blast).
    "chromatin": TraitDistribution(0.60, 0.40, 0.13, 0.05, 0.05, 0.95),
    # Number of visible nucleoli (light spots in the nucleus).
    "nucleoli": TraitDistribution(0.3, 1.5, 0.0, 0.25, 0.0, 4.0, poisson=True),
    # Relative amplitude of the outline perturbation (nuclear irregularity).
    "irregularity": TraitDistribution(0.020, 0.030, 0.007, 0.003, 0.005, 0.060),
}

#: Patient stain: log-normal brightness and per-channel tint; the product is
#: clipped per channel to ``_GAIN_RANGE`` so that the mean colour stays inside
#: the range of the real cells.
_BRIGHTNESS_SD = 0.16
_TINT_SD = (0.03, 0.15, 0.03)
_GAIN_RANGE = ((0.89, 1.22), (0.84, 1.45), (0.94, 1.15))

#: Trait names in CSV column order.
TRAIT_NAMES: tuple[str, ...] = tuple(TRAIT_MODEL)


@dataclass(frozen=True)
class CellTraits:
    """Morphological traits of one cell (lengths at :data:`REFERENCE_SIZE`)."""

    cell_radius: float
    nc_ratio: float
    chromatin: float
    nucleoli: int
    irregularity: float


@dataclass(frozen=True)
class PatientStyle:
    """Patient-level random effects.

    Attributes:
        patient_id: ID as used in file names (``"7"`` or ``"H3"``).
        label: 1 for ALL, 0 for HEM.
        fold: fold index the patient's cells go to.
        brightness: overall intensity multiplier of the stain.
        tint: per-channel (R, G, B) colour multipliers of the stain.
        trait_offsets: additive offset per trait (see :data:`TRAIT_MODEL`).
        halo: strength (0..1) of the bright rim the segmentation leaves just
            inside the cell outline.
    """

    patient_id: str
    label: int
    fold: int
    brightness: float
    tint: tuple[float, float, float]
    trait_offsets: dict[str, float] = field(default_factory=dict)
    halo: float = 0.75

    @property
    def gain(self) -> tuple[float, float, float]:
        """Per-channel multipliers: brightness times tint, kept inside the real range."""
        r, g, b = (
            float(np.clip(self.brightness * t, lo, hi))
            for t, (lo, hi) in zip(self.tint, _GAIN_RANGE)
        )
        return r, g, b


# --------------------------------------------------------------------------- #
# Configuration and summary
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Attributes:
        patients: total number of patients (ALL + HEM).
        cells_per_patient: cells (images) per patient.
        seed: master seed; same config and seed give byte-identical output.
        size: image side in pixels (the real data use 450).
        all_fraction: target fraction of ALL cells; sets the number of ALL
            patients (at least one patient of each class when ``patients >= 2``).
        folds: number of folds; patients are spread over them, each patient's
            cells in exactly one fold.
    """

    patients: int = 12
    cells_per_patient: int = 20
    seed: int = 0
    size: int = 450
    all_fraction: float = 2 / 3
    folds: int = 3

    def validate(self) -> None:
        """Raise :class:`ValueError` with a clear message if a value is invalid."""

        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(self.patients) or self.patients < 1:
            raise ValueError(f"patients must be an integer >= 1, got {self.patients!r}")
        if not is_int(self.cells_per_patient) or self.cells_per_patient < 1:
            raise ValueError(
                f"cells_per_patient must be an integer >= 1, got {self.cells_per_patient!r}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not is_int(self.size) or not 32 <= self.size <= 4096:
            raise ValueError(f"size must be an integer in [32, 4096], got {self.size!r}")
        if (
            not isinstance(self.all_fraction, (int, float, np.floating))
            or isinstance(self.all_fraction, bool)
            or not 0.0 <= float(self.all_fraction) <= 1.0
        ):
            raise ValueError(
                f"all_fraction must be a number between 0 and 1, got {self.all_fraction!r}"
            )
        if not is_int(self.folds) or self.folds < 1:
            raise ValueError(f"folds must be an integer >= 1, got {self.folds!r}")
        if self.folds > self.patients:
            raise ValueError(
                f"folds ({self.folds}) must not exceed patients ({self.patients}): "
                "every fold needs at least one patient"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    traits_csv: Path
    images: int
    all_images: int
    hem_images: int
    all_patients: tuple[str, ...]
    hem_patients: tuple[str, ...]
    images_per_fold: tuple[int, ...]


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
def _patient_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_PATIENT, index)))


def _cell_rng(seed: int, patient_index: int, cell_index: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(_KEY_CELL, patient_index, cell_index))
    )


def _images_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_KEY_IMAGES, index)))


def _n_all_patients(patients: int, all_fraction: float) -> int:
    n_all = math.floor(patients * all_fraction + 0.5)
    if patients >= 2:
        n_all = min(max(n_all, 1), patients - 1)
    return n_all


def make_patients(config: SynthConfig) -> list[PatientStyle]:
    """Draw the patients of ``config``: class, ID, fold and random effects.

    ALL patients are numbered ``1..n_all`` and HEM patients ``H1..H<n_hem>``.
    Each class is dealt round-robin over the folds (HEM continuing where ALL
    stopped) so folds get similar numbers of patients of each class.
    """
    config.validate()
    n_all = _n_all_patients(config.patients, config.all_fraction)
    out: list[PatientStyle] = []
    for index in range(config.patients):
        label = 1 if index < n_all else 0
        number = index + 1 if label == 1 else index - n_all + 1
        pid = str(number) if label == 1 else f"H{number}"
        fold = index % config.folds
        rng = _patient_rng(config.seed, index)
        brightness = float(np.exp(rng.normal(0.0, _BRIGHTNESS_SD)))
        tint_r, tint_g, tint_b = (float(np.exp(rng.normal(0.0, sd))) for sd in _TINT_SD)
        halo = float(np.clip(rng.normal(0.75, 0.15), 0.4, 1.0))
        offsets = {
            name: float(rng.normal(0.0, dist.patient_sd)) for name, dist in TRAIT_MODEL.items()
        }
        out.append(
            PatientStyle(pid, label, fold, brightness, (tint_r, tint_g, tint_b), offsets, halo)
        )
    return out


def sample_traits(rng: np.random.Generator, patient: PatientStyle) -> CellTraits:
    """Draw one cell's traits from the class model plus the patient's offsets."""
    values: dict[str, float] = {}
    for name, dist in TRAIT_MODEL.items():
        mu = dist.mean(patient.label) + patient.trait_offsets.get(name, 0.0)
        if dist.poisson:
            v = float(rng.poisson(max(mu, 0.0)))
        else:
            v = mu + float(rng.normal(0.0, dist.cell_sd))
        values[name] = float(np.clip(v, dist.low, dist.high))
    return CellTraits(
        cell_radius=values["cell_radius"],
        nc_ratio=values["nc_ratio"],
        chromatin=values["chromatin"],
        nucleoli=int(values["nucleoli"]),
        irregularity=values["irregularity"],
    )


# --------------------------------------------------------------------------- #
# Rendering
# --------------------------------------------------------------------------- #
@lru_cache(maxsize=4)
def _polar_grid(half: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius (float32) and angle index (intp) of a (2*half)^2 grid centred at (half, half)."""
    ax = np.arange(-half, half, dtype=np.float32) + np.float32(0.5)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    rho = np.hypot(yy, xx).astype(np.float32)
    theta = np.arctan2(yy, xx)
    tidx = (np.round(theta * (_N_ANGLES / (2 * np.pi))).astype(np.intp)) % _N_ANGLES
    rho.setflags(write=False)
    tidx.setflags(write=False)
    return rho, tidx


def _outline(
    rng: np.random.Generator, radius: float, irregularity: float, elongation: float
) -> np.ndarray:
    """Outline r(theta) of a blob, sampled at ``_N_ANGLES`` angles.

    A circle with an elongation (harmonic k=2 with amplitude ``elongation``
    and a random phase, i.e. a random rotation) plus harmonics k=3..8 with
    random phases and gaussian amplitudes ``irregularity * (3/k)^1.5``.  The
    result is rescaled so that its area equals ``pi * radius**2``.
    """
    ks = np.arange(2, 9)
    amp = irregularity * (3.0 / ks) ** 1.5 * rng.normal(0.0, 1.0, ks.size)
    amp[0] = elongation
    phase = rng.uniform(0.0, 2 * np.pi, ks.size)
    spectrum = np.zeros(_N_ANGLES // 2 + 1, dtype=np.complex128)
    spectrum[ks] = amp * np.exp(1j * phase) * (_N_ANGLES / 2)
    r = 1.0 + np.fft.irfft(spectrum, _N_ANGLES)  # sum_k amp_k cos(k theta + phase_k)
    r = np.maximum(r, 0.5)
    r *= radius / math.sqrt(float(np.mean(r * r)))
    return r.astype(np.float32)


def _texture(
    rng: np.random.Generator, shape: tuple[int, int], fine: float, coarse: float, mix: float
) -> np.ndarray:
    """Smooth zero-mean noise of about unit variance with two spatial scales.

    Gaussian noise on a grid of spacing ``fine`` px plus (weight ``mix``)
    noise on a grid of spacing ``coarse`` px, interpolated bicubically.
    """
    gh = max(2, math.ceil(shape[0] / fine) + 2)
    gw = max(2, math.ceil(shape[1] / fine) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32) * np.float32(math.sqrt(1.0 - mix * mix))
    ch = max(2, math.ceil(shape[0] / coarse) + 2)
    cw = max(2, math.ceil(shape[1] / coarse) + 2)
    cgrid = rng.standard_normal((ch, cw), dtype=np.float32) * np.float32(mix)
    grid += np.asarray(
        Image.fromarray(cgrid, mode="F").resize((gw, gh), Image.Resampling.BICUBIC), np.float32
    )
    img = Image.fromarray(grid, mode="F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    # Bicubic interpolation between independent nodes shrinks the variance.
    return np.asarray(img, dtype=np.float32) * np.float32(1.4)


# Stain colours (R, G, B) at gain 1: nucleus, cytoplasm, bright segmentation rim.
_NUCLEUS_RGB = (69.0, 27.5, 79.0)
_CYTOPLASM_RGB = (80.0, 36.0, 91.0)
_RIM_RGB = (96.0, 58.0, 94.0)
# How strongly texture modulates each channel (real cells vary least in blue).
_SHADE_GAIN = (1.1, 1.8, 0.45)


@dataclass(frozen=True)
class _CellLayout:
    """Where one cell's parts lie, in its square bounding box of side ``2 * half`` px.

    Attributes:
        scale: length scale, ``size / REFERENCE_SIZE``.
        cy, cx: centre of the box in the image (px).
        half: half-side of the box (px).
        edge: distance inside the cell outline per box pixel (px; negative outside).
        nucleus: weight 0..1 of the nucleus per box pixel (soft edge, inside the cell).
        ny, nx: offset of the nucleus centre from the box centre (px).
        nuc_radius: equivalent radius of the nucleus (px).
    """

    scale: float
    cy: int
    cx: int
    half: int
    edge: np.ndarray
    nucleus: np.ndarray
    ny: int
    nx: int
    nuc_radius: float


def _polar_window(size: int, half: int, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius and angle index of a box of side ``2 * half`` about the point (dy, dx) from
    the box centre: a view into the cached polar grid of an image of side ``size``."""
    rho_big, tidx_big = _polar_grid(size)
    y0, x0 = size - half - dy, size - half - dx
    return (rho_big[y0 : y0 + 2 * half, x0 : x0 + 2 * half],
            tidx_big[y0 : y0 + 2 * half, x0 : x0 + 2 * half])


def _cell_outline(
    rng: np.random.Generator, traits: CellTraits, size: int
) -> tuple[int, int, int, np.ndarray]:
    """Draw the cell's outline and position: box centre (cy, cx), half-side, and the
    distance inside the outline for every box pixel."""
    s = size / REFERENCE_SIZE
    radius = traits.cell_radius * s
    cell_r = _outline(rng, radius, traits.irregularity, rng.normal(0.0, 0.015))
    off = np.clip(rng.normal(0.0, 2.0 * s, 2), -6.0 * s, 6.0 * s)
    cy = round(size / 2 + float(off[0]))
    cx = round(size / 2 + float(off[1]))
    h = min(math.ceil(float(cell_r.max())) + 2, size // 2)  # half-side of the box
    rho, tidx = _polar_window(size, h, 0, 0)
    edge = np.take(cell_r, tidx) - rho  # distance inside the outline (px)
    return cy, cx, h, edge


def _nucleus(
    rng: np.random.Generator, traits: CellTraits, size: int, h: int, edge: np.ndarray
) -> tuple[np.ndarray, int, int, float]:
    """Draw the nucleus (outline and placement inside the cell): its weight per box
    pixel, its offset (ny, nx) from the box centre and its radius."""
    s = size / REFERENCE_SIZE
    radius = traits.cell_radius * s
    nuc_radius = radius * math.sqrt(traits.nc_ratio)
    nuc_r = _outline(rng, nuc_radius, traits.irregularity * 1.3, rng.normal(0.0, 0.03))
    room = max(radius - nuc_radius, 0.0)
    ang = rng.uniform(0.0, 2 * np.pi)
    dist = room * rng.uniform(0.1, 0.7)
    ny, nx = round(dist * math.sin(ang)), round(dist * math.cos(ang))
    nrho, ntidx = _polar_window(size, h, ny, nx)
    soft = np.float32(1.0 / max(2.0 * s, 0.7))
    w_nuc = np.take(nuc_r, ntidx) - nrho
    w_nuc *= soft
    w_nuc += np.float32(0.5)
    np.clip(w_nuc, 0.0, 1.0, out=w_nuc)
    w_nuc *= np.clip(edge * soft, 0.0, 1.0)  # keep the nucleus inside the cell
    return w_nuc, ny, nx, nuc_radius


def _layout(rng: np.random.Generator, traits: CellTraits, size: int) -> _CellLayout:
    """Draw the geometry of one cell: its outline and position, then its nucleus."""
    cy, cx, h, edge = _cell_outline(rng, traits, size)
    w_nuc, ny, nx, nuc_radius = _nucleus(rng, traits, size, h, edge)
    return _CellLayout(size / REFERENCE_SIZE, cy, cx, h, edge, w_nuc, ny, nx, nuc_radius)


def _light(rng: np.random.Generator, traits: CellTraits, layout: _CellLayout) -> np.ndarray:
    """Draw the texture (chromatin in the nucleus, fainter in the cytoplasm) and the
    nucleoli: a relative brightness change per box pixel."""
    s, h, c = layout.scale, layout.half, traits.chromatin
    tex = _texture(rng, (2 * h, 2 * h), 12.0 * s, (18.0 + 14.0 * c) * s, 0.25 + 0.6 * c)
    amp_nuc = np.float32(0.085 + 0.125 * c)
    amp_cyt = np.float32(0.03)
    light = (amp_nuc - amp_cyt) * layout.nucleus + amp_cyt  # texture amplitude map
    light *= tex
    for _ in range(traits.nucleoli):
        _add_nucleolus(rng, light, layout)
    return light


def _add_nucleolus(rng: np.random.Generator, light: np.ndarray, layout: _CellLayout) -> None:
    """Draw one nucleolus, a soft light spot well inside the nucleus, and add it to
    ``light`` (nothing when it falls outside the box; its draws are made all the same)."""
    s, h, w_nuc = layout.scale, layout.half, layout.nucleus
    a = rng.uniform(0.0, 2 * np.pi)
    d = layout.nuc_radius * 0.55 * math.sqrt(rng.uniform())
    sig = rng.uniform(4.0, 7.0) * s
    gain = np.float32(rng.uniform(0.20, 0.30))
    py = round(layout.ny + d * math.sin(a))
    px = round(layout.nx + d * math.cos(a))
    k = math.ceil(3 * sig)
    y0, y1 = max(h + py - k, 0), min(h + py + k + 1, 2 * h)
    x0, x1 = max(h + px - k, 0), min(h + px + k + 1, 2 * h)
    if y0 >= y1 or x0 >= x1:
        return
    yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(h + py))[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(h + px))[None, :]
    spot = np.exp((yy * yy + xx * xx) * np.float32(-0.5 / (sig * sig)))
    light[y0:y1, x0:x1] += gain * spot * w_nuc[y0:y1, x0:x1]


def _colour(
    rng: np.random.Generator, patient: PatientStyle, layout: _CellLayout, light: np.ndarray
) -> np.ndarray:
    """The box in RGB (float32, 0..255): stain colours shaded by ``light``, the patient's
    stain and a small per-cell brightness jitter (drawn here)."""
    # Bright rim just inside the outline (as left by the C-NMC segmentation),
    # a darker anti-aliased outermost pixel, and black outside.
    s, h, edge, w_nuc = layout.scale, layout.half, layout.edge, layout.nucleus
    rim = np.maximum(edge - 1.0, 0.0)
    rim *= np.float32(-1.0 / max(3.0 * s, 0.7))
    np.exp(rim, out=rim)
    rim *= np.float32(patient.halo)
    inside = np.clip(edge, 0.0, 1.0)
    inside *= np.float32(1.0) - np.float32(0.35) * np.clip(np.float32(1.5) - edge, 0.0, 1.0)
    keep = (np.float32(1.0) - rim) * inside
    rim *= inside
    cell_gain = math.exp(rng.normal(0.0, 0.015))
    box = np.empty((2 * h, 2 * h, 3), dtype=np.float32)
    for ch in range(3):
        g = np.float32(patient.gain[ch] * cell_gain)
        col = np.float32(_NUCLEUS_RGB[ch] - _CYTOPLASM_RGB[ch]) * w_nuc + np.float32(
            _CYTOPLASM_RGB[ch]
        )
        col *= np.float32(_SHADE_GAIN[ch]) * light + np.float32(1.0)
        col *= keep
        col += np.float32(_RIM_RGB[ch]) * rim
        col *= g
        box[..., ch] = col
    np.clip(box, 0.0, 255.0, out=box)
    return box


def _paste(box: np.ndarray, layout: _CellLayout, size: int) -> np.ndarray:
    """A black ``size x size x 3`` uint8 image with ``box`` at the cell's place (clipped
    to the image's bounds)."""
    out = np.zeros((size, size, 3), dtype=np.uint8)
    h = layout.half
    y0, x0 = layout.cy - h, layout.cx - h
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    dy1, dx1 = min(size, y0 + 2 * h), min(size, x0 + 2 * h)
    if dy1 > dy0 and dx1 > dx0:
        out[dy0:dy1, dx0:dx1] = box[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0].astype(np.uint8)
    return out


def render_cell(
    rng: np.random.Generator, traits: CellTraits, patient: PatientStyle, size: int
) -> np.ndarray:
    """Render one cell as a ``size x size x 3`` uint8 RGB array on pure black.

    Nuisance factors (position offset, outline shape and rotation, nucleus
    placement, textures, nucleoli positions, a small per-cell brightness
    jitter) are drawn from ``rng``; class information enters only through
    ``traits`` and the stain only through ``patient``.  Work is done in the
    cell's bounding box with a cached polar grid, so the cost is a few dozen
    vectorised operations on ~60k pixels.

    Steps, drawing from ``rng`` in this order (which fixes the output): the
    geometry (:func:`_layout`), the texture and nucleoli (:func:`_light`), the
    colour (:func:`_colour`); then the box is pasted into the image.
    """
    layout = _layout(rng, traits, size)
    light = _light(rng, traits, layout)
    box = _colour(rng, patient, layout, light)
    return _paste(box, layout, size)


def sample_cells(n: int, seed: int = 0, size: int = REFERENCE_SIZE,
                 cells_per_patient: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cells in memory, no files: uint8 ``[n, size, size, 3]`` and labels (1 = ALL).

    Drawn exactly as :func:`generate` draws the first ``n`` cells of a data set of
    ``ceil(n / cells_per_patient)`` patients (ALL patients first, then HEM; both classes
    from ``n > cells_per_patient`` on), so the same arguments give the same pixels.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    patients = max(2, -(-n // cells_per_patient))
    config = SynthConfig(patients=patients, cells_per_patient=cells_per_patient,
                         seed=seed, size=size)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    k = 0
    for pindex, patient in enumerate(make_patients(config)):
        for cindex in range(cells_per_patient):
            if k == n:
                return out, labels
            rng = _cell_rng(seed, pindex, cindex)
            out[k] = render_cell(rng, sample_traits(rng, patient), patient, size)
            labels[k] = patient.label
            k += 1
    return out, labels


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
#: One row of ``traits.csv``: path, label, patient, fold, image, cell, then the traits.
_Row = list[str | int]


def _save_bmp(rgb: np.ndarray, path: Path) -> None:
    """Write ``rgb`` (uint8 HxWx3) as a 24-bit BMP."""
    Image.fromarray(rgb, mode="RGB").save(path, format="BMP")


def _remove_previous(out: Path) -> None:
    """Delete a previous synthetic data set in ``out`` (only files this module writes,
    and the temporary images an interrupted run left)."""
    for path in out.glob("fold_*/*/*.bmp"):
        fold, cls = path.parent.parent.name, path.parent.name
        if (
            re.fullmatch(r"fold_\d+", fold)
            and cls in ("all", "hem")
            and re.fullmatch(rf"UID_H?\d+_\d+_\d+_{cls}\.bmp", path.name)
        ):
            path.unlink()
    # ".tmp": releases before output.atomic_path; ".tmp-<pid>": atomic_path's
    for pattern in ("fold_*/*/.UID_*.bmp.tmp", "fold_*/*/.UID_*.bmp.tmp-*"):
        for path in out.glob(pattern):
            path.unlink()
    (out / "traits.csv").unlink(missing_ok=True)
    for d in sorted(out.glob("fold_*/*"), reverse=True) + sorted(out.glob("fold_*")):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def _image_ids(rng: np.random.Generator, n_cells: int) -> list[tuple[int, int]]:
    """(image, cell) numbers for a patient's cells: 1-3 cells per smear image."""
    ids: list[tuple[int, int]] = []
    image = 0
    while len(ids) < n_cells:
        image += 1
        for c in range(1, int(rng.choice([1, 1, 1, 2, 2, 3])) + 1):
            ids.append((image, c))
    return ids[:n_cells]


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file or a non-empty folder at ``out``; with ``overwrite``, delete a
    previous synthetic data set there instead."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output directory {out} exists and is not empty")
        _remove_previous(out)


def _make_class_dirs(out: Path, patients: list[PatientStyle], folds: int) -> None:
    """Create ``fold_<f>/{all,hem}`` for every fold and class that gets a patient."""
    for f in range(folds):
        for cls in ("all", "hem"):
            if any(p.fold == f and (p.label == 1) == (cls == "all") for p in patients):
                (out / f"fold_{f}" / cls).mkdir(parents=True, exist_ok=True)


def _write_cell(
    out: Path, config: SynthConfig, patient: PatientStyle, pindex: int, cindex: int,
    image_no: int, cell_no: int,
) -> _Row:
    """Draw, render and write cell ``cindex`` of patient ``pindex`` (from its own random
    stream); its ``traits.csv`` row."""
    cls = "all" if patient.label == 1 else "hem"
    rng = _cell_rng(config.seed, pindex, cindex)
    traits = sample_traits(rng, patient)
    rgb = render_cell(rng, traits, patient, config.size)
    rel = f"fold_{patient.fold}/{cls}/UID_{patient.patient_id}_{image_no}_{cell_no}_{cls}.bmp"
    with atomic_path(out / rel) as tmp:
        _save_bmp(rgb, tmp)
    t = asdict(traits)
    row: _Row = [rel, patient.label, patient.patient_id, patient.fold, image_no, cell_no]
    return row + [_fmt(t[name]) for name in TRAIT_NAMES]


def _write_cells(
    out: Path,
    config: SynthConfig,
    patients: list[PatientStyle],
    progress: Callable[[int, int], None] | None,
) -> tuple[list[_Row], list[int]]:
    """Write every patient's cells in order; the ``traits.csv`` rows and the number of
    images per fold."""
    rows: list[_Row] = []
    per_fold = [0] * config.folds
    total = config.patients * config.cells_per_patient
    for pindex, patient in enumerate(patients):
        ids = _image_ids(_images_rng(config.seed, pindex), config.cells_per_patient)
        for cindex, (image_no, cell_no) in enumerate(ids):
            rows.append(_write_cell(out, config, patient, pindex, cindex, image_no, cell_no))
            per_fold[patient.fold] += 1
            if progress is not None:
                progress(len(rows), total)
    return rows, per_fold


def _write_traits_csv(path: Path, rows: list[_Row]) -> None:
    """Write ``traits.csv`` (header, then ``rows``) atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "patient", "fold", "image", "cell", *TRAIT_NAMES])
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def generate(
    out_dir: Path | str,
    config: SynthConfig,
    progress: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
) -> SynthSummary:
    """Generate a synthetic C-NMC-like training set into ``out_dir``.

    Writes ``fold_<f>/{all,hem}/UID_*.bmp`` (24-bit BMP) and ``traits.csv``
    (columns ``path,label,patient,fold,image,cell`` then one per trait in
    :data:`TRAIT_NAMES`; ``path`` relative to ``out_dir``) and nothing else.
    Every file is written to a temporary file and moved into place
    (:func:`leukoedge.output.atomic_path`), so an interrupted run never leaves a
    truncated image; ``traits.csv`` is written last.

    Args:
        out_dir: destination; created if missing, must be empty if it exists
            (unless ``overwrite``).
        config: what to generate (validated first).
        progress: optional callback ``progress(done, total)`` after each image.
        overwrite: allow a non-empty ``out_dir``: a previous synthetic data set
            in it (``traits.csv`` and ``fold_<n>/{all,hem}/UID_*.bmp``) is
            deleted first, so no stale cells remain; other files are kept.

    Raises:
        ValueError: on an invalid ``config``, or a non-empty ``out_dir``
            without ``overwrite``, or an ``out_dir`` that is a file.
        DataError: when a file cannot be written (disk full, permissions); the
            images written before it stay, complete.
    """
    config.validate()
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    patients = make_patients(config)
    _make_class_dirs(out, patients, config.folds)
    rows, per_fold = _write_cells(out, config, patients, progress)
    traits_csv = out / "traits.csv"
    _write_traits_csv(traits_csv, rows)
    n_all_img = sum(1 for r in rows if r[1] == 1)
    return SynthSummary(
        out_dir=out,
        traits_csv=traits_csv,
        images=len(rows),
        all_images=n_all_img,
        hem_images=len(rows) - n_all_img,
        all_patients=tuple(p.patient_id for p in patients if p.label == 1),
        hem_patients=tuple(p.patient_id for p in patients if p.label == 0),
        images_per_fold=tuple(per_fold),
    )


def _fmt(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """``synth OUT``: a folder, empty unless ``overwrite`` (a previous synthetic set there
    is replaced; other files are kept)."""
    from .errors import OutputExistsError, UsageError

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out_dir} is not empty",
                                "choose an empty folder, or add --overwrite to replace a "
                                "previous synthetic set there (other files are kept)")
