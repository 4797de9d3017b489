"""The runtime commands through typer's CliRunner: exit codes, rows, messages."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import Result
from conftest import cuda_problem
from typer.core import TyperGroup
from typer.testing import CliRunner

from leukoedge.cli import assemble
from leukoedge.spec import SCHEMA_VERSION, ModelSpec

runner = CliRunner()


def invoke(*args: str | os.PathLike[str]) -> Result:
    return runner.invoke(assemble(), [os.fspath(a) for a in args])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_help_lists_commands() -> None:
    r = invoke("--help")
    assert r.exit_code == 0
    for name in ("classify", "evaluate", "info", "doctor", "synth", "train", "export"):
        assert name in r.output


def test_no_help_text_is_eaten_by_rich_markup() -> None:
    """Typer renders help through Rich, which takes ``[on]`` or ``[scratch 30]`` for a
    style tag and drops it: every bracket meant to be shown must be escaped."""
    from rich.text import Text
    from typer.main import get_command

    root = get_command(assemble())
    assert isinstance(root, TyperGroup)
    texts = [(root.name, root.help or "")]
    for name, cmd in root.commands.items():
        texts.append((name, cmd.help or ""))
        texts += [(f"{name} {p.name}", getattr(p, "help", None) or "") for p in cmd.params]
    assert len(texts) > 30
    for where, text in texts:
        assert Text.from_markup(text).plain == text.replace("\\[", "["), where
    r = runner.invoke(assemble(), ["train", "--help"], env={"COLUMNS": "250"})
    assert "[default: scratch 30, resnet50 12, lite0 6]" in r.output


def test_classify_real_cells_writes_one_row_each(real_cells: Path, tiny_model: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "p.csv"
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out)
    assert r.exit_code == 0, r.output
    rows = read_rows(out)
    assert len(rows) == 43
    assert all(row["error"] == "" and row["label"] in ("all", "hem") for row in rows)
    assert all(0.0 <= float(row["prob_all"]) <= 1.0 for row in rows)
    assert {row["patient"] for row in rows} >= {"UID_13", "UID_H13"}
    assert "43" in r.output


def test_bad_files_become_error_rows_and_exit_1(real_cells: Path, tiny_model: Path,
                                                 tmp_path: Path) -> None:
    src = next((real_cells / "fold_0" / "all").glob("*.bmp"))
    (real_cells / "fold_0" / "all" / "truncated.bmp").write_bytes(src.read_bytes()[:30000])
    (real_cells / "x.bmp").write_text("this is not an image\n")
    out = tmp_path / "p.csv"
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out)
    assert r.exit_code == 1
    rows = read_rows(out)
    assert len(rows) == 45
    bad = [row for row in rows if row["error"]]
    assert sorted(Path(b["path"]).name for b in bad) == ["truncated.bmp", "x.bmp"]
    assert all(b["prob_all"] == "" and b["label"] == "" for b in bad)


@pytest.mark.cpu_only
def test_provider_cuda_on_cpu_machine_is_one_line_exit_3(real_cells: Path, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", tmp_path / "p.csv",
               "--provider", "cuda")
    assert r.exit_code == 3
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cuda" in lines[0].lower(), r.output
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.cpu_only
def test_provider_auto_runs_on_cpu_and_says_so(real_cells: Path, tiny_model: Path,
                                               tmp_path: Path) -> None:
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0
    assert "running on the CPU" in r.output


@pytest.mark.gpu
def test_provider_cuda_and_auto_on_a_gpu_give_the_cpu_rows(real_cells: Path, tiny_model: Path,
                                                           tmp_path: Path) -> None:
    cpu = tmp_path / "cpu.csv"
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", cpu, "--provider", "cpu")
    assert r.exit_code == 0, r.output
    want = read_rows(cpu)
    for provider in ("cuda", "auto"):
        out = tmp_path / f"{provider}.csv"
        r = invoke("classify", real_cells, "--model", tiny_model, "--out", out, "--provider",
                   provider)
        assert r.exit_code == 0, (provider, r.output)
        assert "running on the CPU" not in r.output, provider
        got = read_rows(out)
        assert [g["path"] for g in got] == [w["path"] for w in want]
        for g, w in zip(got, want):
            assert float(g["logit"]) == pytest.approx(float(w["logit"]), abs=1e-3), g["path"]


def test_existing_output_is_kept_resume_and_jsonl(real_cells: Path, tiny_model: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    out.write_text("")
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output
    # a partial run: the first 10 lines, then resume
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out, "--overwrite")
    assert r.exit_code == 0
    full = out.read_text().splitlines()
    out.write_text("\n".join(full[:10]) + "\n" + full[10][:15])
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert len(paths) == 43 and len(set(paths)) == 43


def test_non_utf8_path_is_escaped_and_resumed(tmp_path: Path, shared_cells: Path,
                                              tiny_model: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    src = next((shared_cells / "fold_0" / "hem").glob("*.bmp"))
    raw = os.fsencode(d) + b"/cell_\xff\xfe_hem.bmp"
    with open(raw, "wb") as fh:
        fh.write(src.read_bytes())
    shutil.copy(src, d / "ok_hem.bmp")
    out = tmp_path / "p.csv"
    assert invoke("classify", d, "--model", tiny_model, "--out", out).exit_code == 0
    rows = read_rows(out)
    assert any(r["path"].endswith("cell_\\xff\\xfe_hem.bmp") for r in rows)
    r = invoke("classify", d, "--model", tiny_model, "--out", out, "--resume")
    assert r.exit_code == 0 and len(read_rows(out)) == 2


def test_output_inside_input_is_refused(real_cells: Path, tiny_model: Path) -> None:
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", real_cells / "p.csv")
    assert r.exit_code == 2 and "inside the input folder" in r.output


def test_no_images_and_missing_path(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = invoke("classify", tmp_path / "empty", "--model", tiny_model, "--out", tmp_path / "p.csv")
    assert r.exit_code == 3 and "no image found" in r.output
    r = invoke("classify", tmp_path / "nope", "--model", tiny_model, "--out", tmp_path / "p.csv")
    assert r.exit_code == 3 and "no such file" in r.output


def test_default_model_is_newest_in_exported_else_the_shipped_one(
        real_cells: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import leukoedge.models

    monkeypatch.chdir(tmp_path)
    shipped = leukoedge.models.DEFAULT_MODEL
    # an installation without the shipped model and no exported/: say what to do
    monkeypatch.setattr(leukoedge.models, "DEFAULT_MODEL", tmp_path / "absent.onnx")
    r = invoke("classify", real_cells, "--out", "p.csv")
    assert r.exit_code == 3 and "no model given" in r.output
    # the shipped model, said in one line
    monkeypatch.setattr(leukoedge.models, "DEFAULT_MODEL", tiny_model)
    r = invoke("classify", real_cells, "--out", "p1.csv")
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.output.splitlines() if "using the shipped model" in ln]
    assert len(said) == 1 and str(tiny_model.name) in r.output
    # a model in exported/ wins over the shipped one; --model wins over both
    (tmp_path / "exported").mkdir()
    shutil.copy(tiny_model, tmp_path / "exported" / "a.onnx")
    r = invoke("classify", real_cells, "--out", "p2.csv")
    assert r.exit_code == 0 and "a.onnx" in r.output and "shipped" not in r.output
    monkeypatch.setattr(leukoedge.models, "DEFAULT_MODEL", shipped)
    r = invoke("classify", real_cells, "--model", tiny_model, "--out", "p3.csv")
    assert r.exit_code == 0 and "shipped" not in r.output and "exported/" not in r.output


def test_bad_models_are_refused(real_cells: Path, tmp_path: Path, tiny_model: Path) -> None:
    import onnx_models as om

    data = tiny_model.read_bytes()
    cases = {
        "truncated.onnx": data[: len(data) // 2],
        "text.onnx": b"not a model at all",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    om.save(om.mean_brightness_model(32, spec=None), tmp_path / "nospec.onnx")
    newer = ModelSpec(architecture="x", input_size=32).to_dict()
    newer["schema_version"] = SCHEMA_VERSION + 1
    om.save(om.mean_brightness_model(32, spec=json.dumps(newer)), tmp_path / "newer.onnx")
    om.save(om.mean_brightness_model(32, input_size_in_graph=64), tmp_path / "shape.onnx")
    expect = {"truncated.onnx": "cannot load", "text.onnx": "cannot load",
              "nospec.onnx": "not a leukoedge model", "newer.onnx": "schema version",
              "shape.onnx": "disagrees with the spec"}
    for name, msg in expect.items():
        r = invoke("classify", real_cells, "--model", tmp_path / name, "--out",
                   tmp_path / f"{name}.csv")
        assert r.exit_code == 3, (name, r.output)
        assert msg in r.output and "Traceback" not in r.output, (name, r.output)
        assert not (tmp_path / f"{name}.csv").exists()


def test_evaluate_reports_metrics_and_json(real_cells: Path, tiny_model: Path,
                                           tmp_path: Path) -> None:
    (real_cells / "x.bmp").write_text("not an image")
    rep = tmp_path / "rep.json"
    r = invoke("evaluate", real_cells, "--model", tiny_model, "--report", rep)
    assert r.exit_code == 1, r.output
    assert "weighted f1" in r.output and "per patient" in r.output
    d = json.loads(rep.read_text())
    assert d["files"] == 44 and d["errors"] == 1 and d["metrics"]["n"] == 43
    m = d["metrics"]
    assert sum(map(sum, m["confusion"]["matrix"])) == 43
    assert m["per_class"]["all"]["support"] == 21
    assert {p["patient"] for p in d["patients"]} == {"UID_1", "UID_13", "UID_78", "UID_H3",
                                                     "UID_H6", "UID_H13"}


def test_evaluate_needs_labels(tmp_path: Path, shared_cells: Path, tiny_model: Path) -> None:
    d = tmp_path / "unlabelled"
    d.mkdir()
    shutil.copy(next((shared_cells / "fold_0" / "all").glob("*.bmp")), d / "1.bmp")
    r = invoke("evaluate", d, "--model", tiny_model)
    assert r.exit_code == 3 and "no labels" in r.output


def test_info_and_doctor(tiny_model: Path, tmp_path: Path) -> None:
    r = invoke("info", tiny_model, "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["spec"]["input_size"] == 32 and d["inputs"][0]["shape"] == ["N", 32, 32, 3]
    assert d["inputs"][0]["type"] == "uint8" and d["opsets"]["ai.onnx"] == 18
    r = invoke("info", tiny_model)
    assert r.exit_code == 0 and "spec.architecture" in r.output
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    r = invoke("info", tmp_path / "bad.onnx")
    assert r.exit_code == 3 and "Traceback" not in r.output
    r = invoke("doctor", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["providers"]["cpu"] == "ok"
    if cuda_problem() is None:
        assert d["providers"]["cuda"] == "ok"
    else:  # no usable CUDA here: the reason is given
        assert d["providers"]["cuda"] == cuda_problem()
    assert "train" in d["plugins"]


def test_bad_flag_is_usage_error(real_cells: Path, tiny_model: Path) -> None:
    r = invoke("classify", real_cells, "--model", tiny_model, "--batch-size", "0")
    assert r.exit_code == 2
    r = invoke("classify", real_cells, "--model", tiny_model, "--provider", "tpu",
               "--out", "/tmp/never.csv")
    assert r.exit_code == 2 and "unknown provider" in r.output


def test_bench_measures_every_stage(tiny_model: Path, shared_cells: Path, tmp_path: Path) -> None:
    j = tmp_path / "b.json"
    r = invoke("bench", tiny_model, "--batch-sizes", "1,4", "--seconds", "0.05", "--files",
               "20", "--data", shared_cells, "--json", j)
    assert r.exit_code == 0, r.output
    d = json.loads(j.read_text())
    assert set(d["inference"]) == {"1", "4"} and all(v > 0 for v in d["inference"].values())
    assert d["latency_ms"]["p95"] >= d["latency_ms"]["p50"] > 0
    assert d["decode_per_s"] > 0 and d["end_to_end_per_s"] > 0 and d["files"] == 43
    r = invoke("bench", tiny_model, "--batch-sizes", "x")
    assert r.exit_code == 2


def test_synth_command(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    r = invoke("synth", out, "--patients", "4", "--cells-per-patient", "3", "--size", "64")
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("fold_*/*/UID_*.bmp"))) == 12
    r = invoke("synth", out, "--patients", "4")
    assert r.exit_code == 2 and "not empty" in r.output
    r = invoke("synth", out, "--patients", "4", "--cells-per-patient", "2", "--size", "64",
               "--overwrite")
    assert r.exit_code == 0 and len(list(out.glob("fold_*/*/UID_*.bmp"))) == 8


def test_parity_turns_cuda_tf32_off(tmp_path: Path) -> None:
    """``SessionConfig(cuda_tf32=False)`` (what parity uses) passes use_tf32=0 to the CUDA
    provider, also as TensorRT's fallback; classify keeps onnxruntime's default."""
    from leukoedge.session import SessionConfig, _provider_list

    default = _provider_list(SessionConfig(provider="cuda"), "cuda")
    assert "use_tf32" not in default[0][1]
    exact = _provider_list(SessionConfig(provider="cuda", cuda_tf32=False), "cuda")
    assert exact[0][0] == "CUDAExecutionProvider" and exact[0][1]["use_tf32"] == "0"
    trt = _provider_list(SessionConfig(provider="tensorrt", cuda_tf32=False,
                                       trt_cache=tmp_path / "trt"), "tensorrt")
    assert [p[0] for p in trt[:2]] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert trt[1][1]["use_tf32"] == "0"


def test_json_is_a_flag_everywhere_and_bench_writes_json_out(real_cells: Path,
                                                              tiny_model: Path,
                                                              tmp_path: Path) -> None:
    """--overwrite and --json are declared once (options.py); bench's results file is
    --json-out PATH, and the old spelling --json PATH still works with a one-line note."""
    import typer.main

    from leukoedge.cli import assemble

    group = typer.main.get_command(assemble())
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        for p in cmd.params:
            if "--json" in p.opts and not p.hidden:
                assert p.is_flag, name
    base = ["bench", tiny_model, "--batch-sizes", "2", "--seconds", "0.02", "--files", "4",
            "--data", real_cells]
    r = invoke(*base, "--json-out", tmp_path / "new.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "new.json").read_text())["files"] > 0
    assert "deprecated" not in r.output
    r = invoke(*base, "--json", tmp_path / "old.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "old.json").is_file()
    assert "bench --json PATH is deprecated: use --json-out PATH" in " ".join(r.output.split())
    r = invoke(*base, "--json", tmp_path / "a.json", "--json-out", tmp_path / "b.json")
    assert r.exit_code == 2 and "Traceback" not in r.output
