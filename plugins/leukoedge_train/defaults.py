"""The defaults of ``leukoedge train``: one table, per architecture, read both by the
training code (:meth:`.train.TrainConfig.resolved`) and by the ``train`` command's help
texts, so the two cannot disagree.

Torch-free on purpose: the CLI builds its help from it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class ArchDefaults:
    """What every :class:`~.train.TrainConfig` setting left at ``None`` becomes.

    The fields named like a ``TrainConfig`` field fill it directly; the last three are
    the rules of a run that starts from pretrained weights (``--weights`` other than
    ``none``): a head-only stage, then fine-tuning from ``unfreeze_pretrained`` at
    ``lr / finetune_lr_divisor``.
    """

    input_size: int
    epochs: int
    weights: str
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    augment: bool = True
    batchnorm: bool = True
    dropout: float = 0.5
    class_weights: bool = True
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 8
    device: str = "auto"
    amp: bool = True
    crop_fraction: float = 1.0
    width: float = 1.0
    head: str = "flatten"
    colour_norm: str = "none"
    stain_jitter: float = 0.1
    gamma_jitter: float = 0.0
    patient_balance: float = 0.0
    head_epochs_pretrained: int = 0
    unfreeze_pretrained: str = "all"
    finetune_lr_divisor: int = 10

    def settings(self) -> dict[str, object]:
        """The plain settings (named like ``TrainConfig`` fields), without the rules."""
        rules = ("head_epochs_pretrained", "unfreeze_pretrained", "finetune_lr_divisor")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in rules}


_SCRATCH = ArchDefaults(input_size=128, epochs=30, weights="none")

#: The table. An architecture registered elsewhere (``models.register``) and missing
#: here gets scratch's settings with its own input size.
DEFAULTS: dict[str, ArchDefaults] = {
    "scratch": _SCRATCH,
    "resnet50": replace(_SCRATCH, input_size=224, epochs=12, weights="imagenet",
                        head_epochs_pretrained=2, unfreeze_pretrained="layer3"),
    # EfficientNet-Lite0 from ImageNet weights, fine-tuned end to end (docs/accuracy.md)
    "lite0": replace(_SCRATCH, input_size=128, epochs=6, weights="imagenet", dropout=0.2,
                     patience=0),
}


def defaults_for(arch: str, input_size: int) -> ArchDefaults:
    """The table's row for ``arch``; scratch's, at ``input_size``, for one not in it."""
    row = DEFAULTS.get(arch)
    return row if row is not None else replace(_SCRATCH, input_size=input_size)


def shown(value: object) -> str:
    """A default as the help texts write it: ``on``/``off``, ``1e-3``, ``1`` for 1.0."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        if abs(value) < 0.01:
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
    return str(value)


def default_text(name: str, arch: str | None = None) -> str:
    """The default of ``name`` for a help text: one value when every architecture (or
    ``arch`` alone) has the same, else one per architecture (``scratch 30, resnet50 12``)."""
    rows = {a: getattr(d, name) for a, d in DEFAULTS.items() if arch in (None, a)}
    values = {shown(v) for v in rows.values()}
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{a} {shown(v)}" for a, v in rows.items())
