"""A small synthetic dataset in C-NMC layout for the training tests.

Until ``leukoedge.synth`` lands on main this uses the training plugin's own tiny generator
(:mod:`leukoedge_train.synthetic`): ALL cells are larger, darker, more textured discs,
HEM cells smaller and paler, with a tint per patient. Switch :func:`write_dataset` to
``leukoedge.synth.generate`` once it is there; the tests only need the layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(root: Path, patients: int = 8, cells: int = 16, size: int = 64,
                  seed: int = 0, fold: str = "fold_0") -> Path:
    """``root/fold/{all,hem}/UID_*.bmp``: half the patients ALL, half HEM."""
    from leukoedge_train.synthetic import cell_image, patient_tint

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
