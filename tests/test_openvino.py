"""``--provider openvino``: the second implementation of the session interface, the bf16
gate's logic (with injected records), the missing-extra message, and the f32 path on real
cells against onnxruntime's CPU provider (every P(ALL) within 1e-4)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from conftest import missing, real_data
from typer.testing import CliRunner

from leukoedge import bf16_gate, data, ov_session
from leukoedge.bf16_gate import GateRecord, gate_problem, judge
from leukoedge.cli import assemble
from leukoedge.errors import EXIT_CANNOT_RUN, EXIT_USAGE, ProviderError, UsageError
from leukoedge.models import default_model
from leukoedge.session import SessionConfig, load_model

runner = CliRunner()
SHA = "a" * 64


def invoke(*args: str | os.PathLike[str]) -> Result:
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def need_openvino() -> None:
    """The openvino extra is in CI's install command: fail there when it is missing."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        missing("the openvino extra is not installed (pip install -e '.[openvino]')")


def shipped() -> Path:
    p = default_model()
    assert p is not None
    return p


def rec(**kw: object) -> GateRecord:
    base: dict[str, object] = dict(model_sha256=SHA, openvino_version="2026.4.1",
                                   cpu_isa="amx_bf16", cells=600, agreement=0.995,
                                   max_abs_logit_diff=0.05, passed=True)
    base.update(kw)
    return GateRecord.from_json(base)


# -- the gate's logic, injected results ---------------------------------------------------

def test_gate_passes_only_for_the_same_model_runtime_and_cpu() -> None:
    m = Path("m.onnx")
    assert gate_problem([rec()], m, SHA, "2026.4.1", "amx_bf16") is None
    other_hash = gate_problem([rec()], m, "b" * 64, "2026.4.1", "amx_bf16")
    other_cpu = gate_problem([rec()], m, SHA, "2026.4.1", "avx512_bf16")
    other_ov = gate_problem([rec()], m, SHA, "2025.1.0", "amx_bf16")
    for p in (other_hash, other_cpu, other_ov):
        assert p is not None and "no bf16 gate check" in p
        assert "leukoedge bench m.onnx --provider openvino --precision bf16 --cells" in p
    assert gate_problem([], m, SHA, "2026.4.1", "amx_bf16") is not None


def test_a_failed_gate_refuses_and_says_the_agreement() -> None:
    p = gate_problem([rec(agreement=0.97, passed=False)], Path("m.onnx"), SHA,
                     "2026.4.1", "amx_bf16")
    assert p is not None and "failed its bf16 gate" in p and "97.00%" in p
    # the newest record for the key wins: a later pass replaces a failure
    assert gate_problem([rec(passed=False), rec()], Path("m.onnx"), SHA, "2026.4.1",
                        "amx_bf16") is None


def test_judge_needs_500_cells_and_99_percent() -> None:
    z = np.linspace(-3, 3, 600).astype(np.float32)
    calls = z >= 0
    assert judge(calls, calls, z, z)[2]
    flipped = calls.copy()
    flipped[:7] = ~flipped[:7]  # 7/600 = 1.17% disagree
    agreement, _, passed = judge(calls, flipped, z, z)
    assert agreement == pytest.approx(593 / 600) and not passed
    assert not judge(calls[:499], calls[:499], z[:499], z[:499])[2]
    assert judge(calls, calls, z, z + 0.25)[1] == pytest.approx(0.25)


def test_store_round_trip_replaces_the_same_key(tmp_path: Path) -> None:
    store = tmp_path / "gates.json"
    bf16_gate.write_record(store, rec(passed=False, agreement=0.9))
    bf16_gate.write_record(store, rec(cpu_isa="avx512_bf16"))
    bf16_gate.write_record(store, rec())
    got = bf16_gate.read_store(store)
    assert len(got) == 2 and {r.cpu_isa for r in got} == {"amx_bf16", "avx512_bf16"}
    assert all(r.passed for r in got)
    store.write_text("{not json")
    with pytest.raises(Exception, match="gate store cannot be read"):
        bf16_gate.read_store(store)


def test_cpu_bf16_isa_from_flags() -> None:
    assert ov_session.cpu_bf16_isa({"avx2", "amx_bf16", "avx512_bf16"}) == "amx_bf16"
    assert ov_session.cpu_bf16_isa({"avx512f", "avx512_bf16"}) == "avx512_bf16"
    assert ov_session.cpu_bf16_isa({"avx2", "fma"}) is None


# -- the CLI's refusals ---------------------------------------------------------------------

