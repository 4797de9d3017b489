"""Install hints fit both ways of installing (issue 30): ``pip install 'leukoedge[gpu]'``
from the package index, ``pip install -e '.[gpu]'`` in a clone."""

from __future__ import annotations

import types

from leukoedge.session import provider_load_problem


def test_gpu_hint_names_a_package_install_and_a_clone() -> None:
    fake = types.SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"],
                                 __file__=None)
    why = provider_load_problem(fake, "cuda")  # type: ignore[arg-type]
    assert why is not None and "has no CUDAExecutionProvider" in why
    assert "pip install 'leukoedge[gpu]'" in why and "pip install -e '.[gpu]'" in why
