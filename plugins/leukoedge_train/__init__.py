"""leukoedge's training plugin: PyTorch models, training loop, ONNX export, parity check.

Installed with the ``train`` extra; registered through the ``leukoedge.plugins`` entry
point. Importing this package does not import torch; commands import it when they run.
"""
