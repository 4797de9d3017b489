"""atheris harness: ``ModelSpec.from_json`` on arbitrary bytes gives a spec or SpecError,
and every spec it accepts round-trips through ``to_json``.

    python fuzz/fuzz_spec.py /tmp/leukoedge-fuzz-spec fuzz/corpus/spec \
        -max_total_time=60 -artifact_prefix=/tmp/leukoedge-fuzz-
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import instrumented, run  # noqa: E402

with instrumented():
    from leukoedge.errors import SpecError
    from leukoedge.spec import ModelSpec


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris expects
    try:
        spec = ModelSpec.from_json(data)
    except SpecError:
        return
    if ModelSpec.from_json(spec.to_json()) != spec:
        raise AssertionError("an accepted spec does not round-trip")


if __name__ == "__main__":
    run(TestOneInput)
