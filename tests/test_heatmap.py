"""``classify --cam DIR``: overlays of the model's ``cam`` output (runtime only, no torch).

Tiny ONNX models (tests/onnx_models.py) with every subset of outputs; the 43 real cells.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
from pathlib import Path
from typing import IO

import numpy as np
import onnx_models as om
import pytest
from PIL import Image
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.errors import EXIT_OK, DataError, UsageError
from leukoedge.heatmap import OverlayWriter, colormap, overlay, upsample
from leukoedge.output import escape_path
from leukoedge.session import SessionConfig, load_model
from leukoedge.spec import ModelSpec

runner = CliRunner()
SIZE = 32


def invoke(*args: str | os.PathLike[str]):  # type: ignore[no-untyped-def]
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def model_with(outputs: tuple[str, ...], folder: Path) -> Path:
    spec = ModelSpec(architecture="test-mean", input_size=SIZE, outputs=outputs)
    proto = om.mean_brightness_model(SIZE, spec=spec, cam="cam" in outputs,
                                     features="features" in outputs)
    return om.save(proto, folder / f"{'-'.join(outputs)}.onnx")


@pytest.fixture(scope="module")
def cam_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_with(("logit", "cam"), tmp_path_factory.mktemp("heat"))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_classify_cam_writes_one_overlay_per_real_cell(cam_model: Path, real_cells: Path,
                                                       tmp_path: Path) -> None:
    out, heat = tmp_path / "p.csv", tmp_path / "heat"
    r = invoke("classify", real_cells, "--model", cam_model, "--out", out, "--cam", heat)
    assert r.exit_code == EXIT_OK, r.output
    got = rows(out)
    assert len(got) == 43
    pngs = sorted(heat.rglob("*.png"))
    assert len(pngs) == 43
    for row in got:
        dest = Path(row["heatmap"])
        src = Path(row["path"])
        assert dest.is_file()
        # mirrors the input's relative path, named after the whole file name
        assert dest.relative_to(heat) == src.relative_to(real_cells).parent / (src.name + ".png")
        with Image.open(dest) as im, Image.open(src) as orig:
            assert im.format == "PNG" and im.size == orig.size  # the original's size
    # the overlay is the image with colour on it: it differs from the image, on the cell
    with Image.open(Path(got[0]["heatmap"])) as im, Image.open(got[0]["path"]) as orig:
        a = np.asarray(im.convert("RGB"), np.int16)
        b = np.asarray(orig.convert("RGB"), np.int16)
    assert np.abs(a - b).max() > 20


def test_existing_overlays_are_refused_then_resumed_or_overwritten(
        cam_model: Path, real_cells: Path, tmp_path: Path) -> None:
    out, heat = tmp_path / "p.csv", tmp_path / "heat"
    assert invoke("classify", real_cells, "--model", cam_model, "--out", out,
                  "--cam", heat).exit_code == EXIT_OK
    first = sorted(heat.rglob("*.png"))
    stamp = {p: p.stat().st_mtime_ns for p in first}
    # another result file, same overlay folder: refused before anything is written
    r = invoke("classify", real_cells, "--model", cam_model, "--out", tmp_path / "q.csv",
               "--cam", heat)
    assert r.exit_code != EXIT_OK
    assert "already exist" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "q.csv").exists()
    # --resume with everything done: nothing is redrawn
    r = invoke("classify", real_cells, "--model", cam_model, "--out", out, "--cam", heat,
               "--resume")
    assert r.exit_code == EXIT_OK, r.output
    assert {p: p.stat().st_mtime_ns for p in first} == stamp
    assert len(rows(out)) == 43
    # --resume after losing half the rows: only the missing ones are drawn again
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:21]))
    r = invoke("classify", real_cells, "--model", cam_model, "--out", out, "--cam", heat,
               "--resume")
    assert r.exit_code == EXIT_OK, r.output
    got = rows(out)
    assert len(got) == 43 and all(row["heatmap"] for row in got)
    redrawn = [p for p in first if p.stat().st_mtime_ns != stamp[p]]
    assert 0 < len(redrawn) <= 23
    r = invoke("classify", real_cells, "--model", cam_model, "--out", out, "--cam", heat,
               "--overwrite")
    assert r.exit_code == EXIT_OK, r.output


def test_two_folders_with_the_same_names_do_not_collide(cam_model: Path, real_cells: Path,
                                                        tmp_path: Path) -> None:
    a, b = tmp_path / "in" / "a", tmp_path / "in" / "b"
    shutil.copytree(real_cells / "fold_0" / "all", a)
    shutil.copytree(real_cells / "fold_0" / "all", b)
    heat = tmp_path / "heat"
    r = invoke("classify", a, b, "--model", cam_model, "--out", tmp_path / "p.csv",
               "--cam", heat)
    assert r.exit_code == EXIT_OK, r.output
    n = len(list(a.iterdir()))
    assert len(list((heat / "a").glob("*.png"))) == n
    assert len(list((heat / "b").glob("*.png"))) == n


def test_a_model_without_a_map_is_refused_with_one_line(tiny_model: Path, real_cells: Path,
                                                        tmp_path: Path) -> None:
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", tmp_path / "p.csv",
               "--cam", tmp_path / "heat")
    assert r.exit_code != EXIT_OK
    assert "no heatmap output" in r.output and "export --cam" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "heat").exists()


def test_cam_folder_inside_the_inputs_is_refused(cam_model: Path, real_cells: Path,
                                                 tmp_path: Path) -> None:
    r = invoke("classify", real_cells, "--model", cam_model, "--out", tmp_path / "p.csv",
               "--cam", real_cells / "heat")
    assert r.exit_code != EXIT_OK
    assert "inside the input folder" in r.output


@pytest.mark.parametrize("outputs", [("logit",), ("logit", "features"), ("logit", "cam"),
                                     ("logit", "cam", "features")])
def test_every_subset_of_outputs_loads_and_classifies(outputs: tuple[str, ...],
                                                      tmp_path: Path, real_cells: Path
                                                      ) -> None:
    path = model_with(outputs, tmp_path)
    m = load_model(path, SessionConfig(provider="cpu"))
    assert m.has_cam == ("cam" in outputs)
    x = np.random.default_rng(0).integers(0, 255, (3, SIZE, SIZE, 3), dtype=np.uint8)
    logits, drift, maps = m.predict_all(x, cam=m.has_cam)
    assert logits.shape == (3,) and drift is None
    np.testing.assert_allclose(m.predict(x)[0], logits)
    if m.has_cam:
        assert maps is not None and maps.shape == (3, SIZE, SIZE)
        np.testing.assert_allclose(maps, x.astype(np.float32).mean(axis=3), rtol=1e-5)
    else:
        assert maps is None
        with pytest.raises(UsageError):
            m.predict_all(x, cam=True)
    r = invoke("classify", real_cells, "--model", path, "--out", tmp_path / "p.csv")
    assert r.exit_code == EXIT_OK, r.output
    assert all(row["heatmap"] == "" for row in rows(tmp_path / "p.csv"))


def test_upsampling_follows_the_crop_and_padding() -> None:
    cam = np.zeros((4, 4))
    cam[0, 3] = 1.0  # top right of what the model saw
    # a wide image (200x100) padded to 200x200, central half kept: box 50..150 both axes
    m = upsample(cam, 200, 100, 0.5)
    assert m.shape == (100, 200)
    assert np.isnan(m[:, :49]).all() and np.isnan(m[:, 151:]).all()
    # rows: the padded square starts 50 above the image, so the box is image rows 0..100
    assert np.isfinite(m[:, 60]).all()
    y, x = np.unravel_index(np.nanargmax(m), m.shape)
    assert x > 130 and y < 15
    flat = upsample(np.full((3, 3), 2.5), 50, 50, 1.0)
    np.testing.assert_allclose(flat, 2.5)


def test_overlay_colours_signs_and_leaves_zero_alone() -> None:
    rgb = np.full((20, 20, 3), 100, np.uint8)
    cam = np.zeros((2, 2))
    cam[0, 0], cam[1, 1] = 1.0, -1.0
    out = overlay(rgb, cam, 1.0).astype(int)
    assert out[0, 0, 0] > out[0, 0, 2]  # evidence for ALL: red
    assert out[19, 19, 2] > out[19, 19, 0]  # against: blue
    np.testing.assert_array_equal(overlay(rgb, np.zeros((2, 2)), 1.0), rgb)
    assert colormap(np.array([0.0])).round().tolist() == [[221.0, 221.0, 221.0]]


def test_overlay_writer_refuses_a_file_as_folder(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError):
        OverlayWriter(f, [tmp_path], 1.0)


def test_overlay_writer_writes_whole_files_or_none(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An overlay is written whole (no temporary file left); a failed write (disk full
    half way) is one DataError with the --cam hint, and leaves no file at all."""
    src = tmp_path / "in" / "a.bmp"
    src.parent.mkdir()
    Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(src)
    heat = tmp_path / "heat"
    writer = OverlayWriter(heat, [src.parent], 1.0)
    cam = np.ones((2, 2))
    assert writer.write(src, cam) == escape_path(heat / "a.bmp.png")
    assert [p.name for p in heat.rglob("*")] == ["a.bmp.png"]
    assert Image.open(heat / "a.bmp.png").size == (30, 40)
    (heat / "a.bmp.png").unlink()

    def half_then_full(self: Image.Image, fp: str | os.PathLike[str] | IO[bytes],
                       *args: object, **kwargs: object) -> None:
        if isinstance(fp, (str, os.PathLike)):
            with open(fp, "wb") as fh:
                fh.write(b"\x89PNG\r\n")
        else:
            fp.write(b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", half_then_full)
    with pytest.raises(DataError) as info:
        writer.write(src, cam)
    dest = escape_path(heat / "a.bmp.png")
    assert info.value.message == f"cannot write heatmap {dest}: {os.strerror(errno.ENOSPC)}"
    assert info.value.hint is not None and "--cam" in info.value.hint
    assert list(heat.rglob("*")) == []
