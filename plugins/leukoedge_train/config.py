"""The settings of a training run: :class:`TrainConfig`, filled from the defaults table
(:mod:`.defaults`) by :meth:`TrainConfig.resolved`, checked, written to and read from JSON,
and the settings a resumed run may change (:data:`RESUMABLE`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from leukoedge.console import note
from leukoedge.errors import UsageError

from .defaults import defaults_for
from .models import arch_info

SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
#: Settings a resumed run may change; every other setting comes from the checkpoint.
RESUMABLE = ("epochs", "patience", "device", "threads", "workers", "amp")


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means "the architecture's default"."""

    arch: str
    data: Path
    out: Path | None = None
    resume: bool = False
    input_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    finetune_lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    augment: bool | None = None
    batchnorm: bool | None = None
    dropout: float | None = None
    class_weights: bool | None = None
    val: Path | None = None
    val_fold: str | None = None
    val_fraction: float | None = None
    split_by_image: bool = False
    seed: int | None = None
    patience: int | None = None
    device: str | None = None
    amp: bool | None = None
    weights: str | None = None
    head_epochs: int | None = None
    unfreeze: str | None = None
    workers: int | None = None
    threads: int | None = None
    crop_fraction: float | None = None
    width: float | None = None
    head: str | None = None
    colour_norm: str | None = None
    stain_jitter: float | None = None
    gamma_jitter: float | None = None
    patient_balance: float | None = None

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` replaced by the architecture's default (the table in
        :mod:`.defaults`)."""
        row = defaults_for(self.arch, arch_info(self.arch).default_input_size)
        c = TrainConfig(**{f.name: getattr(self, f.name) for f in fields(self)})
        for k, v in row.settings().items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        assert c.lr is not None
        pretrained = c.weights != "none"
        if c.head_epochs is None:
            c.head_epochs = row.head_epochs_pretrained if pretrained else 0
        if c.unfreeze is None:
            c.unfreeze = row.unfreeze_pretrained if pretrained else "all"
        if c.finetune_lr is None:
            c.finetune_lr = c.lr / row.finetune_lr_divisor if c.head_epochs else c.lr
        c.validate()
        return c

    def setting(self, name: str) -> Any:
        """The setting ``name``: as given, or the defaults table's when ``None``."""
        value = getattr(self, name)
        if value is not None:
            return value
        return getattr(defaults_for(self.arch, arch_info(self.arch).default_input_size), name)

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule {self.schedule!r} is unknown",
                             f"choose {' or '.join(SCHEDULES)}")
        if self.device not in DEVICES:
            raise UsageError(f"--device {self.device!r} is unknown",
                             f"choose one of {', '.join(DEVICES)}")
        if self.arch not in ("resnet50", "lite0") and (self.head_epochs
                                                       or self.unfreeze != "all"):
            raise UsageError("--head-epochs and --unfreeze are for resnet50 and lite0")
        if self.arch != "scratch" and (self.width != 1.0 or self.head != "flatten"):
            raise UsageError("--width and --head are for scratch")
        if not 0.05 <= (self.crop_fraction or 1.0) <= 1.0:
            raise UsageError(f"--crop must be in 0.05..1, got {self.crop_fraction}")
        assert self.epochs is not None and self.head_epochs is not None
        if self.head_epochs >= self.epochs and self.unfreeze != "all" and self.head_epochs:
            note(f"--head-epochs {self.head_epochs} >= --epochs {self.epochs}: "
                 "only the head is trained")
        if not 0.0 <= (self.dropout or 0.0) < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= (self.patient_balance or 0.0) <= 1.0:
            raise UsageError(f"--patient-balance must be in 0..1, got {self.patient_balance}")

    def to_json_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("data", "out", "val"):
            if kw.get(k) is not None:
                kw[k] = Path(kw[k])
        return cls(**kw)


def resumed_config(cfg: TrainConfig, run_dir: Path, saved_json: dict[str, Any]) -> TrainConfig:
    """The run's own settings (its checkpoint's ``config``), with the :data:`RESUMABLE` ones given
    on the command line; a note names the other settings given, which are ignored."""
    saved = TrainConfig.from_json_dict(saved_json)
    given = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    ignored = [k for k, v in given.items() if v is not None and v is not False
               and k not in RESUMABLE + ("arch", "data", "out", "resume")
               and v != getattr(saved, k)]
    if ignored:
        note(f"--resume uses the run's own settings; ignoring {', '.join(ignored)}")
    if cfg.arch != saved.arch:
        raise UsageError(f"{run_dir} is a {saved.arch} run, not {cfg.arch}")
    for k in RESUMABLE:
        if given[k] is not None:
            setattr(saved, k, given[k])
    saved.data, saved.out, saved.resume = cfg.data, cfg.out, True
    return saved.resolved()
