"""Tests of the synthetic cell generator (leukoedge.synth).

Two datasets are generated once per module:

* ``full``: 12 patients x 10 cells at the real size (450 px) for layout,
  naming, class balance and realism against the real C-NMC cells;
* ``small``: 72 patients x 12 cells at 128 px (traits are defined at 450 px
  and scale with the size) for the difficulty measurements on held-out
  patients: oracle accuracy, colour-only accuracy and the patient leak.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoedge.errors import DataError
from leukoedge.synth import (
    TRAIT_MODEL,
    TRAIT_NAMES,
    CellTraits,
    PatientStyle,
    SynthConfig,
    generate,
    make_patients,
    render_cell,
    sample_cells,
    sample_traits,
)

NAME_RE = re.compile(r"UID_(H?)(\d+)_(\d+)_(\d+)_(all|hem)\.bmp")

FULL = SynthConfig(patients=12, cells_per_patient=10, seed=7, size=450)
SMALL = SynthConfig(patients=72, cells_per_patient=12, seed=0, size=128)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "traits.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def cell_stats(rgb: np.ndarray) -> np.ndarray:
    """Foreground fraction, mean RGB and std RGB over non-black pixels."""
    mask = rgb.sum(axis=2) > 0
    fg = rgb[mask].astype(np.float64)
    return np.concatenate([[mask.mean()], fg.mean(axis=0), fg.std(axis=0)])


STAT_NAMES = ("fg_fraction", "mean_R", "mean_G", "mean_B", "std_R", "std_G", "std_B")


def fold_cv(features: np.ndarray, y: np.ndarray, folds: np.ndarray, fit_predict) -> float:
    """Accuracy pooled over folds: train on the other folds, predict the held-out one."""
    correct = 0
    for f in np.unique(folds):
        test = folds == f
        pred = fit_predict(features[~test], y[~test], features[test])
        correct += int((pred == y[test]).sum())
    return correct / len(y)


def logreg(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return model.fit(x_train, y_train).predict(x_test)


def nearest_neighbour(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """1-NN with squared euclidean distance, numpy only."""
    d = (x_test**2).sum(1)[:, None] - 2.0 * x_test @ x_train.T + (x_train**2).sum(1)[None, :]
    return y_train[np.argmin(d, axis=1)]


# --------------------------------------------------------------------------- #
# fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "full"
    calls: list[tuple[int, int]] = []
    summary = generate(out, FULL, progress=lambda d, t: calls.append((d, t)))
    total = FULL.patients * FULL.cells_per_patient
    assert summary.images == total
    assert calls == [(i, total) for i in range(1, total + 1)]
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("synth") / "small"
    generate(out, SMALL)
    rows = read_rows(out)
    images = [np.asarray(Image.open(out / r["path"]).convert("RGB")) for r in rows]
    return {
        "y": np.array([int(r["label"]) for r in rows]),
        "fold": np.array([int(r["fold"]) for r in rows]),
        "patient": np.array([r["patient"] for r in rows]),
        "traits": np.array([[float(r[n]) for n in TRAIT_NAMES] for r in rows]),
        "mean_rgb": np.array([cell_stats(a)[1:4] for a in images]),
        "pixels16": np.array(
            [
                np.asarray(
                    Image.fromarray(a).resize((16, 16), Image.Resampling.BILINEAR), np.float64
                ).ravel()
                / 255.0
                for a in images
            ]
        ),
    }


# --------------------------------------------------------------------------- #
# determinism
# --------------------------------------------------------------------------- #
def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    cfg = SynthConfig(patients=3, cells_per_patient=3, seed=11)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    a, b = tree_hashes(tmp_path / "a"), tree_hashes(tmp_path / "b")
    assert len(a) == 3 * 3 + 1
    assert a == b
    generate(tmp_path / "c", SynthConfig(patients=3, cells_per_patient=3, seed=12))
    c = tree_hashes(tmp_path / "c")
    assert set(a.values()).isdisjoint(c.values())


#: sha256 of every file of ``generate(out, GOLDEN_CONFIG)``, recorded before
#: ``render_cell`` and ``generate`` were split into steps (numpy 2.4, Pillow 13; the
#: same bytes with numpy's AVX-512, AVX2 and baseline SIMD paths). A change here
#: changes every synthetic data set made with the same seed: only on purpose.
GOLDEN_CONFIG = SynthConfig(patients=4, cells_per_patient=3, seed=13, size=96, folds=2)
GOLDEN_SHA256 = {
    "fold_0/all/UID_1_1_1_all.bmp":
        "d27c2a232b788a57dff6a1a0ad4781985ec0371cbc71d9c64c3538ad0d890160",
    "fold_0/all/UID_1_1_2_all.bmp":
        "e8aba18765ea1f01dcc21865b470b4d791ff7dcf14779c0a3d07cb8dd388cd90",
    "fold_0/all/UID_1_2_1_all.bmp":
        "461c5a316b640a51b05e47372ebd2ad6c35769a5af176d390fd8919b9187609f",
    "fold_0/all/UID_3_1_1_all.bmp":
        "6d481f5f8bca2d8d4ec497b8c87ec08bafb56355b807635a832460352ca771c9",
    "fold_0/all/UID_3_1_2_all.bmp":
        "b5d6d97322413135434e63a3866f02137cf8a7b94ba16250a8731f40066c4863",
    "fold_0/all/UID_3_1_3_all.bmp":
        "f52e48aaa0a64aace5b6a0ed08b22dad0199c9023a7444c9dec22b740c02a822",
    "fold_1/all/UID_2_1_1_all.bmp":
        "44b3d6e20893349063a17b21a46f5f3f25cc3bec5feb24ac46e7ba3afcc55c82",
    "fold_1/all/UID_2_2_1_all.bmp":
        "ab4a62d0087c26b7a158b52f1f751fafa20b9d1dc9e77cbf420c3cd7d69c2f67",
    "fold_1/all/UID_2_3_1_all.bmp":
        "8642b476b2923096a4ae54ff41b9b5e4717438a2793c36df8f7daa97cec42550",
    "fold_1/hem/UID_H1_1_1_hem.bmp":
        "29ef17618e5ccb2205af59e956088fa88ba2dc2d079c31a4f62deb168fd04822",
    "fold_1/hem/UID_H1_2_1_hem.bmp":
        "28411cf38ffcb5b706fda402892b5fdc90bcfc809a6bf7f2c9a9f393d6a50ebe",
    "fold_1/hem/UID_H1_3_1_hem.bmp":
        "674249f58242843bae7385ebb65f7524e6873420cf2f41b221b52ce44ca8370d",
    "traits.csv":
        "a6fe964c6716c92a1fe5900dfc6a7bfc6b1f1075791a74448517fc779e25a9f3",
}


def test_output_is_byte_identical_to_the_recorded_set(tmp_path: Path) -> None:
    """Same seed, same bytes as recorded: the random draws, their order, the rendering,
    the file names and ``traits.csv`` are all unchanged (3 ALL + 1 HEM patients, cells with
    0 to 3 nucleoli, 1 to 3 cells per smear image)."""
    generate(tmp_path / "out", GOLDEN_CONFIG)
    got = tree_hashes(tmp_path / "out")
    assert sorted(got) == sorted(GOLDEN_SHA256)
    changed = [name for name in GOLDEN_SHA256 if got[name] != GOLDEN_SHA256[name]]
    assert not changed, f"{len(changed)} file(s) differ from the recorded set: {changed}"


def test_cells_do_not_depend_on_generation_order(full: Path) -> None:
    """Re-render some cells in reverse order from their own seeds: same pixels."""
    from leukoedge import synth

    patients = make_patients(FULL)
    rows = read_rows(full)
    by_patient: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], []).append(r)
    for pindex in (len(patients) - 1, 0):
        patient = patients[pindex]
        for cindex in (4, 0):
            rng = synth._cell_rng(FULL.seed, pindex, cindex)
            traits = sample_traits(rng, patient)
            rgb = render_cell(rng, traits, patient, FULL.size)
            row = by_patient[patient.patient_id][cindex]
            assert np.array_equal(rgb, np.asarray(Image.open(full / row["path"])))
            assert float(row["cell_radius"]) == pytest.approx(traits.cell_radius, rel=1e-5)



def test_sample_cells_are_the_first_cells_generate_writes(tmp_path: Path) -> None:
    """In-memory cells (the parity check's fallback) equal the files of the same set."""
    config = SynthConfig(patients=3, cells_per_patient=4, seed=5, size=64)
    generate(tmp_path, config)
    rows = read_rows(tmp_path)
    x, labels = sample_cells(9, seed=5, size=64, cells_per_patient=4)
    assert x.shape == (9, 64, 64, 3) and x.dtype == np.uint8
    assert labels.tolist() == [int(r["label"]) for r in rows[:9]]
    assert set(labels.tolist()) == {0, 1}
    for got, row in zip(x, rows[:9]):
        assert np.array_equal(got, np.asarray(Image.open(tmp_path / row["path"])))
    with pytest.raises(ValueError):
        sample_cells(0)

# --------------------------------------------------------------------------- #
# layout, naming, balance
# --------------------------------------------------------------------------- #
def test_layout_and_naming(full: Path) -> None:
    top = sorted(p.name for p in full.iterdir())
    assert top == [f"fold_{i}" for i in range(FULL.folds)] + ["traits.csv"]
    files = sorted(p for p in full.rglob("*") if p.is_file() and p.name != "traits.csv")
    assert len(files) == FULL.patients * FULL.cells_per_patient
    folds_of_patient: dict[str, set[str]] = {}
    for p in files:
        m = NAME_RE.fullmatch(p.name)
        assert m, p.name
        h, number, _, _, suffix = m.groups()
        rel = p.relative_to(full).parts
        assert len(rel) == 3 and re.fullmatch(r"fold_\d+", rel[0])
        assert rel[1] == suffix
        assert (h == "H") == (suffix == "hem")
        folds_of_patient.setdefault(h + number, set()).add(rel[0])
    assert all(len(f) == 1 for f in folds_of_patient.values())
    assert len(folds_of_patient) == FULL.patients

    rows = read_rows(full)
    assert list(rows[0]) == ["path", "label", "patient", "fold", "image", "cell", *TRAIT_NAMES]
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(full).as_posix() for p in files)
    for r in rows:
        assert r["path"].startswith(f"fold_{r['fold']}/")
        assert int(r["label"]) == (1 if r["path"].endswith("_all.bmp") else 0)
        assert f"UID_{r['patient']}_{r['image']}_{r['cell']}_" in r["path"]


