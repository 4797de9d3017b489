"""The in-graph heatmap (``export --cam``) and test-time symmetries (``--tta``) against PyTorch.

On the real C-NMC sample cells, for ResNet50 (CAM) and the scratch network with both heads
(Grad-CAM, its gradient computed in the forward graph): the ONNX file's ``cam`` output
equals the textbook map computed with PyTorch autograd (:func:`cam.autograd_map`) within
:data:`TOL` of each image's largest |map value|, and the same comparison fails for a
constant map and for the map of the same architecture with re-randomised weights (so the
test can fail). Parity (the float64 oracle) passes on both outputs, with and without
``--tta 8``; the TTA graph is exactly invariant (logit) and equivariant (map) under the
symmetries of the square. Models are built, not trained (no training in this file).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from leukoedge_train import (
    cam,  # noqa: E402
    parity,  # noqa: E402
)
from leukoedge_train import export as exp  # noqa: E402
from leukoedge_train.dataset import load_images  # noqa: E402
from leukoedge_train.models import arch_info, create_model  # noqa: E402

from leukoedge.data import collect  # noqa: E402
from leukoedge.session import SessionConfig, load_model  # noqa: E402
from leukoedge.spec import ModelSpec  # noqa: E402

SIZE = 64
#: the in-graph map may differ from autograd's by this share of the image's largest |value|
TOL = 1e-3
CASES = {
    "scratch-flatten": ("scratch", {"width": 0.25, "head": "flatten", "dense": (32, 16, 8)}),
    "scratch-gap": ("scratch", {"width": 0.25, "head": "gap", "dense": (32, 16, 8)}),
    "resnet50": ("resnet50", {}),
}


def build(case: str, seed: int) -> torch.nn.Module:
    arch, kw = CASES[case]
    torch.manual_seed(seed)
    model = create_model(arch, SIZE, **kw)
    # non-trivial batch-norm statistics, as a trained network has
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def spec_for(case: str, graph: cam.InGraph) -> ModelSpec:
    info = arch_info(CASES[case][0])
    return ModelSpec(architecture=info.name, input_size=SIZE, mean=info.mean, std=info.std,
                     outputs=graph.outputs, tta=graph.tta)


def export(case: str, model: torch.nn.Module, tta: str, path: Path
           ) -> tuple[cam.InGraph, ModelSpec]:
    graph = cam.InGraph(model, cam=True, tta=tta).eval()
    spec = spec_for(case, graph)
    raw = path.with_suffix(".raw.onnx")
    exp._torch_export(graph, SIZE, raw, exp.DEFAULT_OPSET, "dynamo")
    exp._finish(raw, spec, path)
    return graph, spec


@pytest.fixture(scope="module")
def cells(shared_cells: Path) -> np.ndarray:
    items = collect([shared_cells])
    return load_images(items, SIZE, 1.0, "bilinear").pixels[::3]  # 15 of the 43


@pytest.fixture(scope="module", params=list(CASES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[str, torch.nn.Module, Path, cam.InGraph, ModelSpec]:
    case = request.param
    model = build(case, seed=0)
    path = tmp_path_factory.mktemp("cam") / f"{case}.onnx"
    graph, spec = export(case, model, "none", path)
    return case, model, path, graph, spec


def onnx_maps(path: Path, x: np.ndarray) -> np.ndarray:
    m = load_model(path, SessionConfig(provider="cpu"))
    return np.concatenate([m.run(x[i:i + 16], ("logit", "cam"))["cam"]
                           for i in range(0, len(x), 16)]).astype(np.float64)


def autograd(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    m64 = copy.deepcopy(model).double()
    return cam.autograd_map(m64, torch.from_numpy(x)).numpy()


def agree(got: np.ndarray, ref: np.ndarray) -> bool:
    """Every image's map within TOL of that image's largest |reference value|."""
    if got.shape != ref.shape:
        return False
    scale = np.abs(ref).reshape(len(ref), -1).max(axis=1)
    err = np.abs(got - ref).reshape(len(ref), -1).max(axis=1)
    return bool((err <= TOL * scale).all())


def test_map_equals_autograd_on_real_cells(exported, cells: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    case, model, path, _, _ = exported
    got = onnx_maps(path, cells)
    ref = autograd(model, cells)
    side = SIZE // (32 if case == "resnet50" else 8)
    assert got.shape == (len(cells), side, side)
    assert np.abs(ref).max() > 0
    assert agree(got, ref), float(np.abs(got - ref).max() / np.abs(ref).max())
    # ... and the comparison is able to fail:
    constant = np.full_like(ref, ref.mean())
    assert not agree(constant, ref)
    other = autograd(build(case, seed=1), cells)  # same architecture, weights re-randomised
    assert not agree(got, other)


def test_parity_judges_both_outputs(exported, shared_cells: Path) -> None:  # type: ignore[no-untyped-def]
    case, _, path, graph, spec = exported
    res = parity.check(path, graph, spec, shared_cells, batch=4, limit=6)
    assert res.passed, res.summary()
    assert res.cam is not None and res.cam.passed and res.cam.max_abs > 0
    assert res.as_dict()["cam"]["passed"] is True


def test_parity_fails_for_a_map_of_other_weights(exported, shared_cells: Path) -> None:  # type: ignore[no-untyped-def]
    case, _, path, _, spec = exported
    other = cam.InGraph(build(case, seed=1), cam=True).eval()
    res = parity.check(path, other, spec, shared_cells, batch=2, limit=2)
    assert not res.passed
    assert res.cam is not None and not res.cam.passed


@pytest.mark.parametrize("case", ["scratch-flatten"])
def test_tta8_passes_parity_and_is_symmetric(case: str, tmp_path: Path, cells: np.ndarray,
                                             shared_cells: Path) -> None:
    model = build(case, seed=0)
    path = tmp_path / "tta8.onnx"
    graph, spec = export(case, model, "d4", path)
    res = parity.check(path, graph, spec, shared_cells, batch=4, limit=4)
    assert res.passed, res.summary()
    assert res.cam is not None and res.cam.passed
    m = load_model(path, SessionConfig(provider="cpu"))
    assert m.spec.tta == "d4"
    x = cells[:4]
    base = m.run(x, ("logit", "cam"))
    assert not agree(base["cam"].astype(np.float64), autograd(model, x))  # it averages
    for mirror, turns in cam.GROUPS["d4"][1:]:
        gx = cam.transform(torch.from_numpy(x), mirror, turns, (1, 2)).numpy()
        got = m.run(np.ascontiguousarray(gx), ("logit", "cam"))
        want_map = cam.transform(torch.from_numpy(base["cam"]), mirror, turns, (1, 2)).numpy()
        np.testing.assert_allclose(got["logit"], base["logit"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["cam"], want_map, rtol=1e-3,
                                   atol=1e-4 * float(np.abs(want_map).max()))


def test_tta_counts_and_unknown() -> None:
    from leukoedge.errors import UsageError

    assert [cam.tta_name(n) for n in (1, 2, 4, 8)] == ["none", "d1", "c4", "d4"]
    assert [len(cam.GROUPS[cam.tta_name(n)]) for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    with pytest.raises(UsageError):
        cam.tta_name(3)


def test_map_correlation_gate() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7, 7))
    assert np.allclose(cam.map_correlations(a, a * 3 + 1), 1.0)
    assert (cam.map_correlations(a, -a) < 0).all()
    assert not cam.MapCheck("int8", 5, 0.5, 0.1).passed
    assert cam.MapCheck("int8", 5, 0.99, 0.9).passed


# -- export_onnx end to end: a checkpoint (not trained) to an fp16 file with its map -----------

def checkpoint(case: str, path: Path, bias: float) -> Path:
    """A leukoedge checkpoint of ``build(case)``, as ``train`` writes one, with the final
    bias set to ``bias`` (every logit far from the threshold: no label flips by rounding)."""
    from leukoedge_train import checkpoint as ckpt_io

    arch, kw = CASES[case]
    model = build(case, seed=0)
    with torch.no_grad():
        model.net.head[-1].bias.fill_(bias)
    info = arch_info(arch)
    spec = ModelSpec(architecture=arch, input_size=SIZE, mean=info.mean, std=info.std)
    ckpt_io.save({"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "architecture": arch,
                  "arch_kwargs": dict(kw), "model": model.state_dict(),
                  "spec": spec.to_json()}, path)
    return path


def test_fp16_export_with_its_map_is_compared_with_its_fp32_source(
        tmp_path: Path, shared_cells: Path) -> None:
    """``export --cam --precision fp16`` into a file named like the export's own fp32 step:
    only the fp16 file is left, and its report compares it with the fp32 export (not with
    itself: the two differ by fp16 rounding)."""
    import onnx

    from leukoedge.spec import SPEC_KEY

    ckpt = checkpoint("scratch-gap", tmp_path / "run" / "best.pt", bias=20.0)
    data = tmp_path / "cells"  # 8 of the real cells: parity, report and maps on them
    data.mkdir()
    for f in sorted(shared_cells.rglob("*.bmp"))[::5][:8]:
        (data / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out" / "fp32.onnx"
    n = len(collect([data]))
    res = exp.export_onnx(ckpt, out, precision="fp16", cam=True, parity_data=data,
                          report_data=data, report_images=n)
    assert list(out.parent.iterdir()) == [out] and res.path == out
    assert res.size_bytes == out.stat().st_size and res.parity.passed
    proto = onnx.load(str(out))
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in proto.graph.initializer}
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = ModelSpec.from_json(meta[SPEC_KEY])
    assert spec.precision == "fp16" and spec.outputs == ("logit", "cam")
    rep = res.report
    assert rep is not None and rep.precision == "fp16" and rep.images == n
    if rep.agreement is not None:  # this CPU runs fp16
        assert rep.agreement == 1.0
        assert rep.max_abs_diff is not None and 0 < rep.max_abs_diff < 0.5
    assert res.map_check is not None and res.map_check.images > 0


def test_a_refused_precision_carries_its_report() -> None:
    from leukoedge_train.precision import PrecisionReport

    rep = PrecisionReport("int8", 100, "cells", "cpu", 0.5, 0.9, 3.0, 1.0)
    with pytest.raises(exp.PrecisionRejected) as e:
        exp._gate(rep)
    assert e.value.report is rep and e.value.exit_code == 3
    assert "label agreement with fp32 50.00% < 98% on 100 cells (cells)" in e.value.message
    exp._gate(PrecisionReport("fp16", 100, "cells", "cpu", None, None, None, None,
                              problem="no fp16 kernels"))  # fp16 that cannot run here passes
    with pytest.raises(exp.PrecisionRejected, match="does not run here"):
        exp._gate(PrecisionReport("int8", 100, "cells", "cpu", None, None, None, None,
                                  problem="no kernels"))
