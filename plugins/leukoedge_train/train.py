"""The training loop: a run's model, data and progress, one epoch, validation, checkpoints.

Its settings are :mod:`.config`'s, its stages, schedule and optimiser :mod:`.schedule`'s,
its run files (history, curves, config.json, skipped.csv) :mod:`.run_files`'. One entry
point, :func:`train`, driven by a :class:`TrainConfig`, in named steps (timm style):
:func:`resolve_run` (settings, run folder, the checkpoint to resume),
:func:`prepare_split`, :func:`build_model`, :func:`load_data`, :func:`build_optimisation`,
:func:`restore_progress`, then :func:`run_epochs`: per epoch :func:`train_one_epoch`,
:func:`validate` and :func:`save_checkpoint`, and at the end :func:`summary`. Settings
left at ``None`` come from the table in :mod:`.defaults`. The run folder gets ``best.pt``
and ``last.pt`` (see :mod:`.checkpoint`), ``history.csv``, ``curves.png`` and
``config.json`` (settings, the split with its patients, environment).

Determinism: the shuffling, augmentation and dropout of epoch ``e`` are seeded from
``(seed, e)``, so a run resumed after epoch ``e`` continues exactly as an uninterrupted
one would on the same machine (CPU).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from leukoedge import __version__
from leukoedge.console import err, note
from leukoedge.data import Item, fingerprint
from leukoedge.errors import OutputExistsError, TrainingError, UsageError
from leukoedge.evaluate import metrics as score
from leukoedge.session import cores
from leukoedge.spec import ModelSpec

from . import checkpoint as ckpt_io
from . import pretrained
from .checkpoint import Checkpoint
from .config import TrainConfig, resumed_config
from .dataset import Loaded, Split, augment, labels_of, load_images, make_split
from .models import (
    ArchInfo,
    Normalize,
    arch_info,
    create_model,
    load_backbone_weights,
    set_trainable,
)
from .run_files import RunFiles, Skipped, default_run_dir, utc_now
from .schedule import (
    Optimisation,
    Stage,
    build_optimisation,
    lr_at,
    stages_of,
    steps_in_epoch,
    training_loss,
)

if TYPE_CHECKING:
    import rich.progress



@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int
    best_f1: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


# -- helpers -------------------------------------------------------------------------------

def pick_device(want: str) -> torch.device:
    if want == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but torch sees no CUDA device",
                            f"torch {torch.__version__}; install a CUDA build of torch or "
                            "use --device cpu")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _progress(label: str) -> rich.progress.Progress:
    """The training bar of one epoch (on a terminal only; gone when the epoch ends)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                    console=err, transient=True, disable=not err.is_terminal)


# -- the run: its settings, model, data and optimisation ---------------------------------



@dataclass
class Cells:
    """The decoded cells as tensors: uint8 ``[N, S, S, 3]`` images, float 0/1 labels, and
    the training cells' loss weights (``None``: all equal; see :func:`patient_weights`)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    w_train: torch.Tensor | None = None


@dataclass
class Run:
    """Everything the epochs of one run read; built once by :func:`train`."""

    cfg: TrainConfig  # resolved: no setting is None
    run_dir: Path
    device: torch.device
    info: ArchInfo
    split: Split
    fingerprint: str
    model: Normalize
    arch_kwargs: dict[str, Any]
    cells: Cells
    opt: Optimisation
    stages: list[Stage]
    steps_per_epoch: int
    weights: dict[str, str] = field(default_factory=dict)  # pretrained.record(...)


@dataclass
class Progress:
    """Where a run stands: its history, epochs done and best epoch so far."""

    history: list[dict[str, float]] = field(default_factory=list)
    epoch: int = 0
    best_epoch: int = 0
    best_f1: float = -1.0
    best_acc: float = 0.0

    def record(self, row: dict[str, float]) -> bool:
        """Add one epoch's row; whether its validation weighted F1 is a new best."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        improved = row["val_weighted_f1"] > self.best_f1
        if improved:
            self.best_epoch, self.best_f1, self.best_acc = \
                self.epoch, row["val_weighted_f1"], row["val_acc"]
        return improved