def test_images_are_24bit_bmp_on_black(full: Path) -> None:
    for p in sorted(full.rglob("*.bmp"))[:20]:
        raw = p.read_bytes()
        assert raw[:2] == b"BM" and int.from_bytes(raw[28:30], "little") == 24
        im = Image.open(p)
        assert im.format == "BMP" and im.mode == "RGB" and im.size == (450, 450)
        a = np.asarray(im)
        assert a[:10].max() == 0 and a[-10:].max() == 0 and a[:, :10].max() == 0
        assert a[225, 225].sum() > 0


def test_class_balance(full: Path) -> None:
    rows = read_rows(full)
    frac = np.mean([int(r["label"]) for r in rows])
    assert abs(frac - 2 / 3) < 0.05
    for patients, fraction, expect_all in [
        (2, 0.99, 1),
        (2, 0.01, 1),
        (2, 1.0, 1),
        (3, 0.0, 1),
        (1, 0.67, 1),
        (1, 0.2, 0),
        (3, 0.67, 2),
        (10, 0.5, 5),
        (12, 0.25, 3),
    ]:
        ps = make_patients(SynthConfig(patients=patients, all_fraction=fraction, folds=1))
        assert sum(p.label for p in ps) == expect_all
        ids = [p.patient_id for p in ps]
        assert ids == [str(i + 1) for i in range(expect_all)] + [
            f"H{i + 1}" for i in range(patients - expect_all)
        ]


