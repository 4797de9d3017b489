"""Named training recipes: one place for the settings a measured result was made with.

A recipe is a set of :class:`~.train.TrainConfig` settings plus how the cross-validation
harness picks the weights it scores (``selection``):

- ``last``: a fixed epoch count; the final weights predict the held-out fold (nothing is
  chosen on the fold being scored);
- ``inner``: today's default behaviour, early stopping with ``patience`` on an inner
  split by patient *of the training side*; ``best.pt`` predicts the held-out fold.

``leukoedge train ARCH DATA --recipe NAME`` and ``leukoedge cv run --recipe NAME`` read the
same table, so the shipped model is reproducible by name. Flags given on the command line
win over the recipe's settings. docs/accuracy.md has every recipe's measured figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from leukoedge.errors import UsageError

from .defaults import DEFAULTS
from .registry import pick

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    arch: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    selection: str = "last"  # last | inner

    def to_json_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "description": self.description,
                "settings": dict(self.settings), "selection": self.selection}


_SCRATCH = DEFAULTS["scratch"]

#: What ``--screen`` changes to make a candidate cheap to compare (smaller input, fewer
#: epochs); screening runs on 3 of the folds.
SCREEN = {"input_size": 64, "epochs": 10}

#: the ``lite0`` recipe; issue #27's other candidates each change one of its settings
_LITE0: dict[str, Any] = {"input_size": 128, "crop_fraction": 1.0, "epochs": 6, "patience": 0,
                          "weights": "imagenet", "dropout": 0.2, "head_epochs": 0,
                          "unfreeze": "all"}

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("baseline", "scratch",
           f"today's train scratch defaults: {_SCRATCH.input_size} px, {_SCRATCH.epochs} "
           f"epochs, early stopping (patience {_SCRATCH.patience}) on an inner "
           f"{_SCRATCH.val_fraction:.0%} patient split of the training side",
           {}, selection="inner"),
    Recipe("seed", "scratch",
           "the student project's settings: 45 px, no batch norm, no augmentation, "
           "no class weights, constant lr 1e-3, 15 epochs",
           {"input_size": 45, "epochs": 15, "batchnorm": False, "augment": False,
            "class_weights": False, "schedule": "constant", "warmup_epochs": 0.0,
            "weight_decay": 0.0, "patience": 0}),
    Recipe("fixed", "scratch",
           "the default network at 96 px on the central 75% (same resolution as 128 px "
           "on the whole image), 16 fixed epochs",
           {"input_size": 96, "crop_fraction": 0.75, "epochs": 16, "patience": 0}),
    Recipe("stain", "scratch",
           "fixed + stronger stain augmentation (per-channel gain +-0.25, gamma exp(+-0.3))",
           {"input_size": 96, "crop_fraction": 0.75, "epochs": 16, "patience": 0,
            "stain_jitter": 0.25, "gamma_jitter": 0.3}),
    Recipe("greyworld", "scratch",
           "stain + in-graph per-cell grey-world colour normalisation",
           {"input_size": 96, "crop_fraction": 0.75, "epochs": 16, "patience": 0,
            "stain_jitter": 0.25, "gamma_jitter": 0.3, "colour_norm": "greyworld"}),
    Recipe("gap", "scratch",
           "greyworld + a half-width network with a global-average-pool head "
           "(365k parameters instead of 5.4M)",
           {"input_size": 96, "crop_fraction": 0.75, "epochs": 16, "patience": 0,
            "stain_jitter": 0.25, "gamma_jitter": 0.3, "colour_norm": "greyworld",
            "width": 0.5, "head": "gap"}),
    Recipe("gap-balanced", "scratch",
           "gap + per-patient loss weights (a cell weighs (its patient's cells)^-0.5 "
           "within its class, so a few large patients dominate less)",
           {"input_size": 96, "crop_fraction": 0.75, "epochs": 16, "patience": 0,
            "stain_jitter": 0.25, "gamma_jitter": 0.3, "colour_norm": "greyworld",
            "width": 0.5, "head": "gap", "patient_balance": 0.5}),
    Recipe("resnet50-random", "resnet50",
           "ResNet50 from random weights (ImageNet weights cannot be had here) at 96 px "
           "on the central 75%, 10 fixed epochs",
           {"input_size": 96, "crop_fraction": 0.75, "epochs": 10, "patience": 0,
            "weights": "none"}),
    # issue #27's candidates (docs/accuracy.md, "lite0": the list was fixed before the runs)
    Recipe("lite0", "lite0",
           "EfficientNet-Lite0 from ImageNet weights, fine-tuned end to end at 128 px on the "
           "whole image, 6 fixed epochs, dropout 0.2", _LITE0),
    Recipe("lite0-2stage", "lite0",
           "lite0, but two stages: 1 epoch of the head on the frozen ImageNet network, then "
           "5 epochs of all layers at lr/10", _LITE0 | {"head_epochs": 1}),
    Recipe("lite0-160", "lite0", "lite0 at 160 px", _LITE0 | {"input_size": 160}),
    Recipe("lite0-random", "lite0",
           "lite0 from random weights: the control for what ImageNet pretraining adds "
           "(not a shipping candidate)", _LITE0 | {"weights": "none"}),
)}


def get_recipe(name: str) -> Recipe:
    return pick(RECIPES, name, "recipe")


def apply_recipe(cfg: TrainConfig, name: str, screen: bool = False) -> TrainConfig:
    """``cfg`` with the recipe's settings wherever ``cfg`` leaves a setting unset."""
    recipe = get_recipe(name)
    if cfg.arch != recipe.arch:
        raise UsageError(f"recipe {name} is for {recipe.arch}, not {cfg.arch}")
    settings = dict(recipe.settings) | (SCREEN if screen else {})
    known = {f.name for f in fields(cfg)}
    unknown = sorted(set(settings) - known)
    assert not unknown, unknown  # a typo in the table above
    changes = {k: v for k, v in settings.items() if getattr(cfg, k) is None}
    return replace(cfg, **changes)