@dataclass
class EpochStats:
    """Running training loss and accuracy of one epoch, and the last lr used."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    lr: float = 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        self.loss_sum += float(loss.item()) * n
        self.correct += int(((logits.detach() >= 0).float() == y).sum())
        self.seen += n

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


def resolve_run(cfg: TrainConfig) -> tuple[TrainConfig, Path, Checkpoint | None]:
    """The resolved settings, the run folder and, with ``--resume``, its ``last.pt``."""
    run_dir = cfg.out or default_run_dir(cfg.arch)
    if not cfg.resume:
        c = cfg.resolved()
        if (run_dir / "last.pt").exists():
            raise OutputExistsError(f"{run_dir} already holds a run",
                                    "add --resume to continue it, or choose another --out")
        return c, run_dir, None
    if cfg.out is None:
        raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
    state = ckpt_io.load(run_dir / "last.pt")
    return resumed_config(cfg, run_dir, state["config"]), run_dir, state


def prepare_split(c: TrainConfig, split: Split | None, run_dir: Path,
                  state: Checkpoint | None) -> tuple[Split, str]:
    """The split (``split`` or one made from the settings) and its training fingerprint,
    which a resumed run must share with its checkpoint."""
    assert c.seed is not None
    if split is None:
        split = make_split(c.data, c.val, c.val_fold, c.setting("val_fraction"), c.seed,
                           c.split_by_image)
    for n in split.notes:
        note(n)
    data_root = c.data if c.data.is_dir() else c.data.parent
    fp = fingerprint(split.train, data_root)
    if state is not None and ckpt_io.spec_of(state).data_fingerprint != fp:
        raise TrainingError(f"{c.data} is not the data {run_dir} was trained on "
                            "(the training-set fingerprint differs)",
                            "resume with the same DATA and split options")
    return split, fp


def model_kwargs(c: TrainConfig) -> dict[str, Any]:
    """The architecture's construction arguments (kept in the checkpoint)."""
    kwargs: dict[str, Any] = {}
    if c.arch == "scratch":
        kwargs = {"dropout": float(c.dropout or 0.0), "batchnorm": bool(c.batchnorm),
                  "dense": [256, 128, 64], "width": float(c.width or 1.0),
                  "head": c.head or "flatten"}
    elif c.arch == "lite0":
        kwargs = {"dropout": float(c.dropout or 0.0)}
    if c.colour_norm and c.colour_norm != "none":
        kwargs["colour_norm"] = c.colour_norm
    return kwargs


def build_model(c: TrainConfig, state: Checkpoint | None,
                device: torch.device) -> tuple[Normalize, dict[str, Any], str]:
    """The model, initialised from ``--seed``, with the backbone weights (a new run) or the
    checkpoint's (a resumed one), on ``device``; its kwargs; where its weights came from."""
    assert c.seed is not None
    torch.manual_seed(c.seed)
    kwargs = model_kwargs(c)
    model = create_model(c.arch, c.input_size, **kwargs)
    if state is None:
        source = load_backbone_weights(model, c.arch, c.weights or "none")
        note(f"weights: {source}")
    else:
        source = "checkpoint"
        model.load_state_dict(state["model"])
    model.to(device)
    return model, kwargs, source


def weights_record(c: TrainConfig, state: Checkpoint | None, source: str) -> dict[str, str]:
    """A new run's :func:`.pretrained.record`; a resumed run keeps its checkpoint's."""
    if state is None:
        return pretrained.record(c.arch, c.weights or "none", source)
    old = ckpt_io.spec_of(state).training.get("weights")
    return dict(old) if isinstance(old, dict) else {}


def check_pretrained(model: Normalize, cells: Cells, source: str) -> None:
    """The loaded network is the one its weights were trained for: each batch norm's input
    statistics on (up to 64) real training cells are in range (:func:`.pretrained.bn_check`)."""
    x = cells.x_train[:64].to(next(model.parameters()).device)
    with torch.no_grad():
        check = pretrained.bn_check(model.net, model.prepare(x))
    pretrained.require_bn(check, source.split(" (")[0])
    note(f"weights check: the typical one of {check.layers} batch norms sees {len(x)} training "
         f"cells within {check.typical_ratio:.2f}x of its stored variance (limit "
         f"{pretrained.BN_RATIO:g}x)")


