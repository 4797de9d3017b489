"""leukoedge: ALL vs HEM classification of segmented B-lymphoid cells.

The runtime (this package) needs numpy, Pillow, onnx and onnxruntime and never imports
torch; training lives in the ``leukoedge_train`` plugin under ``plugins/``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
