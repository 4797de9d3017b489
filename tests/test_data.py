from __future__ import annotations

import os
from pathlib import Path

import pytest

from leukoedge.data import (
    collect,
    discover,
    fingerprint,
    iter_image_paths,
    label_of,
    patient_of,
    read_prelim_labels,
    sample_cells_dir,
    split_by_patient,
)
from leukoedge.errors import DataError, NoImagesError


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


@pytest.mark.parametrize("name,pid", [
    ("UID_13_10_1_all.bmp", "UID_13"), ("UID_H13_10_1_hem.bmp", "UID_H13"),
    ("UID_h3_6_1_hem.bmp", "UID_H3"), ("uid_7_1_1_all.bmp", "UID_7"), ("1.bmp", None),
    ("UID_x_1.bmp", None),
])
def test_patient_ids_keep_all_and_hem_apart(name: str, pid: str | None) -> None:
    assert patient_of(name) == pid


def test_labels_from_folders_then_suffix() -> None:
    assert label_of(Path("fold_0/all/UID_1_1_1_all.bmp")) == 1
    assert label_of(Path("fold_0/HEM/x.bmp")) == 0
    assert label_of(Path("any/UID_H1_1_1_hem.png")) == 0
    assert label_of(Path("any/cell_ALL.jpg")) == 1
    assert label_of(Path("hem/inner/x_all.bmp")) == 0, "the nearest class folder wins"
    assert label_of(Path("x/1.bmp")) is None


def test_discovery_is_recursive_sorted_and_ignores_non_images(tmp_path: Path) -> None:
    touch(tmp_path / "b" / "2.BMP")
    touch(tmp_path / "a" / "1.png")
    touch(tmp_path / "a" / "notes.txt")
    touch(tmp_path / "a" / "3.Jpeg")
    touch(tmp_path / "c.tif")
    names = [p.relative_to(tmp_path).as_posix() for p in iter_image_paths([tmp_path])]
    assert names == ["a/1.png", "a/3.Jpeg", "b/2.BMP", "c.tif"]


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(iter_image_paths([tmp_path / "nope"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImagesError):
        collect([tmp_path / "empty"])


def test_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    touch(tmp_path / "d" / "x.bmp")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")
    assert [p.name for p in iter_image_paths([tmp_path])] == ["x.bmp"]


def test_real_layout(shared_cells: Path) -> None:
    items = collect([shared_cells])
    assert len(items) == 43
    assert {it.patient for it in items} == {"UID_1", "UID_13", "UID_78", "UID_H6", "UID_H13",
                                             "UID_H3"}
    assert sum(it.label == 1 for it in items) == 21
    assert all((it.label == 1) == (it.path.parent.name == "all") for it in items)


def test_prelim_label_file_and_kaggle_layout(tmp_path: Path) -> None:
    from conftest import real_data

    labels = real_data("C-NMC_test_prelim_phase_data_labels.csv")
    table = read_prelim_labels(labels)
    assert table["1.bmp"] == (1, "UID_57")
    assert table["4.bmp"] == (0, "UID_H49")
    assert sum(1 for k, v in table.items() if k[0].isdigit() and v[0] == 1) == 1219
    root = tmp_path / "validation_data"
    touch(root / "C-NMC_test_prelim_phase_data" / "4.bmp")
    touch(root / "C-NMC_test_prelim_phase_data" / "1.bmp")
    (root / "C-NMC_test_prelim_phase_data_labels.csv").write_bytes(labels.read_bytes())
    items = list(discover([root / "C-NMC_test_prelim_phase_data"]))
    assert [(i.path.name, i.label, i.patient) for i in items] == [
        ("1.bmp", 1, "UID_57"), ("4.bmp", 0, "UID_H49")]


def test_bad_label_file(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="columns"):
        read_prelim_labels(p)
    p.write_text("Patient_ID,new_names,labels\nUID_1_1_1_all.bmp,1.bmp,7\n")
    with pytest.raises(DataError, match="0 or 1"):
        read_prelim_labels(p)


def test_split_by_patient_never_shares_a_patient(shared_cells: Path) -> None:
    items = collect([shared_cells])
    for seed in range(5):
        train, val = split_by_patient(items, 0.3, seed)
        assert {i.patient for i in train}.isdisjoint({i.patient for i in val})
        assert len(train) + len(val) == len(items)
        assert {i.label for i in train} == {0, 1} and {i.label for i in val} == {0, 1}
    assert split_by_patient(items, 0.3, 1) == split_by_patient(items, 0.3, 1)


def test_fingerprint_depends_on_files_not_order(shared_cells: Path) -> None:
    items = collect([shared_cells])
    assert fingerprint(items, shared_cells) == fingerprint(items[::-1], shared_cells)
    assert fingerprint(items[1:], shared_cells) != fingerprint(items, shared_cells)


def test_sample_cells_ship_with_attribution() -> None:
    d = sample_cells_dir()
    assert len(list(d.glob("*/*.bmp"))) == 12
    assert "CC BY 3.0" in (d / "README.md").read_text()
