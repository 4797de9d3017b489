"""Engines that run ``classify`` somewhere other than this process (the local engine is
:mod:`leukoedge.classify`). Each lives in its own module and imports its heavy dependency
(Ray, pyarrow) only when it is used: ``import leukoedge`` and the local commands never load
them (tests/test_no_torch.py)."""