def test_folds_get_both_classes() -> None:
    ps = make_patients(SynthConfig(patients=12, folds=3))
    for f in range(3):
        labels = {p.label for p in ps if p.fold == f}
        assert labels == {0, 1}


# --------------------------------------------------------------------------- #
# validation and atomic writes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "kwargs",
    [
        {"patients": 0},
        {"patients": 2.5},
        {"cells_per_patient": 0},
        {"seed": -1},
        {"size": 8},
        {"all_fraction": -0.1},
        {"all_fraction": 1.5},
        {"all_fraction": float("nan")},
        {"folds": 0},
        {"patients": 2, "folds": 3},
    ],
)
def test_invalid_config_raises(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / "out", SynthConfig(**kwargs))
    assert not (tmp_path / "out").exists()


def test_non_empty_output_dir_raises(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        generate(tmp_path, SynthConfig(patients=2, cells_per_patient=1, folds=1))


def test_overwrite_replaces_previous_dataset_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(out, SynthConfig(patients=4, cells_per_patient=3, size=64, folds=2))
    (out / "notes.txt").write_text("keep me")
    # temporary images of killed runs (atomic_path's names, and the older ones)
    (out / "fold_1" / "all" / ".UID_2_1_1_all.bmp.tmp-4242").write_bytes(b"BM")
    (out / "fold_1" / "hem" / ".UID_H1_1_1_hem.bmp.tmp").write_bytes(b"BM")
    small = SynthConfig(patients=2, cells_per_patient=2, size=64, folds=1, seed=5)
    generate(out, small, overwrite=True)
    bmps = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.bmp"))
    assert len(bmps) == 4 and all(b.startswith("fold_0/") for b in bmps)
    assert sorted(r["path"] for r in read_rows(out)) == bmps
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / "fold_1").exists()
    fresh = tmp_path / "fresh"
    generate(fresh, small)
    assert {k: v for k, v in tree_hashes(out).items() if k != "notes.txt"} == tree_hashes(fresh)


