"""Heatmaps and test-time symmetries inside the exported graph (``export --cam``, ``--tta``).

At the edge there is no PyTorch and ONNX has no autograd, so everything is computed in the
forward graph with ordinary operators.

**The map** is the class activation map of the ALL logit (positive = evidence for ALL),
raw (no ReLU, no normalisation: those are display choices), ``[N, h, w]``:

- ``resnet50`` (global average pool + one linear layer): the exact CAM,
  ``sum_c w_c * A_c`` with ``w`` the ``fc`` weights and ``A`` ``layer4``'s output
  (7x7 at 224 px). Its spatial mean plus the bias is the logit.
- ``lite0`` (the same shape of head: pool, dropout, one linear layer): the exact CAM on
  the last convolution's activations (the 1x1 head to 1280 channels, after its ReLU6;
  4x4 at 128 px) with the ``_fc`` weights.
- ``scratch``, both heads (``flatten`` and ``gap``; the dense layers after the pool make
  the head non-linear, so the exact CAM does not exist even for ``gap`` unless it has no
  dense layers): Grad-CAM on the last convolution block's activations ``A`` *before* its
  max-pool (side/8: 16x16 at 128 px, 12x12 at 96 px). Channel weights
  ``alpha_c = mean_hw(dlogit/dA_c)``; map ``sum_c alpha_c * A_c``. In eval mode the dense
  head is piecewise linear: the gradient with respect to the head's input is
  ``W1^T D1 W2^T D2 ... w_last`` with ``D_k = [z_k > 0]`` (PyTorch's ReLU backward is 0
  at 0), computed from the forward pass's own pre-activations. The max-pool routes each
  window's gradient to that window's argmax position, so the *sum* of ``dlogit/dA_c``
  over the map equals the sum of ``dlogit/dP_c`` over the pooled map ``P`` whatever the
  argmax (ties included): ``alpha_c = sum_hw(dlogit/dP_c) / (H_A * W_A)`` is exact and
  needs no argmax at all. For a ``gap`` head ``dlogit/dP_c`` is the head-input gradient
  divided by the pooled area.

**Test-time symmetries** (``--tta 2|4|8``): the graph runs the model on the symmetries of
the square of its input, stacked into one batch of ``G * N``, and averages the logits
(features, when there is a features output, are averaged too). Maps are rotated/flipped
back to the input's orientation before averaging. Groups: 2 = ``d1`` (identity, mirror
left-right), 4 = ``c4`` (the four rotations), 8 = ``d4`` (rotations and mirrored
rotations: the 8 symmetries training augments with).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leukoedge.errors import ExportError, TrainingError, UsageError
from leukoedge.spec import ModelSpec

from .lite0 import Lite0
from .models import Normalize, ScratchNet

#: ``--tta N`` -> the symmetry group's name in the ModelSpec's ``tta`` field
TTA_BY_COUNT = {1: "none", 2: "d1", 4: "c4", 8: "d4"}
#: group name -> its elements as (mirror first, quarter turns)
GROUPS: dict[str, tuple[tuple[bool, int], ...]] = {
    "none": ((False, 0),),
    "d1": ((False, 0), (True, 0)),
    "c4": tuple((False, k) for k in range(4)),
    "d4": tuple((f, k) for f in (False, True) for k in range(4)),
}
#: what kind of map each architecture's graph carries (docs, ``info``)
METHODS = {"resnet50": "CAM (fc weights on layer4)",
           "lite0": "CAM (_fc weights on the last 1x1 convolution)",
           "scratch": "Grad-CAM (last block, before its max-pool)"}


def tta_name(count: int) -> str:
    try:
        return TTA_BY_COUNT[count]
    except KeyError:
        raise UsageError(f"--tta {count} is not offered",
                         "choose 1 (none), 2 (mirror), 4 (rotations) or 8 "
                         "(all 8 symmetries of the square)") from None


def transform(x: torch.Tensor, mirror: bool, turns: int, dims: tuple[int, int]
              ) -> torch.Tensor:
    """Mirror (along ``dims[1]``), then turn ``turns`` quarter turns in ``dims``."""
    if mirror:
        x = x.flip(dims[1])
    if turns % 4:
        x = torch.rot90(x, turns, list(dims))
    return x


def untransform(x: torch.Tensor, mirror: bool, turns: int, dims: tuple[int, int]
                ) -> torch.Tensor:
    """The inverse of :func:`transform`."""
    if turns % 4:
        x = torch.rot90(x, -turns, list(dims))
    if mirror:
        x = x.flip(dims[1])
    return x


class Core(nn.Module):
    """One pass of the model: ``(logit [N], features [N, d], cam [N, h, w])``, the logit
    computed with the model's own layers (eval mode), exactly as :class:`Normalize` does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, Normalize):
            raise TrainingError("a heatmap needs a leukoedge model (Normalize)")
        self.model = copy.deepcopy(model)
        net = self.model.net
        if isinstance(net, ScratchNet):
            self.kind = "scratch"
            self.linears = [m for m in net.head if isinstance(m, nn.Linear)]
            self.gap = any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.head)
            if not self.linears or self.linears[-1].out_features != 1:
                raise TrainingError("cannot find the scratch network's one-logit layer")
            # the backward pass's own copies of the dense weights: an initializer shared by
            # a Gemm and a MatMul breaks int8 quantisation (per-channel scales clash)
            for i, lin in enumerate(self.linears):
                self.register_buffer(f"back{i}", lin.weight.detach().clone())
        elif all(hasattr(net, a) for a in ("layer4", "fc", "avgpool", "conv1")):
            self.kind = "resnet50"
        elif isinstance(net, Lite0):
            self.kind = "lite0"
        else:
            raise TrainingError(f"no heatmap is defined for {type(net).__name__}",
                                "export without --cam")

    def forward(self, image: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.model.prepare(image)
        if self.kind == "resnet50":
            return self._resnet(x)
        if self.kind == "lite0":
            return self._lite0(x)
        return self._scratch(x)

    def _lite0(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n: Any = self.model.net
        a = n.features_of(x)
        feats = n._avg_pooling(a).flatten(1)
        logit = n._fc(feats).reshape(-1)  # dropout is the identity in eval mode
        w = n._fc.weight.reshape(1, -1, 1, 1)
        return logit, feats, (a * w).sum(dim=1)

    def _resnet(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n: Any = self.model.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        a = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        feats = n.avgpool(a).flatten(1)
        logit = n.fc(feats).reshape(-1)
        w = n.fc.weight.reshape(1, -1, 1, 1)
        return logit, feats, (a * w).sum(dim=1)

    def _scratch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        blocks: Any = self.model.net.features
        for b in list(blocks)[:-1]:
            x = b(x)
        last = blocks[-1]
        a = last[:-1](x)  # the last block's activations before its max-pool
        p = last[-1](a)
        h = p.mean(dim=(2, 3)) if self.gap else p.flatten(1)
        pre: list[torch.Tensor] = []
        v = h
        for lin in self.linears[:-1]:
            z = lin(v)
            pre.append(z)
            v = torch.relu(z)
        logit = self.linears[-1](v).reshape(-1)
        # dlogit/dh, through the ReLUs of this very pass
        back = [getattr(self, f"back{i}") for i in range(len(self.linears))]
        g = back[-1].expand(v.shape[0], -1)
        for w, z in zip(reversed(back[:-1]), reversed(pre)):
            g = (g * (z > 0).to(z.dtype)) @ w
        area = a.shape[2] * a.shape[3]
        if self.gap:  # dlogit/dP = g / (pooled area) at every pooled position
            alpha = g / area
        else:
            alpha = g.reshape(p.shape).sum(dim=(2, 3)) / area
        cam = (a * alpha[:, :, None, None]).sum(dim=1)
        return logit, v, cam


class InGraph(nn.Module):
    """The exported graph: outputs ``logit`` [, ``features``][, ``cam``] (``outputs``),
    averaged over the symmetries of ``tta``."""

    def __init__(self, model: nn.Module, cam: bool = True, features: bool = False,
                 tta: str = "none") -> None:
        super().__init__()
        if tta not in GROUPS:
            raise UsageError(f"unknown test-time symmetries {tta!r}",
                             f"choose one of {', '.join(GROUPS)}")
        self.core = Core(model)
        self.cam, self.features, self.tta = cam, features, tta
        self.outputs: tuple[str, ...] = ("logit",) + (("features",) if features else ()) \
            + (("cam",) if cam else ())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        group = GROUPS[self.tta]
        g = len(group)
        x = image if g == 1 else torch.cat(
            [transform(image, m, k, (1, 2)) for m, k in group], dim=0)
        logit, feats, cam = self.core(x)
        outs: list[torch.Tensor] = [logit.reshape(g, -1).mean(dim=0)]
        if self.features:
            outs.append(feats.reshape(g, -1, feats.shape[1]).mean(dim=0))
        if self.cam:
            h, w = cam.shape[1], cam.shape[2]
            maps = cam.reshape(g, -1, h, w)
            back = [untransform(maps[i], m, k, (1, 2)) for i, (m, k) in enumerate(group)]
            outs.append(back[0] if g == 1 else torch.stack(back).mean(dim=0))
        return tuple(outs)


# -- the reference: PyTorch autograd (tests, docs) -------------------------------------------

def autograd_map(model: Normalize, image: torch.Tensor) -> torch.Tensor:
    """The same map computed the textbook way, with autograd on the model itself:
    ResNet50 CAM from a hook on ``layer4`` and the ``fc`` weights; scratch Grad-CAM from a
    hook on the last block's activations before its max-pool and ``autograd.grad`` of the
    logit. ``[N, h, w]``, float64 if the model is."""
    net: Any = model.net
    store: dict[str, torch.Tensor] = {}

    def keep(_: nn.Module, __: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        store["a"] = out

    target: nn.Module
    fc: Any = net.fc if hasattr(net, "fc") else getattr(net, "_fc", None)
    if isinstance(net, ScratchNet):
        blocks: Any = net.features
        target = blocks[-1][-2]  # the last ReLU of the last block
    elif isinstance(net, Lite0):
        target = net.head_act  # the last convolution's ReLU6
    else:
        target = net.layer4
    handle = target.register_forward_hook(keep)
    try:
        model = model.eval()
        if isinstance(net, ScratchNet):
            with torch.enable_grad():
                logit = model(image)
                a = store["a"]
                (grad,) = torch.autograd.grad(logit.sum(), a)
            alpha = grad.mean(dim=(2, 3))
            return (a.detach() * alpha[:, :, None, None]).sum(dim=1)
        with torch.no_grad():
            model(image)
            a = store["a"]
            cam: torch.Tensor = (a * fc.weight.reshape(1, -1, 1, 1)).sum(dim=1)
            return cam
    finally:
        handle.remove()


# -- reduced precision: the map's own check ---------------------------------------------------

#: a converted (fp16/int8) model's maps must correlate with the fp32 export's this well
#: (median over the images of the per-image Pearson correlation)
MIN_MAP_CORRELATION = 0.95


@dataclass
class MapCheck:
    """The converted model's maps against the fp32 export's, on the same cells."""

    precision: str
    images: int
    median_correlation: float | None  # None: the converted model does not run here
    min_correlation: float | None
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return self.median_correlation is not None \
            and self.median_correlation >= MIN_MAP_CORRELATION

    def line(self) -> str:
        if self.median_correlation is None:
            return f"{self.precision} maps: not checked ({self.problem})"
        return (f"{self.precision} maps vs fp32: per-image correlation median "
                f"{self.median_correlation:.4f}, lowest {self.min_correlation:.4f} on "
                f"{self.images} cells (needs median >= {MIN_MAP_CORRELATION})")

    def as_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "images": self.images,
                "median_correlation": self.median_correlation,
                "min_correlation": self.min_correlation,
                "min_required": MIN_MAP_CORRELATION, "passed": self.passed,
                "problem": self.problem}


def map_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of two map stacks ``[n, h, w]`` (1.0 where both are
    constant, 0.0 where one is)."""
    x = a.reshape(len(a), -1).astype(np.float64)
    y = b.reshape(len(b), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    num = (x * y).sum(axis=1)
    both_flat = ((x * x).sum(axis=1) == 0) & ((y * y).sum(axis=1) == 0)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(both_flat, 1.0, 0.0))


def compare_maps(fp32: Path, converted: Path, spec: ModelSpec, data: Path | None,
                 limit: int = 32) -> MapCheck:
    """Both models' ``cam`` on up to ``limit`` cells of ``data`` (synthetic without)."""
    from leukoedge.errors import LeukoedgeError
    from leukoedge.session import SessionConfig, load_model

    from .parity import images_for

    x = images_for(spec, data, limit)[0]
    precision = spec.precision if spec.precision != "fp32" else "converted"
    ref = load_model(fp32, SessionConfig(provider="cpu"))
    a = np.concatenate([ref.run(x[i:i + 16], ("cam",))["cam"] for i in range(0, len(x), 16)])
    try:
        conv = load_model(converted, SessionConfig(provider="auto"))
        precision = conv.spec.precision
        b = np.concatenate([conv.run(x[i:i + 16], ("cam",))["cam"]
                            for i in range(0, len(x), 16)])
    except LeukoedgeError as exc:
        return MapCheck(precision, len(x), None, None, exc.message)
    r = map_correlations(a, b.astype(np.float64))
    return MapCheck(precision, len(x), float(np.median(r)), float(r.min()))


def require(check: MapCheck) -> None:
    """Refuse a converted model whose maps stray from fp32's (fp16 that cannot run here,
    e.g. on a CPU without its kernels, passes with the reason stated, as its logit does)."""
    if check.passed or (check.median_correlation is None and check.precision == "fp16"):
        return
    raise ExportError(f"{check.precision} export rejected: {check.line()}",
                      "nothing was written; export the map in fp32 (no --precision)")
