"""Shared by the atheris harnesses: atheris is optional (not a CI dependency).

Each harness defines ``TestOneInput(data: bytes)``, which returns normally for a result
or the declared error and raises for anything else; the tests call it on the seed corpus
without atheris (tests/test_fuzz_properties.py), atheris calls it unbounded.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

try:
    import atheris
except ImportError:  # the harnesses still import, for the corpus smoke test
    atheris = None

CORPUS = Path(__file__).resolve().parent / "corpus"


def instrumented() -> AbstractContextManager[object]:
    """``atheris.instrument_imports()`` when atheris is there: coverage of the Python code
    imported inside (leukoedge, Pillow's format plugins, json...)."""
    return atheris.instrument_imports() if atheris is not None else nullcontext()


def run(test_one_input: Callable[[bytes], None]) -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris (not needed for the tests)")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
