"""Training plugin: train -> checkpoint -> export -> parity, resume, weights, plugins.

Training runs once per session (session-scoped fixtures) on a small synthetic set; the
exported models are checked against the real C-NMC sample cells.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402
import typer  # noqa: E402

import leukoedge.cli as cli  # noqa: E402
import leukoedge.plugins as plugins_mod  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SHARED_CELLS, run_cli  # noqa: E402
from train_data import write_dataset  # noqa: E402

pytestmark = pytest.mark.train

REAL = SHARED_CELLS  # optional extra data where a test can do without it (--data)
#: The test needs the real cells: it fails under CI without them and skips elsewhere.
needs_real = pytest.mark.usefixtures("shared_cells")


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# -- session fixtures: train once --------------------------------------------------------

@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="session")
def synth(work: Path) -> Path:
    return write_dataset(work / "synth", patients=8, cells=16, size=64, seed=1)


@dataclass
class ScratchRun:
    """The session's scratch run: trained 2 epochs, then resumed to 3."""

    run: Path
    codes: tuple[int, int]  # exit codes of the two commands
    first: list[dict[str, str]]  # history.csv after the first command
    epoch_after_2: int | None  # last.pt's epoch after the first command


@pytest.fixture(scope="session")
def scratch_run(work: Path, synth: Path) -> ScratchRun:
    """Scratch CNN: 2 epochs, then --resume to 3 epochs (one run serves both checks)."""
    run = work / "runs" / "scratch-test"
    common = ["train", "scratch", synth, "--input-size", "48", "--batch-size", "16",
              "--out", run, "--patience", "0"]
    code1 = cli.main([str(a) for a in common + ["--epochs", "2"]])
    first = history(run) if code1 == 0 else []
    last_after_2 = torch.load(run / "last.pt", weights_only=True) if code1 == 0 else {}
    code2 = cli.main([str(a) for a in common + ["--epochs", "3", "--resume"]])
    return ScratchRun(run, (code1, code2), first, last_after_2.get("epoch"))


@pytest.fixture(scope="session")
def scratch_onnx(scratch_run: ScratchRun, work: Path) -> tuple[Path, int, str]:
    """Export with the defaults (newest run under runs/, exported/<run>.onnx)."""
    import contextlib
    import io
    import os

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = ["export", "--to", "onnx"] + (["--data", str(REAL)] if REAL.is_dir() else [])
            code = cli.main(args)
    finally:
        os.chdir(old)
    return work / "exported" / "scratch-test.onnx", code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="session")
def resnet_run(work: Path) -> tuple[Path, int]:
    data = write_dataset(work / "tiny", patients=4, cells=8, size=64, seed=3)
    run = work / "runs-r" / "resnet"
    code = cli.main(["train", "resnet50", str(data), "--weights", "none", "--epochs", "1",
                     "--input-size", "64", "--batch-size", "16", "--out", str(run)])
    return run, code


# -- training ----------------------------------------------------------------------------

def test_scratch_trains_above_majority(scratch_run: ScratchRun) -> None:
    assert scratch_run.codes == (0, 0)
    run = scratch_run.run
    for name in ("best.pt", "last.pt", "history.csv", "curves.png", "config.json"):
        assert (run / name).is_file(), name
    rows = history(run)
    cfg = json.loads((run / "config.json").read_text())
    split = cfg["split"]
    majority = max(split["val_all"], split["val_hem"]) / split["val_images"]
    best = max(float(r["val_acc"]) for r in rows)
    assert best >= majority + 0.15, (best, majority, rows)
    assert list(rows[0]) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                             "val_weighted_f1", "lr", "seconds"]


def test_split_is_by_patient(scratch_run: ScratchRun) -> None:
    run = scratch_run.run
    split = json.loads((run / "config.json").read_text())["split"]
    assert split["method"] == "patient"
    assert split["train_patients"] and split["val_patients"]
    assert not set(split["train_patients"]) & set(split["val_patients"])


