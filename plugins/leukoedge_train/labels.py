"""Which cells can train: the labelled ones, of both classes. Torch-free, so ``cv folds``
(:mod:`.cv`) and the training data (:mod:`.dataset`) share the one rule."""

from __future__ import annotations

from leukoedge.data import Item
from leukoedge.errors import DataError


def labelled(items: list[Item], where: str) -> list[Item]:
    """The items with a label; a :class:`DataError` when none has one or one class is
    missing (``where`` names the data in the message)."""
    out = [it for it in items if it.label is not None]
    if not out:
        raise DataError(f"{where}: no image has a label",
                        "put images under all/ and hem/ folders or name them *_all / *_hem")
    classes = {it.label for it in out}
    if len(classes) < 2:
        raise DataError(f"{where}: only one class present; training needs ALL and HEM")
    return out
