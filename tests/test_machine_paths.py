"""No tracked file names a folder of one machine: neither the absolute path of the checkout
the tests run in nor a home folder (text, JSON and ONNX alike: an exporter records its
Python stack in the graph). ``/tmp`` in an example command is fine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: a home folder: /home/<name>/, /Users/<name>/, or root's
#: ([o]: so that this line names no home folder itself)
HOME = re.compile(rb"/home/[A-Za-z0-9_.-]+/|/Users/[A-Za-z0-9_.-]+/|(?<![A-Za-z0-9_.])/r[o]ot/")
#: image formats hold pixels, not text
SKIP_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".gif", ".ico", ".webp"}
#: tracked files known to hold a path, each with the reason; every entry must still hold
#: one (test_pending_files_still_hold_a_path), so an entry cannot outlive its reason.
#: (The shipped model was stripped in place with scripts/strip_source_paths.py.)
PENDING: dict[str, str] = {}


def tracked_files(root: Path) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [p for p in out.decode().split("\0") if p]


def machine_paths(root: Path, files: list[str]) -> dict[str, list[str]]:
    """``{file: [paths found]}`` for the files (relative to ``root``) that name ``root``
    itself or a home folder."""
    needles = {str(root.resolve()).encode(), str(root.absolute()).encode()}
    found: dict[str, list[str]] = {}
    for name in files:
        path = root / name
        if Path(name).suffix.lower() in SKIP_SUFFIXES or not path.is_file():
            continue
        data = path.read_bytes()
        hits = {n.decode() for n in needles if n in data}
        hits |= {m.group(0).decode(errors="replace") for m in HOME.finditer(data)}
        if hits:
            found[name] = sorted(hits)
    return found


def test_no_tracked_file_names_this_checkout_or_a_home_folder() -> None:
    files = tracked_files(REPO)
    assert len(files) > 50  # the listing worked
    found = machine_paths(REPO, [f for f in files if f not in PENDING])
    assert not found, f"machine paths in tracked files: {found}"


def test_pending_files_still_hold_a_path() -> None:
    found = machine_paths(REPO, list(PENDING))
    stale = sorted(set(PENDING) - set(found))
    assert not stale, f"{stale} no longer hold a path: remove them from PENDING"


def test_a_planted_path_is_found(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "clean.md").write_text("run it from /tmp/x: fine\n")
    (repo / "run.json").write_text(f'{{"data": "{repo}/../shared/data"}}\n')
    home = "/".join(["", "home", "alice", ""])  # built, so this file names no home folder
    (repo / "notes.txt").write_text(f"see {home}leukoedge/README\n")
    (repo / "model.onnx").write_bytes(b"\x08\x07" + f'File "{repo}/cam.py"'.encode() + b"\x00")
    (repo / "cell.bmp").write_bytes(b"BM" + str(repo).encode())  # pixels: not read
    try:
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not usable here")
    found = machine_paths(repo, tracked_files(repo))
    assert set(found) == {"run.json", "notes.txt", "model.onnx"}
    assert found["notes.txt"] == [home]