def test_resume_continues_with_same_history(scratch_run: ScratchRun) -> None:
    assert scratch_run.epoch_after_2 == 2
    run = scratch_run.run
    rows = history(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[:2] == scratch_run.first
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and len(last["history"]) == 3


def test_resumed_run_equals_the_uninterrupted_one(work: Path) -> None:
    """A run stopped after epoch 2 of 3 and resumed ends with the same weights, to the
    bit, the same optimiser state and the same history as 3 epochs in one go."""
    from leukoedge_train.config import TrainConfig
    from leukoedge_train.train import train

    data = write_dataset(work / "resume", patients=4, cells=8, size=40, seed=2)

    def cfg(name: str, resume: bool = False) -> TrainConfig:
        return TrainConfig("scratch", data, out=work / "runs-resume" / name, resume=resume,
                           input_size=32, batch_size=8, epochs=3, patience=0, threads=1)

    class Killed(Exception):
        pass

    def kill_after_2(row: dict[str, float]) -> None:
        if row["epoch"] == 2:  # last.pt of epoch 2 is written; epoch 3 never starts
            raise Killed

    whole = train(cfg("whole"))
    with pytest.raises(Killed):
        train(cfg("resumed"), on_epoch=kill_after_2)
    resumed = train(cfg("resumed", resume=True))
    assert (resumed.epochs_done, resumed.best_epoch, resumed.best_f1) == \
        (whole.epochs_done, whole.best_epoch, whole.best_f1) and whole.epochs_done == 3
    a = torch.load(whole.run_dir / "last.pt", weights_only=True)
    b = torch.load(resumed.run_dir / "last.pt", weights_only=True)
    assert list(a["model"]) == list(b["model"])
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for group_a, group_b in zip(a["optimizer"]["state"].values(),
                                b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(group_a[k], group_b[k]) for k in group_a)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

    def steady(rows: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert steady(a["history"]) == steady(b["history"])


def test_checkpoints_load_weights_only(scratch_run: ScratchRun) -> None:
    from leukoedge.spec import ModelSpec

    run = scratch_run.run
    for name in ("best.pt", "last.pt"):
        ck = torch.load(run / name, weights_only=True)
        spec = ModelSpec.from_json(ck["spec"])
        assert spec.architecture == "scratch" and spec.input_size == 48
        assert spec.data_fingerprint.startswith("sha256:") and spec.train_images > 0
        assert "val_weighted_f1" in spec.metrics
        assert isinstance(ck["model"], dict) and ck["history"]
    assert "optimizer" in torch.load(run / "last.pt", weights_only=True)
    assert not list(run.glob(".*tmp*")), "temporary checkpoint files left behind"


def test_same_seed_same_run(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_dataset(work / "det", patients=4, cells=6, size=40, seed=5)
    rows = []
    for k in range(2):
        code, _, err = run_cli(capsys, "train", "scratch", data, "--input-size", "32",
                               "--epochs", "1", "--batch-size", "8", "--seed", "7",
                               "--out", work / f"det-run{k}")
        assert code == 0, err
        rows.append({k: v for k, v in history(work / f"det-run{k}")[0].items()
                     if k != "seconds"})
    assert rows[0] == rows[1]



def test_unreadable_images_are_skipped_and_listed(work: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # brackets in the paths: Rich must print them, not read them as markup
    data = write_dataset(work / "bad[red]", patients=4, cells=6, size=40, seed=6)
    files = sorted(data.rglob("*.bmp"))
    good = files[0].read_bytes()
    files[0].write_bytes(good[: len(good) // 3])           # truncated BMP
    files[-1].write_text("not an image\n")                  # text named .bmp
    run = work / "bad-run[bold]"
    code, out, err = run_cli(capsys, "train", "scratch", data, "--input-size", "32",
                             "--epochs", "1", "--batch-size", "8", "--out", run)
    assert code == 0, err
    assert f"run {run}:" in out and "bad[red]" in err
    assert "2 unreadable images left out of training" in err
    assert files[0].name in err and files[-1].name in err
    with open(run / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in rows) == sorted([files[0].name, files[-1].name])
    assert all(r["side"] in ("train", "val") and r["reason"] for r in rows)
    split = json.loads((run / "config.json").read_text())["split"]
    assert split["train_images"] + split["val_images"] == len(files) - 2

    # every HEM cell unreadable: one clear line, no training, no traceback
    for f in data.rglob("*.bmp"):
        if "hem" in f.name.lower():
            f.write_text("broken\n")
    code, _, err = run_cli(capsys, "train", "scratch", data, "--input-size", "32",
                           "--epochs", "1", "--out", work / "bad-run-2")
    assert code == 3 and "Traceback" not in err, err
    assert "only one class" in err or "validation images" in err

def test_existing_run_is_not_overwritten(scratch_run: ScratchRun, synth: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "scratch", synth, "--out", scratch_run.run)
    assert code == 2 and "already holds a run" in err and "--resume" in err


# -- export and parity -------------------------------------------------------------------

@needs_real
def test_scratch_export_default_paths_and_parity(scratch_onnx: tuple[Path, int, str]) -> None:
    from leukoedge.session import SessionConfig, load_model

    path, code, text = scratch_onnx
    assert code == 0, text
    assert path.is_file()
    assert "pass" in text and "43" in text
    m = load_model(path, SessionConfig(provider="cpu"))
    assert m.spec.architecture == "scratch" and m.spec.input_size == 48
    assert m.input_name == "image" and m.output_name == "logit"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_onnx_is_self_contained(scratch_onnx: tuple[Path, int, str]) -> None:
    import onnx

    from leukoedge.spec import SPEC_KEY

    path, code, text = scratch_onnx
    assert code == 0, text
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL
                   for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[SPEC_KEY])["architecture"] == "scratch"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert list(path.parent.iterdir()) == [path]


def test_fresh_export_names_no_folder_of_this_machine(
        scratch_onnx: tuple[Path, int, str]) -> None:
    """The exporter records each node's Python stack (this checkout's cam.py, the venv's
    torch); export strips it, so the file holds no path of the exporting machine."""
    import onnx

    from leukoedge_train.source_paths import SOURCE_KEYS

    path, code, text = scratch_onnx
    assert code == 0, text
    model = onnx.load(str(path))
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert not keys & SOURCE_KEYS
    raw = path.read_bytes()
    repo = str(Path(__file__).resolve().parents[1]).encode()
    assert repo not in raw and str(Path.home()).encode() + b"/" not in raw
    assert b'File "/' not in raw


@needs_real
def test_parity_command_on_real_cells(scratch_onnx: tuple[Path, int, str],
                                      scratch_run: ScratchRun,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, code, _ = scratch_onnx
    assert code == 0
    code, out, err = run_cli(capsys, "parity", path, scratch_run.run, "--data", REAL)
    assert code == 0, err
    for row in ("pass", "PyTorch fp32 vs oracle", "ONNX vs oracle", "ONNX vs PyTorch fp32",
                "bound per image", "largest |logit|", "worst images", "time"):
        assert row in out, (row, out)

    code, out, err = run_cli(capsys, "parity", path, scratch_run.run, "--data", REAL,
                             "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["passed"] is True and d["images"] == 43 and d["batch_sizes"] == [1, 16]
    e = d["errors"]
    assert 0 < e["fp32_vs_oracle"] < 1e-3 and 0 < e["onnx_vs_oracle"] <= d["bound"]["min"]
    assert e["onnx_vs_fp32"] > 0 and d["tf32"] is None and d["provider"] == "cpu"
    assert d["bound"]["min"] >= d["bound"]["k"] * e["fp32_vs_oracle"]
    assert 0 < d["worst_ratio"] <= 1 and d["max_abs_logit"] > 0 and d["seconds"] > 0
    assert 1 <= len(d["worst"]) <= 5
    assert d["worst"][0]["ratio"] == pytest.approx(d["worst_ratio"])


def test_parity_library_synthetic(scratch_onnx: tuple[Path, int, str],
                                  scratch_run: ScratchRun,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from leukoedge_train import checkpoint as ckpt_io
    from leukoedge_train import parity

    from leukoedge.session import Model, SessionConfig

    configs: list[SessionConfig] = []
    real_load = parity.load_model

    def load(path: Path, cfg: SessionConfig) -> Model:
        configs.append(cfg)
        return real_load(path, cfg)

    monkeypatch.setattr(parity, "load_model", load)
    path, code, _ = scratch_onnx
    assert code == 0
    run = scratch_run.run
    res = parity.check_checkpoint(path, ckpt_io.resolve(run))
    assert res.passed and res.source == "synthetic" and res.batch_sizes == (1, 16)
    assert res.images == parity.SYNTHETIC_IMAGES and not res.failures and not res.label_flips
    # the oracle is not the fp32 run: float32 rounding shows against it, and the ONNX file
    # stays within the bound earned by that rounding
    assert 0 < res.fp32_error < 1e-4 and 0 < res.onnx_error <= res.bound_min
    assert res.bound_min >= max(parity.K * res.fp32_error, parity.FLOOR)
    assert res.worst_ratio <= 1 and res.max_abs_diff == res.onnx_fp32_diff
    assert [c.cuda_tf32 for c in configs] == [False]  # TF32 off wherever the ONNX side runs


def test_parity_oracle_is_float64_from_the_input(scratch_run: ScratchRun) -> None:
    import numpy as np
    from leukoedge_train import checkpoint as ckpt_io
    from leukoedge_train.parity import oracle_logits, torch_logits

    run = scratch_run.run
    model = ckpt_io.model_of(ckpt_io.load(ckpt_io.resolve(run)))
    seen: list[torch.dtype] = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
            break
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    f64 = oracle_logits(model, x)
    assert seen == [torch.float64]  # the first layer saw float64 input (a deep copy's)
    assert next(model.parameters()).dtype == torch.float32  # the model is left as it was
    f32 = torch_logits(model, x, 4)
    assert seen[1:] == [torch.float32]
    assert 0 < np.abs(f32 - f64).max() < 1e-4


def test_parity_rule_bound_and_near_threshold_flips() -> None:
    import numpy as np
    from leukoedge_train.parity import Runs, judge

    f64 = np.array([5.0, -3.0, 2e-6, 0.5])
    fp32 = np.stack([f64 + [1e-5, -2e-5, 0.0, 0.0]] * 2)  # fp32 strays by 2e-5 at most

    def runs(onnx: np.ndarray) -> Runs:
        return Runs(f64, fp32, np.stack([onnx, onnx]), (1, 16), 0.0, "cpu", None)

    names = ["a", "b", "near", "d"]
    # within k * 2e-5 = 8e-5 everywhere; the near-threshold image flips its label: allowed
    v = judge(runs(f64 + [7e-5, -7e-5, -3e-6, 0.0]), names, 0.0, k=4.0, floor=1e-6)
    assert v["passed"] and v["near_threshold"] == ["near"] and not v["label_flips"]
    assert v["bound_min"] == pytest.approx(8e-5) and v["bound_max"] == pytest.approx(8e-5)
    assert v["worst_ratio"] == pytest.approx(7e-5 / 8e-5)
    # the floor term wins for a large logit: 1e-5 * (1 + 5) = 6e-5 > 1 * 2e-5
    v = judge(runs(f64 + [5.5e-5, 0.0, 0.0, 0.0]), names, 0.0, k=1.0, floor=1e-5)
    assert v["passed"] and v["bound_max"] == pytest.approx(6e-5)
    assert v["bound_min"] == pytest.approx(2e-5)
    # outside the bound on one image: fail, named, worst first
    v = judge(runs(f64 + [0.0, 0.0, 0.0, 1e-3]), names, 0.0, k=4.0, floor=1e-6)
    assert not v["passed"] and v["failures"] == ["d"] and v["worst"][0].name == "d"
    assert v["worst_ratio"] == pytest.approx(1e-3 / 8e-5)
    # a label flip away from the threshold fails and is named as a flip
    v = judge(runs(f64 + [0.0, 0.0, 0.0, -0.6]), names, 0.0, k=4.0, floor=1e-6)
    assert not v["passed"] and v["label_flips"] == ["d"] and v["failures"] == ["d"]
    # a NaN from the ONNX file is outside every bound
    v = judge(runs(f64 + [0.0, float("nan"), 0.0, 0.0]), names, 0.0, k=4.0, floor=1e-6)
    assert not v["passed"] and v["failures"] == ["b"] and v["worst"][0].name == "b"


# Broken exports of the trained test model: each must fail parity by >= 10x the bound.

class _BGR(torch.nn.Module):
    """The graph reads the image as BGR (channels reversed before the model)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.inner(image.flip(-1))  # type: ignore[no-any-return]


def _mean_off(m: torch.nn.Module) -> torch.nn.Module:
    """Normalisation mean off by 1/255 in every channel: shift = -(mean + 1/255) / std."""
    std = 1.0 / (255.0 * m.scale)  # type: ignore[operator]
    m.shift -= (1.0 / 255.0) / std  # type: ignore[operator]
    return m


def _first_conv_scaled(m: torch.nn.Module) -> torch.nn.Module:
    conv = next(c for c in m.modules() if isinstance(c, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight.mul_(1.01)
    return m


def _bn_folded_eps(m: torch.nn.Module) -> torch.nn.Module:
    """The first conv + batch norm folded into one conv, with epsilon 1e-3 (not 1e-5)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    block = m.net.features[0]  # type: ignore[union-attr,index]
    conv, bn = block[0], block[1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-5
    bn.eps = 1e-3
    block[0], block[1] = fuse_conv_bn_eval(conv, bn), torch.nn.Identity()
    return m


DEFECTS = {
    "correct": lambda m: m,
    "mean_off_by_1_255": _mean_off,
    "channels_bgr": _BGR,
    "first_conv_x1.01": _first_conv_scaled,
    "bn_folded_eps_1e-3": _bn_folded_eps,
}


@pytest.fixture(scope="session")
def defect_exports(scratch_run: ScratchRun, work: Path) -> dict[str, Path]:
    """One ONNX file per entry of DEFECTS, exported the way ``export`` does."""
    import copy

    from leukoedge_train import checkpoint as ckpt_io
    from leukoedge_train.export import _finish, _torch_export

    run = scratch_run.run
    ckpt = ckpt_io.load(ckpt_io.resolve(run))
    spec, model = ckpt_io.spec_of(ckpt), ckpt_io.model_of(ckpt)
    out = work / "defects"
    out.mkdir()
    paths = {}
    for name, breaks in DEFECTS.items():
        broken = breaks(copy.deepcopy(model)).eval()
        raw, final = out / f"{name}.raw.onnx", out / f"{name}.onnx"
        _torch_export(broken, spec.input_size, raw, 18, "dynamo")
        _finish(raw, spec, final)
        paths[name] = final
    return paths


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_broken_exports_fail_parity_by_10x_the_bound(defect: str,
                                                     defect_exports: dict[str, Path],
                                                     scratch_run: ScratchRun) -> None:
    from leukoedge_train import checkpoint as ckpt_io
    from leukoedge_train.parity import check_checkpoint

    run = scratch_run.run
    res = check_checkpoint(defect_exports[defect], ckpt_io.resolve(run))
    if defect == "correct":  # the same path, nothing broken: passes well inside the bound
        assert res.passed and res.worst_ratio < 1, res.summary()
        return
    assert not res.passed and res.failures, res.summary()
    assert res.worst_ratio >= 10, res.summary()
    assert res.onnx_error >= 10 * res.bound_min
    assert res.worst[0].ratio == pytest.approx(res.worst_ratio)
    assert res.fp32_error < res.bound_min  # PyTorch itself stayed inside: the file is wrong


def test_parity_command_fails_on_a_broken_export(defect_exports: dict[str, Path],
                                                 scratch_run: ScratchRun,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "parity", defect_exports["mean_off_by_1_255"],
                             scratch_run.run)
    assert code == 3 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "parity FAIL" in errors[0] and "mean_off" in errors[0]
    assert "FAIL" in out and "worst images" in out and "differs: synthetic-" in err


@needs_real
def test_parity_command_on_a_tta8_export(scratch_run: ScratchRun, work: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``parity`` reads the file's test-time symmetries (and map) and judges it against the
    oracle ``export`` used: an ``export --tta 8 --cam`` file passes; a file whose graph
    averages over the mirror only, while its spec says all 8 symmetries, fails (issue 30:
    parity used to compare the averaged logit with a model that does not average)."""
    import copy

    from leukoedge_train import cam
    from leukoedge_train import checkpoint as ckpt_io
    from leukoedge_train.export import _finish, _torch_export
    from leukoedge_train.parity import check, file_spec

    out = work / "tta8" / "m.onnx"
    code, o, e = run_cli(capsys, "export", scratch_run.run, "--to", "onnx", "--tta", "8",
                         "--cam", "--out", out, "--data", REAL)
    assert code == 0, e
    assert file_spec(out).tta == "d4" and file_spec(out).outputs == ("logit", "cam")
    from leukoedge.inspect_model import describe_model

    info = describe_model(out)  # the network's count, recorded; not the map's copies
    ckpt = ckpt_io.load(ckpt_io.resolve(scratch_run.run))
    assert info["parameters_source"] == "recorded at export"
    assert info["parameters"] == sum(p.numel() for p in ckpt_io.model_of(ckpt).parameters())
    assert info["stored_values"] > info["parameters"] and info["copies"] > 0
    code, o, e = run_cli(capsys, "parity", out, scratch_run.run, "--data", REAL, "--json")
    assert code == 0, e
    d = json.loads(o)
    assert d["passed"] is True and d["images"] == 43 and d["worst_ratio"] <= 1
    assert d["cam"] is not None and d["cam"]["passed"] is True

    # the oracle must average too: the bare model's logits are far from this file's
    bare = check(out, ckpt_io.model_of(ckpt), ckpt_io.spec_of(ckpt), REAL)
    assert not bare.passed, bare.summary()

    # broken: the graph averages over the mirror only (d1), the spec says d4
    spec = ckpt_io.spec_of(ckpt)
    broken = cam.InGraph(copy.deepcopy(ckpt_io.model_of(ckpt)), cam=True, tta="d1").eval()
    raw, bad = work / "tta8" / "broken.raw.onnx", work / "tta8" / "broken.onnx"
    _torch_export(broken, spec.input_size, raw, 18, "dynamo")
    _finish(raw, spec.with_updates(outputs=("logit", "cam"), tta="d4"), bad)
    code, o, e = run_cli(capsys, "parity", bad, scratch_run.run, "--data", REAL)
    assert code == 3 and "Traceback" not in e
    errors = [ln for ln in e.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "parity FAIL" in errors[0], e


def test_fixed_batch_axis_is_refused_by_the_graph_check(
        scratch_run: ScratchRun, work: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import warnings
    from contextlib import redirect_stdout

    from leukoedge_train import export as export_mod

    def fixed_batch(model: torch.nn.Module, size: int, path: Path, opset: int,
                    exporter: str) -> None:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros((1, size, size, 3), dtype=torch.uint8),),
                              str(path), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logit"])

    monkeypatch.setattr(export_mod, "_torch_export", fixed_batch)
    target = work / "fixed-batch" / "m.onnx"
    code, _, err = run_cli(capsys, "export", scratch_run.run, "--out", target)
    assert code == 3, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "fixed batch axis (1)" in errors[0], err
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_export_json(scratch_run: ScratchRun, work: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    target = work / "export-json" / "m.onnx"
    code, out, err = run_cli(capsys, "export", scratch_run.run, "--out", target,
                             "--exporter", "legacy", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["exported"]["path"] == str(target) and target.is_file()
    assert d["exported"]["input_size"] == 48 and d["precision"] is None
    p = d["parity"]
    assert p["passed"] is True and p["source"] == "synthetic"
    assert set(p["errors"]) >= {"fp32_vs_oracle", "onnx_vs_oracle", "onnx_vs_fp32"}
    assert p["errors"]["onnx_vs_oracle"] <= p["bound"]["min"]


def test_failed_parity_leaves_no_file(scratch_run: ScratchRun, work: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from leukoedge_train import parity

    real_check = parity.check

    def broken(*a: object, **kw: object) -> parity.ParityResult:
        res = real_check(*a, **kw)  # type: ignore[arg-type]
        res.passed, res.failures = False, ["cell-x.bmp"]
        return res

    monkeypatch.setattr(parity, "check", broken)
    out_dir = work / "fail-export"
    target = out_dir / "m.onnx"
    code, _, err = run_cli(capsys, "export", scratch_run.run, "--out", target,
                           "--exporter", "legacy")
    assert code == 3, err
    assert "export rejected" in err and "cell-x.bmp" in err
    assert not target.exists()
    assert list(out_dir.iterdir()) == []


def test_resnet50_weights_none_export_parity(resnet_run: tuple[Path, int], work: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from leukoedge.session import SessionConfig, load_model

    run, code = resnet_run
    assert code == 0
    assert len(history(run)) == 1
    target = work / "exported-r" / "resnet.onnx"
    args: list[object] = ["export", run, "--out", target]
    if REAL.is_dir():
        args += ["--data", REAL]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, out + err
    m = load_model(target, SessionConfig(provider="cpu"))
    assert m.spec.architecture == "resnet50" and m.spec.input_size == 64
    assert m.spec.mean == pytest.approx((0.485, 0.456, 0.406))


# -- weights -----------------------------------------------------------------------------

def test_imagenet_offline_names_the_file(synth: Path, work: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import urllib.error

    import torch.hub

    home = work / "empty-torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(*a: object, **kw: object) -> None:
        raise OSError(101, "Network is unreachable")

    def no_download(*a: object, **kw: object) -> None:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    code, _, err = run_cli(capsys, "train", "resnet50", synth, "--weights", "imagenet",
                           "--epochs", "1", "--input-size", "64", "--out", work / "r-offline")
    assert code == 3
    expected = home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    flat = " ".join(err.split())
    assert str(expected) in flat
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in flat
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1
    assert not (work / "r-offline" / "last.pt").exists()


def test_weights_file_is_loaded(tmp_path: Path) -> None:
    from leukoedge_train.models import create_model, load_backbone_weights

    src = create_model("resnet50", 32)
    state = {k: v for k, v in src.net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    dst = create_model("resnet50", 32)
    desc = load_backbone_weights(dst, "resnet50", str(tmp_path / "w.pth"))
    assert "w.pth" in desc
    assert torch.equal(dst.net.conv1.weight, src.net.conv1.weight)


def test_unknown_architecture_lists_known(synth: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from leukoedge_train.models import create_model

    from leukoedge.errors import UsageError

    with pytest.raises(UsageError, match="resnet50, scratch"):
        create_model("vgg")
    code, _, err = run_cli(capsys, "train", "vgg", synth)
    assert code == 2 and "scratch" in err


# -- small parts -------------------------------------------------------------------------

def test_scratch_shape_and_freezing() -> None:
    from leukoedge_train.models import ScratchNet, create_model, set_trainable, trainable_prefixes

    net = ScratchNet(45, batchnorm=False)
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 128, 128, 256, 256]
    linears = [m for m in net.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and linears[0].in_features == 256 * 2 * 2
    assert linears[-1].out_features == 1
    model = create_model("scratch", 45)
    x = torch.randint(0, 256, (3, 45, 45, 3), dtype=torch.uint8)
    assert model.eval()(x).shape == (3,)

    r = create_model("resnet50", 32)
    frozen_bn = set_trainable(r, trainable_prefixes("resnet50", "layer3"))
    trainable = {n.split(".")[1] for n, p in r.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4", "fc"}
    assert frozen_bn and all(not p.requires_grad for m in frozen_bn for p in m.parameters())


def test_augment_keeps_dtype_and_black_background() -> None:
    from leukoedge_train.dataset import augment

    x = torch.zeros((8, 16, 16, 3), dtype=torch.uint8)
    x[:, 4:12, 4:12] = 120
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert int(y[:, :4].max()) == 0
    assert torch.equal(augment(x, torch.Generator().manual_seed(1)),
                       augment(x, torch.Generator().manual_seed(1)))


def test_split_options(synth: Path) -> None:
    from leukoedge_train.dataset import make_split

    from leukoedge.errors import UsageError

    s = make_split(synth, val_fraction=0.3, seed=2)
    assert not {i.patient for i in s.train} & {i.patient for i in s.val}
    img = make_split(synth, by_image=True)
    assert img.method == "image" and any("leak" in n for n in img.notes)
    with pytest.raises(UsageError):
        make_split(synth, val_fold="fold_1")
    with pytest.raises(UsageError):
        make_split(synth, val=synth, by_image=True)


def test_lr_schedule_warmup_then_cosine() -> None:
    from leukoedge_train.schedule import lr_at

    lrs = [lr_at(s, 100, 1.0, 10, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.05
    assert lr_at(50, 100, 0.3, 10, "constant") == 0.3


# -- plugin discovery and the missing extra ----------------------------------------------

def test_defaults_table_is_what_training_and_help_use() -> None:
    """One table (leukoedge_train.defaults): TrainConfig.resolved() fills from it, the
    train command's help texts quote it, docs/training.md agrees with it."""
    import typing

    from leukoedge_train.commands.train import train as train_command
    from leukoedge_train.config import TrainConfig
    from leukoedge_train.defaults import DEFAULTS
    from leukoedge_train.models import arch_info

    assert list(DEFAULTS) == ["scratch", "resnet50", "lite0"]
    for arch, row in DEFAULTS.items():
        assert row.input_size == arch_info(arch).default_input_size, arch
        c = TrainConfig(arch, Path("cells")).resolved()
        for name, value in row.settings().items():
            assert getattr(c, name) == value, (arch, name)
    scratch, resnet = DEFAULTS["scratch"], DEFAULTS["resnet50"]
    assert (scratch.epochs, resnet.epochs, scratch.input_size, resnet.input_size) == \
        (30, 12, 128, 224)
    r = TrainConfig("resnet50", Path("cells")).resolved()
    assert (r.head_epochs, r.unfreeze, r.finetune_lr) == (2, "layer3", 1e-3 / 10)
    r = TrainConfig("resnet50", Path("cells"), weights="none").resolved()
    assert (r.head_epochs, r.unfreeze, r.finetune_lr) == (0, "all", 1e-3)
    s = TrainConfig("scratch", Path("cells"), lr=0.01).resolved()
    assert (s.head_epochs, s.unfreeze, s.finetune_lr, s.weights) == (0, "all", 0.01, "none")

    hints = typing.get_type_hints(train_command, include_extras=True)

    def help_of(name: str) -> str:
        return str(hints[name].__metadata__[0].help)

    assert "[default: scratch 30, resnet50 12, lite0 6]" in help_of("epochs")
    assert "[default: scratch 128, resnet50 224, lite0 128]" in help_of("input_size")
    assert "[default: 32]" in help_of("batch_size") and "[default: 1e-3]" in help_of("lr")
    assert "[default: 1e-4]" in help_of("weight_decay")
    assert "[default: lr/10]" in help_of("finetune_lr")
    assert "[default: resnet50 2 pretrained, lite0 0;" in help_of("head_epochs")
    assert "[default: imagenet]" in help_of("weights") and "[default: on]" in help_of("amp")

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    for label, name in (("input size", "input_size"), ("epochs (all stages)", "epochs"),
                        ("batch size", "batch_size"), ("seed", "seed")):
        row = f"| {label} | {getattr(scratch, name)} | {getattr(resnet, name)} |"
        assert row in doc, row
    assert f"| early stopping | patience {scratch.patience} | patience {resnet.patience} |" \
        in doc


def test_steps_and_progress_of_the_loop() -> None:
    from leukoedge_train.schedule import steps_in_epoch
    from leukoedge_train.train import Progress

    # a last batch of one is dropped (batch norm), any larger one is a step
    assert [steps_in_epoch(n, 8) for n in (1, 8, 9, 10, 16, 17)] == [1, 1, 1, 2, 2, 2]
    p = Progress()
    row = {"epoch": 1.0, "val_weighted_f1": 0.5, "val_acc": 0.6}
    assert p.record(row) and (p.epoch, p.best_epoch, p.best_acc) == (1, 1, 0.6)
    assert not p.record(row | {"epoch": 2.0, "val_acc": 0.9})  # equal F1 is no better
    assert (p.epoch, p.best_epoch, p.best_acc, len(p.history)) == (2, 1, 0.6, 2)


def test_unreadable_checkpoint_is_one_line(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from leukoedge_train import checkpoint as ckpt_io

    from leukoedge.errors import ModelError

    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 half a checkpoint\n\nmore")
    with pytest.raises(ModelError, match=r"last\.pt: cannot read as a leukoedge "
                                         r"checkpoint \(.+\)$"):
        ckpt_io.load(bad)

    def empty_message(*a: object, **k: object) -> None:
        raise EOFError()

    monkeypatch.setattr(ckpt_io.torch, "load", empty_message)
    with pytest.raises(ModelError, match=r"checkpoint \(EOFError\)$"):
        ckpt_io.load(bad)  # an empty library message still says something


def test_missing_plugin_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    fresh = typer.Typer(name="leukoedge", no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False)
    monkeypatch.setattr(cli, "app", fresh)
    monkeypatch.setattr(cli, "_assembled", False)
    monkeypatch.setattr(plugins_mod, "entry_points", lambda: [])
    code, _, err = run_cli(capsys, "train", "scratch", "somewhere")
    assert code == 3
    assert "needs the training plugin" in err and "leukoedge[train" in err


def test_missing_torch_names_the_extra(synth: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *a: object, **kw: object) -> object:
        return None if name == "torch" else real(name, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for command in (["train", "scratch", synth], ["export"], ["parity", "m.onnx", "run"]):
        code, _, err = run_cli(capsys, *command)
        assert code == 3, err
        assert "needs torch" in err and "leukoedge[train" in err


def test_plugin_import_does_not_import_torch() -> None:
    import subprocess

    code = ("import sys, leukoedge_train.plugin, leukoedge_train.commands; "
            "print('torch' in sys.modules)")
    env_path = ":".join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": env_path}, check=True)
    assert out.stdout.strip() == "False"


@needs_real
def test_export_with_drift_data(scratch_run: ScratchRun, synth: Path, work: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """--drift-data: a features output (checked against PyTorch) and the statistics of the
    training cells: about 5 % of them score above 1.0, the real cells (never seen, unlike
    the synthetic ones) mostly do."""
    from leukoedge.drift import EXTENSION_KEY
    from leukoedge.session import load_model

    target = work / "export-drift" / "m.onnx"
    code, _, err = run_cli(capsys, "export", scratch_run.run, "--out", target,
                           "--drift-data", synth)
    assert code == 0, err
    m = load_model(target)
    assert m.spec.outputs == ("logit", "features") and m.drift is not None
    assert EXTENSION_KEY in m.spec.extensions and m.drift.cells > 0
    scores = {}
    for name, data in (("train", synth), ("real", REAL)):
        out = work / "export-drift" / f"{name}.csv"
        code, _, err = run_cli(capsys, "classify", data, "--model", target, "--out", out)
        assert code == 0, err
        with open(out, newline="") as fh:
            scores[name] = [float(r["drift"]) for r in csv.DictReader(fh)]
    train = torch.tensor(scores["train"])
    assert len(train) == m.drift.cells and 0.02 <= (train > 1.0).float().mean() <= 0.08
    assert torch.tensor(scores["real"]).median() > 1.0