def test_bf16_without_a_gate_refuses_naming_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_openvino()
    monkeypatch.setenv(bf16_gate.STORE_ENV, str(tmp_path / "gates.json"))
    monkeypatch.setattr(ov_session, "bf16_problem", lambda ov: None)
    model = shipped()
    r = invoke("classify", real_data("cnmc-sample"), "--model", model, "--provider",
               "openvino", "--precision", "bf16", "--out", tmp_path / "p.csv")
    assert r.exit_code == EXIT_CANNOT_RUN, r.output
    assert "Traceback" not in r.output
    assert "--provider openvino --precision bf16 --cells" in " ".join(r.output.split())
    assert not (tmp_path / "p.csv").exists()


def test_bf16_with_a_passed_gate_for_this_file_and_cpu_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_openvino()
    import openvino as ov

    model = shipped()
    store = tmp_path / "gates.json"
    monkeypatch.setenv(bf16_gate.STORE_ENV, str(store))
    monkeypatch.setattr(ov_session, "bf16_problem", lambda ov: None)
    monkeypatch.setattr(ov_session, "cpu_bf16_isa", lambda flags=None: "amx_bf16")
    version = ov_session.ov_version(ov)
    sha = data.file_sha256(model)
    cfg = SessionConfig(provider="openvino", precision="bf16")
    bf16_gate.write_record(store, rec(model_sha256=sha, openvino_version=version,
                                      cpu_isa="avx512_bf16"))
    with pytest.raises(ProviderError, match="no bf16 gate check"):  # another CPU's record
        load_model(model, cfg)
    bf16_gate.write_record(store, rec(model_sha256=sha, openvino_version=version,
                                      passed=False, agreement=0.9))
    with pytest.raises(ProviderError, match="failed its bf16 gate"):
        load_model(model, cfg)
    if ov_session.cpu_flags() & {"amx_bf16", "avx512_bf16"}:  # compiling needs the CPU
        bf16_gate.write_record(store, rec(model_sha256=sha, openvino_version=version))
        m = load_model(model, cfg)
        assert m.provider == "openvino" and m.precision == "bf16"


