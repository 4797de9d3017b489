"""Performance features, checked for behaviour (never for speed): int8/fp16 export with the
agreement report and its 98% gate, and ``bench --checkpoint`` (PyTorch eager numbers and
the onnxruntime/PyTorch ratio). One tiny scratch model (32 px) is trained once."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import leukoedge.cli as cli  # noqa: E402
from leukoedge.data import collect  # noqa: E402
from leukoedge.session import SessionConfig, load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from leukoedge_train.export import ExportResult, PrecisionRejected, export_onnx  # noqa: E402
from train_data import write_dataset  # noqa: E402

pytestmark = pytest.mark.train

SIZE = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("perf")
    data = write_dataset(work / "data", patients=6, cells=12, size=64, seed=5)
    run = work / "run"
    # 5 epochs: the logits sit clear of the threshold (here 8x the largest int8 error), so
    # the int8 export passes the real agreement gate
    code = cli.main(["train", "scratch", str(data), "--input-size", str(SIZE), "--epochs", "5",
                     "--batch-size", "16", "--patience", "0", "--out", str(run)])
    assert code == 0
    return {"work": work, "data": data, "run": run}


def _export(run: dict[str, Path], name: str, precision: str) -> tuple[Path, ExportResult]:
    out = run["work"] / name
    return out, export_onnx(run["run"], out, precision=precision,
                            calibration=run["data"], report_data=run["data"],
                            report_images=len(collect([run["data"]])))


@pytest.fixture(scope="module")
def int8(run: dict[str, Path]) -> tuple[Path, ExportResult]:
    """The int8 export of the run, through the real 98% agreement gate."""
    return _export(run, "int8.onnx", "int8")


def test_int8_export_is_a_model_classify_accepts(run: dict[str, Path],
                                                 int8: tuple[Path, ExportResult]) -> None:
    from leukoedge_train import precision

    from leukoedge.classify import predict_stream

    out, res = int8
    assert out.is_file() and res.precision == "int8"
    rep = res.report
    assert rep is not None and rep.min_agreement == precision.MIN_AGREEMENT == 0.98
    assert rep.agreement is not None and rep.agreement >= rep.min_agreement and rep.passed
    assert rep.images == len(collect([run["data"]]))
    assert rep.pearson is not None and -1.0 <= rep.pearson <= 1.0
    assert rep.max_abs_diff is not None and rep.labelled == rep.images
    assert rep.calibration_images > 0
    # beside the agreement gate: the error of int8 and of its fp32 source against the
    # float64 oracle of the PyTorch model, on up to 64 of the cells
    from leukoedge_train.parity import MAX_IMAGES

    assert rep.oracle_images == min(rep.images, MAX_IMAGES)
    assert rep.oracle_max_abs_err is not None and rep.oracle_mean_abs_err is not None
    assert rep.fp32_oracle_max_abs_err is not None
    assert 0 < rep.fp32_oracle_max_abs_err < rep.oracle_max_abs_err
    assert rep.as_dict()["oracle"]["images"] == rep.oracle_images
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "BatchNormalization" in ops  # the input normalisation, kept in float, exact
    m = load_model(out, SessionConfig(provider="cpu"))  # the runtime's own checks
    assert m.spec.precision == "int8"
    items = collect([run["data"]])[:10]
    preds = list(predict_stream(m, items, batch_size=4))
    assert [p.item for p in preds] == items
    assert all(p.row.error is None and p.row.label in ("all", "hem") for p in preds)


def test_export_below_98_percent_agreement_is_refused_and_leaves_no_file(
        run: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from leukoedge_train import precision

    real_compare = precision.compare

    def poor(*a: Any, **kw: Any) -> precision.PrecisionReport:
        rep = real_compare(*a, **kw)
        rep.agreement = 0.97
        return rep

    monkeypatch.setattr(precision, "compare", poor)
    with pytest.raises(PrecisionRejected) as e:
        _export(run, "refused.onnx", "int8")
    assert e.value.exit_code == 3
    assert "97.00% < 98%" in e.value.message
    assert e.value.report.agreement == 0.97 and not e.value.report.passed
    assert not (run["work"] / "refused.onnx").exists()
    assert not [p for p in run["work"].iterdir() if p.name.startswith(".refused")]


@pytest.fixture(scope="module")
def fp32(run: dict[str, Path]) -> Path:
    out = run["work"] / "fp32.onnx"
    export_onnx(run["run"], out)
    return out


def test_fp16_keeps_the_uint8_input(run: dict[str, Path], fp32: Path) -> None:
    from leukoedge_train import checkpoint as ckpt_io
    from leukoedge_train import precision

    ckpt = ckpt_io.load(ckpt_io.resolve(run["run"]))
    out = run["work"] / "fp16.onnx"
    rep = precision.convert("fp16", fp32, out, ckpt_io.spec_of(ckpt), ckpt, None, run["data"],
                            minimum=len(collect([run["data"]])))
    g = onnx.load(str(out)).graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inits = {i.data_type for i in g.initializer}
    assert onnx.TensorProto.FLOAT16 in inits
    if rep.agreement is not None:  # the CPU ran it
        assert rep.pearson is not None
        m = load_model(out, SessionConfig(provider="cpu"))
        assert m.spec.precision == "fp16" and m.input_name == g.input[0].name
    else:
        assert rep.problem


def test_bench_checkpoint_returns_torch_numbers(run: dict[str, Path], fp32: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from leukoedge_train.torch_bench import torch_throughput

    files = [it.path for it in collect([run["data"]])][:4]
    per_s, setting = torch_throughput(run["run"], [1, 2], files, 0.02, 1)
    assert set(per_s) == {1, 2} and all(v > 0 for v in per_s.values())
    assert "inference_mode" in setting and ("channels_last" in setting
                                            or "contiguous" in setting)

    js = run["work"] / "bench.json"
    code = cli.main(["bench", str(fp32), "--checkpoint", str(run["run"]), "--batch-sizes",
                     "1,2", "--seconds", "0.02", "--files", "4", "--data", str(run["data"]),
                     "--json", str(js)])
    assert code == 0
    d = json.loads(js.read_text())
    assert set(d["torch"]) == {"1", "2"}
    assert set(d["onnxruntime_over_torch"]) == {"1", "2"}
    assert all(v > 0 for v in d["onnxruntime_over_torch"].values())
    assert "onnxruntime/PyTorch" in capsys.readouterr().out


def test_bench_versus_shows_the_ratio(run: dict[str, Path], fp32: Path,
                                     int8: tuple[Path, ExportResult]) -> None:
    js = run["work"] / "versus.json"
    code = cli.main(["bench", str(int8[0]), "--versus", str(fp32), "--batch-sizes", "2",
                     "--seconds", "0.02", "--files", "4", "--data", str(run["data"]),
                     "--json", str(js)])
    assert code == 0
    d = json.loads(js.read_text())
    assert d["versus"] == str(fp32) and set(d["over_versus"]) == {"2"}