def test_interrupted_run_leaves_only_complete_images(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate(out, SynthConfig(patients=2, cells_per_patient=5, size=64, folds=1), progress=stop)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 4 and all(p.suffix == ".bmp" for p in files)
    for p in files:
        assert np.asarray(Image.open(p)).shape == (64, 64, 3)
    assert not (out / "traits.csv").exists()


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    from leukoedge import synth

    real_save = synth._save_bmp
    calls = {"n": 0}

    def flaky_save(rgb: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            path.write_bytes(b"BM" + b"\0" * 100)  # half-written file
            raise OSError("disk full")
        real_save(rgb, path)

    monkeypatch.setattr(synth, "_save_bmp", flaky_save)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="cannot write .*UID_.*: disk full"):
        generate(out, SynthConfig(patients=2, cells_per_patient=3, size=64, folds=1))
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert len(files) == 2 and all(NAME_RE.fullmatch(n) for n in files)


# --------------------------------------------------------------------------- #
# realism against the real C-NMC cells
# --------------------------------------------------------------------------- #
def test_realism_within_real_range(full: Path, shared_cells: Path) -> None:
    real_files = sorted(shared_cells.glob("fold_*/*/*.bmp"))
    assert len(real_files) >= 40
    real = np.array([cell_stats(np.asarray(Image.open(p).convert("RGB"))) for p in real_files])
    synth = np.array([cell_stats(np.asarray(Image.open(p))) for p in sorted(full.rglob("*.bmp"))])
    lo, hi = real.min(axis=0), real.max(axis=0)
    for j, name in enumerate(STAT_NAMES):
        outside = np.flatnonzero((synth[:, j] < lo[j]) | (synth[:, j] > hi[j]))
        assert outside.size == 0, (
            f"{name}: {outside.size} synthetic cells outside real range "
            f"[{lo[j]:.3f}, {hi[j]:.3f}], e.g. {synth[outside[:3], j]}"
        )


# --------------------------------------------------------------------------- #
# difficulty on held-out patients
# --------------------------------------------------------------------------- #
def test_oracle_on_traits_held_out_patients(small: dict[str, np.ndarray]) -> None:
    acc = fold_cv(small["traits"], small["y"], small["fold"], logreg)
    assert 0.90 <= acc <= 0.98, acc


def test_mean_colour_alone_is_weak(small: dict[str, np.ndarray]) -> None:
    acc = fold_cv(small["mean_rgb"], small["y"], small["fold"], logreg)
    assert acc <= 0.75, acc


def test_patient_leak_in_pixel_nearest_neighbour(small: dict[str, np.ndarray]) -> None:
    x, y = small["pixels16"], small["y"]
    patient_split = fold_cv(x, y, small["fold"], nearest_neighbour)
    random_folds = np.random.default_rng(0).permutation(len(y)) % 3
    image_split = fold_cv(x, y, random_folds, nearest_neighbour)
    assert image_split - patient_split >= 0.05, (image_split, patient_split)


def test_patient_folds_are_patient_disjoint(small: dict[str, np.ndarray]) -> None:
    for pid in np.unique(small["patient"]):
        assert np.unique(small["fold"][small["patient"] == pid]).size == 1


# --------------------------------------------------------------------------- #
# trait model sanity
# --------------------------------------------------------------------------- #
def test_trait_model_matches_dataclass() -> None:
    from dataclasses import fields

    assert tuple(f.name for f in fields(CellTraits)) == TRAIT_NAMES == tuple(TRAIT_MODEL)


def test_traits_respect_bounds_and_render_any_size() -> None:
    patient = PatientStyle("1", 1, 0, 1.0, (1.0, 1.0, 1.0), {})
    rng = np.random.default_rng(0)
    for _ in range(200):
        t = sample_traits(rng, patient)
        for name in TRAIT_NAMES:
            d = TRAIT_MODEL[name]
            assert d.low <= getattr(t, name) <= d.high
    for size in (32, 97, 450):
        a = render_cell(rng, t, patient, size)
        assert a.shape == (size, size, 3) and a.dtype == np.uint8
        assert 0.05 < (a.sum(2) > 0).mean() < 0.35
