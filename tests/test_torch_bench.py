"""leukoedge_train.torch_bench: the PyTorch eager baseline of ``bench --checkpoint`` leaves
an unreadable file out, says so, and cycles the readable ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_data import cells_with_a_bad_one  # noqa: E402


@pytest.mark.train
def test_the_plugin_bench_skips_an_unreadable_file_and_says_so(
        tmp_path: Path, shared_cells: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    import numpy as np
    from leukoedge_train.torch_bench import _batch

    from leukoedge.preprocess import preprocess_for
    from leukoedge.spec import ModelSpec

    spec = ModelSpec(architecture="scratch", input_size=32)
    files = cells_with_a_bad_one(shared_cells, tmp_path / "cells", n=2)
    x = _batch(spec, files, 5)
    err = " ".join(capsys.readouterr().err.split())
    assert "1 of 3 files for PyTorch eager unreadable" in err and "aaa_broken.bmp" in err
    want = [preprocess_for(f, spec) for f in files[1:]]
    assert x.shape == (5, 32, 32, 3)
    for i in range(5):  # the two readable cells, cycled
        assert np.array_equal(x[i], want[i % 2])
    _batch(spec, files[1:], 5)
    assert "unreadable" not in capsys.readouterr().err  # nothing to say: silent
