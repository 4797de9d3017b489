"""The model shipped with leukoedge: ``default.onnx``, trained on real C-NMC cells.

It is what ``classify``, ``evaluate``, ``serve`` and ``info`` use when no ``--model`` is
given and ``exported/`` holds no model. Its ModelSpec (``training``) records the patients
it was trained on, the recipe and the recipe's cross-validated figures; docs/accuracy.md
says how it was made and how to make it again.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parent / "default.onnx"


def default_model() -> Path | None:
    """The shipped model's path, or None when this installation lacks it."""
    return DEFAULT_MODEL if DEFAULT_MODEL.is_file() else None
