"""The runtime never imports torch: run the CLI with a poisoned ``torch`` first on the path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture()
def poisoned_env(tmp_path: Path) -> dict[str, str]:
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision"):
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
           "print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], env=poisoned_env, capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_the_poison_works(poisoned_env: dict[str, str]) -> None:
    """The check above can fail: importing torch under this environment is detected."""
    r = subprocess.run([sys.executable, "-c", "import torch"], env=poisoned_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and Path(poisoned_env["POISON_MARK"]).exists()
