"""A small, deliberately easy synthetic dataset in C-NMC layout for the training tests.

Not ``leukoedge.synth``: that generator is built to a known, realistic difficulty (the best
possible weighted F1 is about 0.95, docs/synthetic.md), so a 3-epoch run at 48 px cannot
be expected to learn it. These cells are violet discs with a darker textured nucleus,
centred on black, with a tint per patient; ALL cells are drawn larger, darker and more
textured than HEM cells, so a tiny CNN learns the difference within a few epochs and the
tests can assert that it did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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


def write_dataset(root: Path, patients: int = 8, cells: int = 16, size: int = 64,
                  seed: int = 0, fold: str = "fold_0") -> Path:
    """``root/fold/{all,hem}/UID_*.bmp``: half the patients ALL, half HEM."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        label = p % 2  # alternate so both classes have patients
        pid = p + 1
        tint = patient_tint(rng)
        folder = root / fold / ("all" if label else "hem")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(cells):
            img = cell_image(rng, size, label, tint)
            name = (f"UID_{pid}_{i + 1}_1_all.bmp" if label
                    else f"UID_H{pid}_{i + 1}_1_hem.bmp")
            Image.fromarray(img).save(folder / name)
    return root


def cells_with_a_bad_one(src: Path, dst: Path, n: int = 3) -> list[Path]:
    """``n`` real cells copied to ``dst`` and one file that is not an image, first."""
    dst.mkdir()
    bad = dst / "aaa_broken.bmp"
    bad.write_bytes(b"BM this is not a bitmap")
    good = sorted(src.rglob("*.bmp"))[:n]
    copies = []
    for f in good:
        copies.append(dst / f.name)
        copies[-1].write_bytes(f.read_bytes())
    return [bad, *copies]
