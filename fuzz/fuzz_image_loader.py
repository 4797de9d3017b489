"""atheris harness: ``leukoedge.preprocess`` on arbitrary bytes gives an array or ImageError.

    python fuzz/fuzz_image_loader.py /tmp/leukoedge-fuzz-image fuzz/corpus/image \
        -max_total_time=60 -rss_limit_mb=4096 -artifact_prefix=/tmp/leukoedge-fuzz-

The first folder receives the new inputs libFuzzer finds (keep it out of the repository);
``fuzz/corpus/image`` holds the seeds: small valid files of every format and mode
(``python fuzz/make_corpus.py`` rewrites them). A crash file is written with the
artifact prefix; replay it with ``python fuzz/fuzz_image_loader.py CRASH_FILE``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import instrumented, run  # noqa: E402

with instrumented():
    import numpy as np
    import PIL.Image

    PIL.Image.init()  # import every format plugin now, so they are instrumented too

    import leukoedge.preprocess as pp
    from leukoedge.errors import ImageError

# A mutated header may claim up to 40 MP, whose decode takes a second; a lower cap keeps
# the fuzzer fast and takes the same code paths (the cap itself is tested in tests/).
pp.MAX_PIXELS = 1_000_000


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris expects
    for size, crop, interp in ((16, 1.0, "bilinear"), (9, 0.5, "lanczos")):
        try:
            a = pp.preprocess(data, size, crop, interp)
        except ImageError:
            return
        if a.shape != (size, size, 3) or a.dtype != np.uint8:
            raise AssertionError(f"bad output {a.shape} {a.dtype}")


if __name__ == "__main__":
    run(TestOneInput)
