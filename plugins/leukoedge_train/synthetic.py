"""A small, numpy-only generator of cell-like images (parity checks, tests).

Not a model of C-NMC: a violet disc (cytoplasm) with a darker textured nucleus, centred
on black, with a per-patient tint. ALL cells are drawn larger, darker and more textured
than HEM cells, so a small CNN can learn the difference within a few epochs. The parity
check uses it when no real images are given: uniform noise would put every logit in one
corner of the network's range, while disc-like cells exercise the same activations as
real ones. ``leukoedge.synth`` (the project's full generator) supersedes it for datasets.
"""

from __future__ import annotations

import numpy as np


def cell_image(rng: np.random.Generator, size: int, label: int,
               tint: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """One uint8 ``[size, size, 3]`` cell; ``label`` 1 = ALL, 0 = HEM."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0 + rng.normal(0, size * 0.02, 2)
    r = np.hypot(yy - c[0], xx - c[1])
    theta = np.arctan2(yy - c[0], xx - c[1])
    wobble = 1.0 + 0.05 * np.sin(3 * theta + rng.uniform(0, 6.3)) \
        + 0.03 * np.sin(5 * theta + rng.uniform(0, 6.3))
    if label == 1:
        r_cell = size * rng.uniform(0.36, 0.44)
        r_nuc = r_cell * rng.uniform(0.78, 0.88)
        nuc_level, texture = rng.uniform(0.30, 0.40), 0.22
    else:
        r_cell = size * rng.uniform(0.24, 0.31)
        r_nuc = r_cell * rng.uniform(0.55, 0.68)
        nuc_level, texture = rng.uniform(0.50, 0.60), 0.06
    cell = r <= r_cell * wobble
    nucleus = r <= r_nuc * wobble
    noise = rng.normal(0.0, 1.0, (size // 4 + 2, size // 4 + 2)).astype(np.float32)
    noise = np.kron(noise, np.ones((4, 4), np.float32))[:size, :size]
    level = np.where(nucleus, nuc_level + texture * noise * 0.5, 0.80)
    violet = np.array([0.62, 0.42, 0.85], np.float32) * np.asarray(tint, np.float32)
    img = np.clip(level[..., None] * violet * 255.0, 0, 255)
    img[~cell] = 0
    return img.astype(np.uint8)


def patient_tint(rng: np.random.Generator) -> tuple[float, float, float]:
    t = 1.0 + rng.uniform(-0.12, 0.12, 3)
    return (float(t[0]), float(t[1]), float(t[2]))


def cells(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cells (half ALL, alternating) as uint8 ``[n, size, size, 3]`` and labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = cell_image(rng, size, int(labels[i]), patient_tint(rng))
    return out, labels.astype(np.int64)
