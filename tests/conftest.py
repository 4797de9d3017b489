"""Shared fixtures: real C-NMC cells (from ../shared beside the repository), tiny ONNX
models built with onnx.helper, a hypothesis profile for CI, and the two environment
policies every test file follows:

- **Real cells.** A test that needs ``../shared/data`` gets it through :func:`real_data`
  (or the ``shared_data`` / ``shared_cells`` / ``real_cells`` fixtures built on it). When
  the data is not there, the test FAILS when ``CI`` is set (CI always has it: ``.ci/run``)
  and is SKIPPED with the reason otherwise (a checkout without ``../shared``).
- **CUDA.** ``@pytest.mark.gpu`` marks a test that needs a usable CUDA GPU: it is skipped
  unless a session really runs on onnxruntime's CUDA provider (:func:`cuda_problem`).
  ``@pytest.mark.cpu_only`` marks a test that assumes there is none (it checks the CPU
  fallback): it is skipped where CUDA is usable.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from browser import browser  # noqa: E402,F401  (the one headless-browser fixture)
from onnx_models import mean_brightness_model, save  # noqa: E402

REPO = HERE.parent


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``leukoedge ARGS`` in this process: exit code, stdout, stderr."""
    import leukoedge.cli as cli

    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_CELLS = SHARED_DATA / "cnmc-sample"
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


# -- real cells -------------------------------------------------------------------------

def missing(reason: str) -> NoReturn:
    """Something a test needs is not on this machine: fail when ``CI`` is set (CI provides
    it), skip with ``reason`` otherwise."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: a CI run must have it)", pytrace=False)
    pytest.skip(reason)


def real_data(*parts: str) -> Path:
    """``../shared/data/<parts>`` (read only): the one way a test reaches the real cells.
    Missing: the test fails under ``CI`` and is skipped with the reason elsewhere."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing(f"real cells not found at {path}: the repository must sit beside ../shared")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read only): cnmc-sample, cnmc-real and the prelim labels."""
    return real_data()


@pytest.fixture(scope="session")
def shared_cells() -> Path:
    """The 43 real cells of ../shared/data/cnmc-sample (read only)."""
    return real_data("cnmc-sample")


@pytest.fixture()
def real_cells(tmp_path: Path, shared_cells: Path) -> Path:
    """A writable copy of the 43 real cells, with their attribution beside them."""
    dst = tmp_path / "cells"
    shutil.copytree(shared_cells / "fold_0", dst / "fold_0")
    (dst / "ATTRIBUTION.txt").write_text(ATTRIBUTION)
    return dst


# -- CUDA -------------------------------------------------------------------------------

@functools.cache
def cuda_problem() -> str | None:
    """Why no session runs on CUDA here, or None when one does: the runtime's own checks
    (the provider is in this onnxruntime build and its library loads, then a one-node
    session really runs on it). Cheap on a machine without the GPU build; never imports
    torch."""
    from leukoedge.errors import MissingExtraError
    from leukoedge.session import import_ort, probe_provider, provider_load_problem

    try:
        ort = import_ort()
    except MissingExtraError as exc:
        return exc.message
    return provider_load_problem(ort, "cuda") or probe_provider(ort, "cuda")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The ``gpu`` and ``cpu_only`` markers (registered in pyproject.toml)."""
    if item.get_closest_marker("gpu") is not None:
        problem = cuda_problem()
        if problem is not None:
            pytest.skip(f"needs a usable CUDA GPU: {problem}")
    if item.get_closest_marker("cpu_only") is not None and cuda_problem() is None:
        pytest.skip("assumes no usable CUDA (it checks the CPU fallback); a session runs "
                    "on CUDA here")


# -- tiny models ------------------------------------------------------------------------

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