def load_data(c: TrainConfig, split: Split,
              info: ArchInfo) -> tuple[Split, Cells, list[Skipped]]:
    """Decode both sides into memory; unreadable files are reported and left out (the
    split without them must still train)."""
    assert c.input_size
    t0 = time.perf_counter()
    loaded_train, loaded_val = _load(split, c.input_size, info.interpolation, c.workers,
                                     c.crop_fraction or 1.0)
    x_train, x_val = loaded_train.pixels, loaded_val.pixels
    note(f"decoded {len(x_train) + len(x_val)} images at {c.input_size} px in "
         f"{time.perf_counter() - t0:.1f} s ({(x_train.nbytes + x_val.nbytes) / 1e6:.0f} MB "
         "in memory)")
    skipped = [("train", it, why) for it, why in loaded_train.skipped] + \
        [("val", it, why) for it, why in loaded_val.skipped]
    if skipped:
        _report_skipped(skipped)
        split = replace(split, train=loaded_train.items, val=loaded_val.items)
        split.check(f"{c.data} without its unreadable images")
    d = split.describe()
    note(f"{c.arch}: {d['train_images']} training images ({d['train_all']} ALL, "
         f"{d['train_hem']} HEM, {len(d['train_patients'])} patients), "
         f"{d['val_images']} validation ({d['val_all']} ALL, {d['val_hem']} HEM, "
         f"{len(d['val_patients'])} patients), split by {split.method}")
    cells = Cells(y_train=torch.from_numpy(labels_of(split.train)),
                  y_val=torch.from_numpy(labels_of(split.val)),
                  x_train=torch.from_numpy(x_train), x_val=torch.from_numpy(x_val),
                  w_train=patient_weights(split.train, c.patient_balance or 0.0))
    return split, cells, skipped


def patient_weights(items: Sequence[Item], alpha: float) -> torch.Tensor | None:
    """Per-cell loss weights that shrink the share of patients with many cells.

    A cell of a patient with ``n`` training cells weighs ``n ** -alpha``, rescaled within
    each class to a mean of 1, so the class balance (``pos_weight``) is unchanged: at
    ``alpha = 1`` every patient of a class weighs the same in the loss, at 0 every cell
    (``None``: the plain loss). Cells without a patient id count as one patient per class.
    """
    if alpha <= 0.0:
        return None
    counts = Counter((it.label, it.patient) for it in items)
    w = np.array([counts[(it.label, it.patient)] ** -alpha for it in items],
                 dtype=np.float64)
    labels = np.array([it.label for it in items])
    for label in np.unique(labels):
        w[labels == label] /= w[labels == label].mean()
    return torch.from_numpy(w.astype(np.float32))


def restore_progress(state: Checkpoint | None, opt: Optimisation, run_dir: Path) -> Progress:
    """A new run's empty progress, or a resumed run's, with its optimiser state back."""
    if state is None:
        return Progress()
    opt.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        opt.scaler.load_state_dict(state["scaler"])
    best = state["best"]
    progress = Progress([dict(r) for r in state["history"]], int(state["epoch"]),
                        int(best["epoch"]), float(best["val_weighted_f1"]),
                        float(best["val_accuracy"]))
    note(f"resuming {run_dir} after epoch {progress.epoch} (best weighted F1 "
         f"{progress.best_f1:.4f} at epoch {progress.best_epoch})")
    return progress


def config_document(run: Run, weights_source: str, skipped: list[Skipped]) -> dict[str, Any]:
    """What ``config.json`` records: settings, split, environment."""
    c = run.cfg
    return {
        "config": c.to_json_dict(), "split": run.split.describe(), "weights": weights_source,
        "pos_weight": run.opt.pos_weight, "device": str(run.device), "amp": run.opt.use_amp,
        "torch": torch.__version__, "leukoedge": __version__,
        "data_fingerprint": run.fingerprint, "started_at": utc_now(),
        "skipped_images": len(skipped), "interpolation": run.info.interpolation,
        "mean": list(run.info.mean), "std": list(run.info.std),
    }


# -- one epoch -----------------------------------------------------------------------------