def test_bf16_on_a_cpu_without_it_is_one_line_and_exit_3(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_openvino()
    monkeypatch.setattr(ov_session, "cpu_flags", lambda: {"avx2", "fma"})
    r = invoke("classify", real_data("cnmc-sample"), "--model", shipped(), "--provider",
               "openvino", "--precision", "bf16", "--out", tmp_path / "p.csv")
    assert r.exit_code == EXIT_CANNOT_RUN, r.output
    assert "neither amx_bf16 nor avx512_bf16" in " ".join(r.output.split())
    assert "Traceback" not in r.output


def test_bf16_is_openvino_only_and_auto_never_picks_openvino() -> None:
    with pytest.raises(UsageError, match="--provider openvino only"):
        SessionConfig(provider="cpu", precision="bf16")
    with pytest.raises(UsageError, match="unknown precision"):
        SessionConfig(provider="openvino", precision="fp16")
    assert not SessionConfig(provider="auto").openvino
    assert SessionConfig(provider="openvino:GPU").openvino
    r = invoke("classify", real_data("cnmc-sample"), "--provider", "cpu",
               "--precision", "bf16")
    assert r.exit_code == EXIT_USAGE and "Traceback" not in r.output


def test_missing_extra_is_one_line_with_the_pip_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    r = invoke("classify", real_data("cnmc-sample"), "--model", shipped(), "--provider",
               "openvino", "--out", tmp_path / "p.csv")
    assert r.exit_code == EXIT_CANNOT_RUN, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error")]
    assert len(errors) == 1, r.output
    assert "pip install 'leukoedge[openvino]'" in errors[0]
    assert "Traceback" not in r.output


def test_broken_and_foreign_files_get_the_same_errors_as_onnxruntime(
        tmp_path: Path, tiny_model: Path) -> None:
    need_openvino()
    import onnx

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not a protobuf at all" * 20)
    foreign = tmp_path / "foreign.onnx"
    m = onnx.load(tiny_model)
    del m.metadata_props[:]
    onnx.save(m, foreign)
    for path, what in ((broken, "cannot load as an ONNX model"),
                       (foreign, "not a leukoedge model")):
        outs = []
        for p in ("cpu", "openvino"):
            r = invoke("classify", real_data("cnmc-sample"), "--model", path,
                       "--provider", p, "--out", tmp_path / f"{p}.csv")
            assert r.exit_code == EXIT_CANNOT_RUN, r.output
            assert what in " ".join(r.output.split()) and "Traceback" not in r.output
            outs.append(r.output.split("(")[0])
        assert outs[0] == outs[1]


# -- the f32 path on real cells --------------------------------------------------------------

def test_f32_on_real_cells_matches_onnxruntime_cpu(tmp_path: Path) -> None:
    """Every P(ALL) of OpenVINO f32 within 1e-4 of onnxruntime's CPU provider, the same
    labels, drift scores and heatmaps, through the whole classify command (rows as
    today) on the 43 real BMPs and 300 of the real PNGs."""
    need_openvino()
    cells = tmp_path / "cells"
    sample = real_data("cnmc-sample")
    pngs = sorted(real_data("cnmc-real").rglob("*.png"))[::14][:300]
    assert len(pngs) == 300
    for i, p in enumerate(pngs):
        d = cells / "real" / p.parent.name
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(p, d / f"{i:04d}_{p.name}")
    rows = {}
    for prov in ("cpu", "openvino"):
        out = tmp_path / f"{prov}.csv"
        r = invoke("classify", sample, cells, "--model", shipped(), "--provider", prov,
                   "--out", out)
        assert r.exit_code == 0, r.output
        with out.open(newline="", encoding="utf-8") as fh:
            rows[prov] = {row["path"]: row for row in csv.DictReader(fh)}
    a, b = rows["cpu"], rows["openvino"]
    assert len(a) == 343 and a.keys() == b.keys()
    pa = np.array([float(a[k]["prob_all"]) for k in a])
    pb = np.array([float(b[k]["prob_all"]) for k in a])
    assert float(np.max(np.abs(pa - pb))) <= 1e-4
    assert [a[k]["label"] for k in a] == [b[k]["label"] for k in a]
    assert set(a[next(iter(a))]) == set(b[next(iter(b))])  # the same columns


def test_f32_model_outputs_match_including_drift_and_cam() -> None:
    need_openvino()
    from leukoedge.preprocess import decode_for

    a = load_model(shipped(), SessionConfig(provider="cpu"))
    b = load_model(shipped(), SessionConfig(provider="openvino"))
    files = sorted(real_data("cnmc-sample").rglob("*.bmp"))
    x = decode_for(files, a.spec).pixels
    la, sa, ma = a.predict_all(x, cam=True)
    lb, sb, mb = b.predict_all(x, cam=True)
    assert b.provider == "openvino" and b.precision == "f32"
    assert b.session.precision == "f32"  # asked for explicitly, not the CPU's bf16 default
    assert float(np.max(np.abs(la - lb))) < 1e-3
    assert sa is not None and sb is not None and float(np.max(np.abs(sa - sb))) < 1e-3
    assert ma is not None and mb is not None and float(np.max(np.abs(ma - mb))) < 1e-3


def test_doctor_lists_openvino() -> None:
    need_openvino()
    r = runner.invoke(assemble(), ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["providers"]["openvino"] == "ok"
    assert "CPU" in d["openvino"]["openvino devices"]
    assert d["openvino"]["openvino bf16"].startswith(("available", "no: "))


# -- bench: the gate command and the runtimes comparison ----------------------------------

def test_gate_command_needs_500_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_openvino()
    store = tmp_path / "gates.json"
    monkeypatch.setenv(bf16_gate.STORE_ENV, str(store))
    r = invoke("bench", shipped(), "--provider", "openvino", "--precision", "bf16",
               "--cells", real_data("cnmc-sample"))
    assert r.exit_code == EXIT_CANNOT_RUN, r.output
    assert "needs at least 500 real cells" in " ".join(r.output.split())
    assert not store.exists()
    r = invoke("bench", shipped(), "--cells", real_data("cnmc-sample"))
    assert r.exit_code == EXIT_USAGE and "--precision bf16" in r.output


@pytest.mark.slow
def test_runtimes_compares_in_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison's machinery on the 43 real cells (too few for the gate, so bf16's
    whole process is not measured and says why); no timing is asserted."""
    need_openvino()
    monkeypatch.setenv(bf16_gate.STORE_ENV, str(tmp_path / "gates.json"))
    out = tmp_path / "rt.json"
    r = invoke("bench", shipped(), "--runtimes", "--cells", real_data("cnmc-sample"),
               "--batch-sizes", "4", "--seconds", "0.05", "--rounds", "1", "--json", out)
    assert r.exit_code == 0, r.output
    res = {d["name"]: d for d in json.loads(out.read_text())}
    assert {"onnxruntime fp32", "OpenVINO f32"} <= set(res)
    for d in res.values():
        assert d["cells"] == 43 and d["inference"]["4"] > 0
        if d["precision"] == "f32":
            assert d["whole_process_per_s"] > 0
    assert res["onnxruntime fp32"]["agreement"] == 1.0
    assert res["OpenVINO f32"]["agreement"] == 1.0
    assert res["OpenVINO f32"]["max_abs_logit_diff"] < 1e-3
    if "OpenVINO bf16" in res:
        assert res["OpenVINO bf16"]["whole_process_note"].startswith("not measured")
