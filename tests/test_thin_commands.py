"""Commands only command (docs/design.md): each validates its flags, calls the library and
prints. An AST walk over leukoedge/commands/ refuses file access, metric computation and
report building there; the library modules named for the job do those."""

from __future__ import annotations

import ast
from pathlib import Path

COMMANDS = Path(__file__).resolve().parents[1] / "leukoedge" / "commands"

#: calls that open, read, write, list or remove files
FILE_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "iterdir",
              "mkdir", "unlink", "rmdir", "touch", "glob", "rglob", "load", "loads", "dump",
              "atomic_write_text", "atomic_write_bytes", "atomic_path", "ResultWriter",
              "PartWriter", "writer", "reader", "DictReader", "DictWriter", "write_meta",
              "read_meta", "exists", "is_dir", "is_file", "stat"}
#: library functions that compute metrics or assemble reports (commands call the
#: functions that return a finished result instead: build_report, report_from_predictions)
WORK_CALLS = {"metrics", "calibration_metrics", "bootstrap_intervals", "reliability",
              "per_patient", "patient_vote_metrics", "report_of", "scores_of", "summary",
              "summarize", "patient_metrics", "render", "predict_stream", "classify_files",
              "classify_ray", "calibrate", "calibrated_spec", "fit_temperature"}
#: modules a command never imports (numbers are the library's business)
MODULES = {"numpy", "csv", "json.decoder", "io", "shutil", "tempfile"}


def _called(node: ast.Call) -> str | None:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def offences(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _called(node)
            if name in FILE_CALLS or name in WORK_CALLS:
                found.append(f"{node.lineno}: {name}()")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""])
            found += [f"{node.lineno}: import {n}" for n in names if n in MODULES]
    return found


def test_no_command_opens_files_computes_metrics_or_builds_reports() -> None:
    bad = {f.name: got for f in sorted(COMMANDS.glob("*.py"))
           if (got := offences(ast.parse(f.read_text(encoding="utf-8"), str(f))))}
    assert bad == {}


def test_the_check_can_fail() -> None:
    src = ("import numpy as np\nfrom pathlib import Path\n"
           "def c(p: Path) -> None:\n    Path(p).read_text()\n    m = metrics([1], [1])\n")
    assert offences(ast.parse(src)) == ["1: import numpy", "4: read_text()", "5: metrics()"]