def train_step(run: Run, xb: torch.Tensor, yb: torch.Tensor, lr: float,
               epoch: int, wb: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step at ``lr`` on a batch already on the device; (loss, logits).
    ``wb``: the batch's per-cell loss weights (:func:`patient_weights`), if any."""
    opt = run.opt
    for g in opt.optimizer.param_groups:
        g["lr"] = lr
    opt.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(run.device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
        logits = run.model(xb)
    loss = training_loss(opt, logits.float(), yb, wb)
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at epoch {epoch}", "lower --lr")
    torch.autograd.backward(opt.scaler.scale(loss))  # = .backward(), which is untyped
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return loss, logits


def train_one_epoch(run: Run, stage: Stage, epoch: int,
                    frozen_bn: list[nn.Module]) -> EpochStats:
    """One pass over the training cells in the epoch's seeded order, augmented with the
    epoch's generator; the lr follows the stage's schedule step by step."""
    c, x, y = run.cfg, run.cells.x_train, run.cells.y_train
    assert c.seed is not None and c.batch_size
    torch.manual_seed(c.seed * 100_003 + epoch)
    gen = torch.Generator().manual_seed(c.seed * 7_919 + epoch)
    perm = torch.randperm(len(x), generator=gen)
    if len(perm) % c.batch_size == 1 and len(perm) > 1:
        perm = perm[:-1]  # a batch of one breaks batch norm; the cell is back next epoch
    run.model.train()
    for m in frozen_bn:
        m.eval()
    steps = run.steps_per_epoch
    total_stage = (stage.last - stage.first + 1) * steps
    warm = min(int(round((c.warmup_epochs or 0.0) * steps)), total_stage // 2)
    stats = EpochStats()
    with _progress(f"epoch {epoch}/{c.epochs}") as bar:
        task = bar.add_task("train", total=steps, stats="")
        for b, i0 in enumerate(range(0, len(perm), c.batch_size)):
            idx = perm[i0:i0 + c.batch_size]
            xb = x[idx]
            if c.augment:
                xb = augment(xb, gen, colour=c.stain_jitter or 0.0,
                             gamma=c.gamma_jitter or 0.0)
            xb = xb.to(run.device, non_blocking=True)
            yb = y[idx].to(run.device)
            stats.lr = lr_at((epoch - stage.first) * steps + b, total_stage, stage.lr, warm,
                             c.schedule or "cosine")
            wb = None if run.cells.w_train is None else run.cells.w_train[idx].to(run.device)
            loss, logits = train_step(run, xb, yb, stats.lr, epoch, wb)
            stats.add(loss, logits, yb)
            bar.update(task, advance=1,
                       stats=f"loss {stats.loss_sum / stats.seen:.4f} "
                             f"acc {stats.correct / stats.seen:.3f}")
    return stats


def validate(run: Run) -> tuple[float, dict[str, Any]]:
    """The validation loss (plain BCE) and metrics at logit 0, in eval mode."""
    assert run.cfg.batch_size
    y = run.cells.y_val
    logits, loss = evaluate(run.model, run.cells.x_val, y, nn.BCEWithLogitsLoss(), run.device,
                            2 * run.cfg.batch_size, run.opt.use_amp, run.opt.amp_dtype)
    y_pred = (logits >= 0).astype(np.int64)
    return loss, score(y.numpy().astype(np.int64), y_pred)


def run_epoch(run: Run, epoch: int) -> tuple[dict[str, float], Stage]:
    """Train one epoch in its stage, re-estimate batch norm, validate: the history row."""
    assert run.cfg.batch_size
    stage = next(s for s in run.stages if s.first <= epoch <= s.last)
    frozen_bn = set_trainable(run.model, stage.prefixes)
    t_epoch = time.perf_counter()
    stats = train_one_epoch(run, stage, epoch, frozen_bn)
    recalibrate_bn(run.model, run.cells.x_train, frozen_bn, run.device,
                   2 * run.cfg.batch_size)
    val_loss, m = validate(run)
    row = {"epoch": float(epoch), "train_loss": stats.loss, "train_acc": stats.accuracy,
           "val_loss": val_loss, "val_acc": float(m["accuracy"]),
           "val_weighted_f1": float(m["weighted_f1"]), "lr": stats.lr,
           "seconds": time.perf_counter() - t_epoch}
    return row, stage


# -- checkpoint and summary ----------------------------------------------------------------

def spec_of_run(run: Run, progress: Progress) -> ModelSpec:
    """The ModelSpec a checkpoint carries: the data contract and the best epoch so far."""
    c, info = run.cfg, run.info
    assert c.input_size
    return ModelSpec(
        architecture=c.arch, input_size=c.input_size, crop_fraction=c.crop_fraction or 1.0,
        interpolation=info.interpolation, mean=info.mean, std=info.std, threshold=0.5,
        data_fingerprint=run.fingerprint, train_images=len(run.split.train),
        created_at=utc_now(), tool_version=__version__,
        metrics={"val_weighted_f1": round(max(progress.best_f1, 0.0), 6),
                 "val_accuracy": round(progress.best_acc, 6),
                 "epoch": float(progress.best_epoch)},
        notes=f"validation: split by {run.split.method}, {len(run.split.val)} images",
        training={"weights": dict(run.weights)} if run.weights else {},
    )


def save_checkpoint(run: Run, progress: Progress, improved: bool) -> None:
    """``last.pt`` after every epoch; ``best.pt`` (no optimiser state) when it improved."""
    c = run.cfg
    blob: Checkpoint = {
        "format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "architecture": c.arch,
        "arch_kwargs": run.arch_kwargs, "model": _cpu_state(run.model),
        "spec": spec_of_run(run, progress).to_json(),
        "optimizer": run.opt.optimizer.state_dict(),
        "scheduler": {"kind": c.schedule, "steps_per_epoch": run.steps_per_epoch,
                      "stages": [asdict(s) | {"prefixes": list(s.prefixes or [])}
                                 for s in run.stages]},
        "scaler": run.opt.scaler.state_dict() if run.opt.scaler.is_enabled() else {},
        "epoch": progress.epoch, "history": progress.history,
        "best": {"epoch": progress.best_epoch, "val_weighted_f1": progress.best_f1,
                 "val_accuracy": progress.best_acc},
        "config": c.to_json_dict(), "split": run.split.describe(),
        "rng": {"torch": torch.get_rng_state()},
    }
    if improved:  # best.pt is for export: no optimiser state (a third of the size)
        ckpt_io.save({k: v for k, v in blob.items() if k not in ("optimizer", "scaler")},
                     run.run_dir / "best.pt")
    ckpt_io.save(blob, run.run_dir / "last.pt")


def note_epoch(run: Run, stage: Stage, row: dict[str, float], improved: bool) -> None:
    note(f"epoch {int(row['epoch'])}/{run.cfg.epochs} ({stage.name}) "
         f"loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} | "
         f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
         f"wF1 {row['val_weighted_f1']:.4f}{' *' if improved else ''} | "
         f"lr {row['lr']:.2e} | {row['seconds']:.1f} s")


def summary(run: Run, progress: Progress, stopped_early: bool) -> TrainResult:
    """The end of the run: where it is, epochs done, the best epoch."""
    return TrainResult(run.run_dir, progress.epoch if progress.history else 0,
                       progress.best_epoch, progress.best_f1, progress.history, stopped_early)


# -- the loop ------------------------------------------------------------------------------

def train(cfg: TrainConfig, on_epoch: Callable[[dict[str, float]], None] | None = None,
          split: Split | None = None) -> TrainResult:
    """Train (or resume) one run; return where it is and how it went.

    ``split`` replaces the split made from ``cfg`` (the cross-validation harness passes
    its folds; the validation side is then only watched, see :mod:`.cv`)."""
    c, run_dir, state = resolve_run(cfg)
    assert c.batch_size
    torch.set_num_threads(c.threads or cores())
    device = pick_device(c.device or "auto")
    info = arch_info(c.arch)
    split, fp = prepare_split(c, split, run_dir, state)
    model, arch_kwargs, weights_source = build_model(c, state, device)
    split, cells, skipped = load_data(c, split, info)
    if state is None and c.arch == "lite0" and c.weights != "none":
        check_pretrained(model, cells, weights_source)
    opt = build_optimisation(c, model, cells.y_train, device)
    progress = restore_progress(state, opt, run_dir)
    run = Run(c, run_dir, device, info, split, fp, model, arch_kwargs, cells, opt,
              stages_of(c), steps_in_epoch(len(cells.x_train), c.batch_size),
              weights_record(c, state, weights_source))
    files = RunFiles(run_dir)
    files.write_config(config_document(run, weights_source, skipped), resumed=state is not None)
    files.write_skipped(skipped)
    return run_epochs(run, progress, files, on_epoch)


def run_epochs(run: Run, progress: Progress, files: RunFiles,
               on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainResult:
    """The epochs left, each followed by its checkpoint, history, curves and note; stops
    early after ``patience`` epochs without a better validation weighted F1."""
    c = run.cfg
    assert c.epochs is not None
    patience, start = c.patience or 0, progress.epoch
    if patience and start - progress.best_epoch >= patience and start < c.epochs:
        note(f"no improvement for {start - progress.best_epoch} epochs already "
             f"(patience {patience})")
        return summary(run, progress, stopped_early=True)
    for epoch in range(start + 1, c.epochs + 1):
        row, stage = run_epoch(run, epoch)
        improved = progress.record(row)
        save_checkpoint(run, progress, improved)
        files.epoch_done(progress.history)
        note_epoch(run, stage, row, improved)
        if on_epoch is not None:
            on_epoch(row)
        if patience and epoch - progress.best_epoch >= patience:
            note(f"early stop: no better validation weighted F1 for {patience} epochs")
            return summary(run, progress, stopped_early=True)
    return summary(run, progress, stopped_early=False)


def _report_skipped(skipped: list[Skipped]) -> None:
    shown = 5
    note(f"warning: {len(skipped)} unreadable images left out of training "
         "(listed in skipped.csv in the run folder):")
    for side, _, why in skipped[:shown]:
        note(f"  {side}: {why}")
    if len(skipped) > shown:
        note(f"  ... and {len(skipped) - shown} more")


def _load(split: Split, size: int, interpolation: str, workers: int | None,
          crop_fraction: float = 1.0) -> tuple[Loaded, Loaded]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    total = len(split.train) + len(split.val)
    with Progress(TextColumn("decode"), BarColumn(), MofNCompleteColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as p:
        task = p.add_task("decode", total=total)

        def adv(n: int) -> None:
            p.advance(task, n)

        xt = load_images(split.train, size, crop_fraction, interpolation, workers, adv)
        xv = load_images(split.val, size, crop_fraction, interpolation, workers, adv)
    return xt, xv


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


#: Images used to re-estimate batch-norm statistics after each epoch ("precise BN").
BN_CALIBRATION_IMAGES = 1024


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, frozen: list[nn.Module],
                   device: torch.device, batch_size: int,
                   limit: int = BN_CALIBRATION_IMAGES) -> None:
    """Re-estimate the running mean/var of every trained BatchNorm layer as a plain
    average over up to ``limit`` training images (unaugmented), with the final weights.

    The running averages kept during the epoch (momentum 0.1) mix statistics of weights
    from many steps ago; with few steps per epoch (small data sets, early epochs) they lag
    so far behind that eval-mode predictions collapse to one class although train-mode ones
    are right. Frozen BatchNorm layers keep their (ImageNet) statistics.
    """
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in frozen]
    if not bns or len(x) < 2:
        return
    model.eval()
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    # a fixed random subset: the cache is in folder order (all ALL cells, then HEM)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:limit]
    n = len(pick)
    step = max(2, batch_size)
    for i in range(0, n, step):
        xb = x[pick[i:min(i + step, n)]]
        if len(xb) < 2:
            break
        model(xb.to(device, non_blocking=True))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: nn.Module,
             device: torch.device, batch_size: int, use_amp: bool = False,
             amp_dtype: torch.dtype = torch.float16) -> tuple[np.ndarray, float]:
    """Logits of every image (eval mode) and the mean loss."""
    model.eval()
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            outs.append(model(xb).float().cpu())
    logits = torch.cat(outs) if outs else torch.zeros(0)
    loss = float(criterion(logits, y)) if len(y) else 0.0
    return logits.numpy(), loss
