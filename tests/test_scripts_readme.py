"""scripts/README.md indexes every file in scripts/ (what it is for, the doc it feeds, how
to run it); measurement scripts run the ``leukoedge`` on PATH, never a checkout's venv."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def tracked_scripts() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "scripts"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return sorted(str(Path(p).relative_to("scripts")) for p in out.split()
                  if p != "scripts/README.md")


def indexed(readme: str) -> set[str]:
    """The file names in the first column of the README's tables."""
    return set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))


def test_readme_lists_every_script() -> None:
    files = tracked_scripts()
    assert files, "no scripts found"
    missing = sorted(set(files) - indexed((SCRIPTS / "README.md").read_text()))
    assert not missing, f"scripts/README.md has no row for {missing}"


def test_readme_rows_are_real_files() -> None:
    stale = sorted(f for f in indexed((SCRIPTS / "README.md").read_text())
                   if not (SCRIPTS / f).is_file())
    assert not stale, f"scripts/README.md lists files that do not exist: {stale}"


def test_index_check_can_fail() -> None:
    assert indexed("| `a.py` | x |\n| `experiments/b.sh` | y |\n") == {"a.py",
                                                                        "experiments/b.sh"}
    assert "c.py" not in indexed("| `a.py` | x |\n")


def test_scripts_do_not_run_a_checkouts_venv() -> None:
    bad = [f for f in tracked_scripts()
           if ".venv/bin/leukoedge" in (SCRIPTS / f).read_text()
           or '".venv" / "bin"' in (SCRIPTS / f).read_text()]
    assert not bad, f"run the leukoedge on PATH, not a checkout's venv: {bad}"
