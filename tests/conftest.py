"""Shared fixtures: real C-NMC cells (from ../shared beside the repository), tiny ONNX
models built with onnx.helper, and a hypothesis profile for CI."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from browser import browser  # noqa: E402,F401  (the one headless-browser fixture)
from onnx_models import mean_brightness_model, save  # noqa: E402

REPO = HERE.parent
SHARED_CELLS = REPO.parent / "shared" / "data" / "cnmc-sample"
SHARED_LABELS = REPO.parent / "shared" / "data" / "C-NMC_test_prelim_phase_data_labels.csv"
ATTRIBUTION = (
    "Real cells: C-NMC 2019, CC BY 3.0. Gupta, A., & Gupta, R. (2019). ALL Challenge "
    "dataset of ISBI 2019 [Data set]. The Cancer Imaging Archive. "
    "https://doi.org/10.7937/tcia.2019.dc64i46r\n"
)

try:
    from hypothesis import settings

    settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
    settings.register_profile("dev", deadline=None, max_examples=200)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def shared_cells() -> Path:
    """The 43 real cells of ../shared/data (read only)."""
    if not SHARED_CELLS.is_dir():
        pytest.fail(f"real cells not found at {SHARED_CELLS}: the repository must sit beside "
                    "../shared (as in CI)")
    return SHARED_CELLS


@pytest.fixture()
def real_cells(tmp_path: Path, shared_cells: Path) -> Path:
    """A writable copy of the 43 real cells, with their attribution beside them."""
    dst = tmp_path / "cells"
    shutil.copytree(shared_cells / "fold_0", dst / "fold_0")
    (dst / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    return dst


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model(model_dir: Path) -> Path:
    """A 32-px mean-brightness classifier with a valid spec."""
    return save(mean_brightness_model(32), model_dir / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_model_128(model_dir: Path) -> Path:
    return save(mean_brightness_model(128), model_dir / "tiny128.onnx")
