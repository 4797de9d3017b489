"""The runtime never imports torch: run the CLI with a poisoned ``torch`` first on the path.
Ray (the scale extra) is poisoned too: only ``classify --engine ray`` may import it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture()
def poisoned_env(tmp_path: Path) -> dict[str, str]:
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision", "ray", "pyarrow"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(
            "import os, pathlib\n"
            f"pathlib.Path(os.environ['POISON_MARK']).write_text('{name} imported')\n"
            f"raise ImportError('poisoned {name}: the runtime must not import it')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(poison), env.get("PYTHONPATH", "")])
    env["POISON_MARK"] = str(tmp_path / "torch-was-imported")
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "leukoedge", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_runtime_commands_never_import_torch(poisoned_env: dict[str, str], tmp_path: Path,
                                             real_cells: Path, tiny_model: Path) -> None:
    mark = Path(poisoned_env["POISON_MARK"])
    r = run(poisoned_env, "--help")
    assert r.returncode == 0, r.stderr
    r = run(poisoned_env, "classify", str(real_cells), "--model", str(tiny_model),
            "--out", str(tmp_path / "p.csv"))
    assert r.returncode == 0, r.stderr
    r = run(poisoned_env, "evaluate", str(real_cells), "--model", str(tiny_model))
    assert r.returncode == 0, r.stderr
    r = run(poisoned_env, "info", str(tiny_model))
    assert r.returncode == 0, r.stderr
    r = run(poisoned_env, "doctor")
    assert r.returncode == 0, r.stderr
    assert not mark.exists(), mark.read_text() if mark.exists() else ""
    code = "import leukoedge, leukoedge.cli, sys; leukoedge.cli.assemble(); " \
           "print(any(m in sys.modules for m in ('torch', 'ray', 'pyarrow')))"
    r = subprocess.run([sys.executable, "-c", code], env=poisoned_env, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_the_poison_works(poisoned_env: dict[str, str]) -> None:
    """The check above can fail: importing torch under this environment is detected."""
    r = subprocess.run([sys.executable, "-c", "import torch"], env=poisoned_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and Path(poisoned_env["POISON_MARK"]).exists()


# -- static: no module under leukoedge/ imports torch, torchvision or the plugin ------------

import ast  # noqa: E402

RUNTIME = Path(__file__).resolve().parents[1] / "leukoedge"
FORBIDDEN = ("torch", "torchvision", "leukoedge_train")


def forbidden_imports(source: str, filename: str = "<src>") -> list[str]:
    """Every import of a FORBIDDEN package in ``source``, wherever it is (module level,
    inside functions, under TYPE_CHECKING): ``import x``, ``from x import y``,
    ``importlib.import_module("x")`` and ``__import__("x")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        for n in names:
            if n.split(".")[0] in FORBIDDEN:
                found.append(f"{filename}:{node.lineno}: {n}")
    return found


def test_no_runtime_module_imports_torch_or_the_plugin() -> None:
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 20 and RUNTIME / "demo.py" in files and \
        RUNTIME / "commands" / "bench.py" in files
    found = [hit for f in files
             for hit in forbidden_imports(f.read_text(encoding="utf-8"), str(f))]
    assert found == []


@pytest.mark.parametrize("source", [
    "import torch",
    "import torchvision.models as tvm",
    "import numpy, torch.nn",
    "from torch import nn",
    "from torch.nn import functional as F",
    "from leukoedge_train.torch_bench import torch_throughput",
    "def f():\n    from leukoedge_train import export\n    return export",
    "class A:\n    def m(self):\n        import torchvision",
    "if TYPE_CHECKING:\n    import torch",
    "import importlib\nimportlib.import_module('leukoedge_train.train')",
    "__import__('torch')",
])
def test_the_import_check_can_fail(source: str) -> None:
    assert len(forbidden_imports(source)) == 1


@pytest.mark.parametrize("source", [
    "from . import torch_helpers", "import torchaudio_like_name_but_not", "x = 'import torch'",
    "from .plugins import lookup", "import leukoedge_training",
])
def test_the_import_check_passes_what_is_allowed(source: str) -> None:
    assert forbidden_imports(source) == []


def test_without_torch_demo_runs_its_torch_free_part_and_bench_names_the_extra(
        tmp_path: Path, tiny_model: Path) -> None:
    """torch absent: ``demo`` runs part 1 (the shipped model, torch-free) and skips the
    training pipeline with one line naming the extra; ``bench --checkpoint`` stops at once
    (nothing measured) with that line."""
    absent = tmp_path / "absent"
    for name in ("torch", "torchvision"):
        (absent / name).mkdir(parents=True)
        (absent / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(absent), env.get("PYTHONPATH", "")])
    r = run(env, "demo", "--workdir", str(tmp_path / "wd"))
    said = " ".join(r.stderr.split())
    assert r.returncode == 0, r.stderr
    assert "part 2 (training pipeline) skipped" in said and "leukoedge[train" in said
    assert "Traceback" not in r.stderr
    assert (tmp_path / "wd" / "real-cells-predictions.csv").is_file()  # part 1 ran
    assert not (tmp_path / "wd" / "pipeline").exists()
    r = run(env, "bench", str(tiny_model), "--checkpoint", str(tmp_path / "run"),
            "--json", str(tmp_path / "b.json"))
    said = " ".join(r.stderr.split())
    assert r.returncode == 3, r.stderr
    assert "needs torch, which is not installed" in said and "leukoedge[train" in said
    assert "Traceback" not in r.stderr and "onnxruntime, batch" not in r.stdout
    assert not (tmp_path / "b.json").exists()


def test_ray_and_pyarrow_are_imported_by_their_engine_modules_only() -> None:
    """The scale extra's packages appear in their own modules and nowhere else: Ray in its
    engine, pyarrow in the Parquet writer."""
    allowed = {"ray": RUNTIME / "engines" / "ray_engine.py",
               "pyarrow": RUNTIME / "output" / "parts.py"}
    found: dict[str, set[Path]] = {name: set() for name in allowed}
    for f in sorted(RUNTIME.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     and node.module else [])
            for n in names:
                if n.split(".")[0] in found:
                    found[n.split(".")[0]].add(f)
    assert found == {name: {path} for name, path in allowed.items()}
