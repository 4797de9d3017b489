"""leukoedge_train.precision's report images: an unreadable file is left out and counted,
never fatal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_data import cells_with_a_bad_one  # noqa: E402


@pytest.mark.train
def test_precision_report_images_skip_an_unreadable_file_and_say_so(
        tmp_path: Path, shared_cells: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from leukoedge_train import precision

    from leukoedge.spec import ModelSpec

    spec = ModelSpec(architecture="scratch", input_size=32)
    folder = tmp_path / "cells"
    files = cells_with_a_bad_one(shared_cells, folder, n=3)
    x, items, source = precision.report_images(spec, folder, tmp_path, minimum=3)
    assert x.shape == (3, 32, 32, 3)
    assert sorted(it.path.name for it in items) == sorted(f.name for f in files[1:])
    assert source == f"3 real from {folder}"
    err = " ".join(capsys.readouterr().err.split())
    assert "1 of 4 report images" in err and "unreadable" in err and "aaa_broken" in err
