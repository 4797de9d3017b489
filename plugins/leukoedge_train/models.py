"""Model registry: architecture name -> builder, and the uint8-in, logit-out wrapper.

Every model leukoedge trains is a :class:`Normalize` around a backbone: it takes the
deployment input (uint8 ``[N, H, W, 3]`` RGB) and does the cast, ``/255``, mean/std
normalisation and NHWC -> NCHW transpose inside ``forward``, so the exported ONNX graph
does exactly what training did. It returns one logit per image, ``[N]``.

``create_model(name, ...)`` is the only way in; an unknown name fails with the list of
known ones (the timm habit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from leukoedge.errors import TrainingError, UsageError, first_line

from . import lite0, pretrained
from .defaults import DEFAULTS
from .registry import pick

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """uint8 NHWC RGB -> float NCHW ``(x/255 - mean)/std`` -> backbone -> logit ``[N]``.

    Scale and shift are folded into two buffers (one Mul and one Add in the graph).

    ``colour_norm="greyworld"`` first divides each channel of each image by that channel's
    mean over the cell's own pixels (those whose channel sum exceeds :data:`CELL_LEVEL`;
    the black background stays 0) and multiplies by :data:`GREYWORLD_LEVEL`: a per-cell
    stain normalisation inside the graph, so training and deployment do exactly the same
    thing. It removes a slide's overall stain colour and brightness and keeps the contrast
    within the cell.
    """

    scale: torch.Tensor  # buffers: 1 / (255 std) and -mean / std, [1, 3, 1, 1]
    shift: torch.Tensor

    def __init__(self, net: nn.Module, mean: tuple[float, float, float],
                 std: tuple[float, float, float], colour_norm: str = "none") -> None:
        super().__init__()
        if colour_norm not in COLOUR_NORMS:
            raise UsageError(f"--colour-norm {colour_norm!r} is unknown",
                             f"choose one of {', '.join(COLOUR_NORMS)}")
        self.net = net
        self.colour_norm = colour_norm
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s))
        self.register_buffer("shift", -m / s)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logit: torch.Tensor = self.net(self.prepare(image))
        return logit.reshape(-1)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> the backbone's normalised float NCHW input."""
        # cast to the buffers' dtype: float32 normally, float64 in the parity oracle
        # (``copy.deepcopy(model).double()``), so the oracle is float64 from the input on
        x = image.permute(0, 3, 1, 2).to(self.scale.dtype)
        if self.colour_norm == "greyworld":
            x = greyworld(x)
        return x * self.scale + self.shift


class WithFeatures(nn.Module):
    """The same model with a second output: its penultimate features ``[N, d]`` (the input
    of the last linear layer, the one that makes the logit). Outputs ``(logit [N],
    features [N, d])``; the logit is computed exactly as :class:`Normalize` computes it.
    The drift score (``leukoedge.drift``) describes the training cells by these features.
    """

    outputs = ("logit", "features")  # the exported graph's output names, in order

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        import copy

        if not isinstance(model, Normalize):
            raise TrainingError("a features output needs a leukoedge model (Normalize)")
        self.model = copy.deepcopy(model)
        last = [(n, m) for n, m in self.model.net.named_modules() if isinstance(m, nn.Linear)]
        if not last or last[-1][1].out_features != 1:
            raise TrainingError("cannot find the model's final one-logit linear layer")
        name, linear = last[-1]
        self.last = linear
        parent = self.model.net.get_submodule(name.rpartition(".")[0]) if "." in name \
            else self.model.net
        setattr(parent, name.rpartition(".")[2], nn.Identity())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.net(self.model.prepare(image)).flatten(1)
        return self.last(feats).reshape(-1), feats


COLOUR_NORMS = ("none", "greyworld")
#: A pixel belongs to the cell when its R+G+B (0-765) exceeds this.
CELL_LEVEL = 30.0
#: Each channel's mean over the cell is mapped to this level (0-255 scale).
GREYWORLD_LEVEL = 128.0


def greyworld(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel: ``x * GREYWORLD_LEVEL / mean(x over cell pixels)``, with the
    background set to 0; NCHW float on the 0-255 scale in and out. Ordinary operators only
    (ReduceSum, Div, Mul: it exports to ONNX)."""
    mask = (x.sum(dim=1, keepdim=True) > CELL_LEVEL).to(x.dtype)
    area = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * mask).sum(dim=(2, 3), keepdim=True) / area
    return x * mask * (GREYWORLD_LEVEL / mean.clamp_min(1.0))


def _conv_block(c_in: int, c_out: int, convs: int, batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers.append(nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1,
                                bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ScratchNet(nn.Module):
    """The seed's CNN, made sound: four conv blocks (32; 64, 64; 128, 128; 256, 256 filters
    of 3x3, 'same' padding), each followed by a 2x2 max-pool; flatten; three dense layers
    (``dense`` widths) each with ReLU and dropout; one logit.

    ``batchnorm`` puts a BatchNorm after every conv (convs then have no bias); without it
    the network is the seed's plain conv + ReLU stack.

    ``width`` scales every filter count (0.5 = 16, 32, 64, 128: a quarter of the work);
    ``head="gap"`` global-average-pools the last block instead of flattening it, so the
    dense layers see what the cell contains rather than where (and have 64x fewer inputs
    at 128 px). The seed's network is ``width=1, head="flatten"``.
    """

    FILTERS = (32, 64, 128, 256)
    CONVS = (1, 2, 2, 2)

    def __init__(self, input_size: int, dense: Sequence[int] = (256, 128, 64),
                 dropout: float = 0.5, batchnorm: bool = True, width: float = 1.0,
                 head: str = "flatten") -> None:
        super().__init__()
        if input_size < 16:
            raise UsageError(f"scratch needs an input size of at least 16, got {input_size}",
                             "four 2x2 max-pools halve the image four times")
        if head not in SCRATCH_HEADS:
            raise UsageError(f"--head {head!r} is unknown",
                             f"choose one of {', '.join(SCRATCH_HEADS)}")
        if not 0.1 <= width <= 4.0:
            raise UsageError(f"--width must be in 0.1..4, got {width}")
        filters = [max(4, int(round(f * width))) for f in self.FILTERS]
        blocks = []
        c_in = 3
        for c_out, n in zip(filters, self.CONVS):
            blocks.append(_conv_block(c_in, c_out, n, batchnorm))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        side = input_size
        for _ in self.FILTERS:
            side //= 2
        flat = filters[-1] * (1 if head == "gap" else side * side)
        head_layers: list[nn.Module] = (
            [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if head == "gap" else [nn.Flatten()])
        head_: list[nn.Module] = head_layers
        n_in = flat
        for w in dense:
            head_ += [nn.Linear(n_in, w), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            n_in = w
        head_.append(nn.Linear(n_in, 1))
        self.head = nn.Sequential(*head_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit: torch.Tensor = self.head(self.features(x))
        return logit


@dataclass(frozen=True)
class ArchInfo:
    """What an architecture needs besides its weights: the data side of the contract."""

    name: str
    build: Callable[..., nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    description: str = ""
    #: only for an architecture the defaults table (:mod:`.defaults`) lacks; the table's
    #: architectures take their input size from it (one source)
    input_size: int | None = None

    @property
    def default_input_size(self) -> int:
        """The input size a model gets when none is asked for: the defaults table's."""
        row = DEFAULTS.get(self.name)
        if row is not None:
            return row.input_size
        if self.input_size is None:
            raise UsageError(f"architecture {self.name!r} has no default input size",
                             "give --input-size")
        return self.input_size


SCRATCH_HEADS = ("flatten", "gap")


def _build_scratch(input_size: int, dense: Sequence[int] = (256, 128, 64),
                   dropout: float = 0.5, batchnorm: bool = True, width: float = 1.0,
                   head: str = "flatten", **_: Any) -> nn.Module:
    return ScratchNet(input_size, tuple(dense), dropout, batchnorm, width, head)


def _build_resnet50(input_size: int, **_: Any) -> nn.Module:
    from torchvision.models import resnet50

    if input_size < 32:
        raise UsageError(f"resnet50 needs an input size of at least 32, got {input_size}")
    net = resnet50(weights=None)
    net.fc = nn.Linear(net.fc.in_features, 1)
    built: nn.Module = net  # torchvision's ResNet (torchvision ships no type information)
    return built


_REGISTRY: dict[str, ArchInfo] = {}


def register(info: ArchInfo) -> None:
    _REGISTRY[info.name] = info


register(ArchInfo("scratch", _build_scratch, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                  description="the seed's 4-block CNN with batch norm"))
register(ArchInfo("resnet50", _build_resnet50, IMAGENET_MEAN, IMAGENET_STD,
                  description="torchvision ResNet50, one-logit head"))
register(ArchInfo("lite0", lite0.build, lite0.MEAN, lite0.STD,
                  description="EfficientNet-Lite0 (ImageNet weights from "
                              f"{pretrained.PACKAGE}), one-logit head"))


def known() -> list[str]:
    return sorted(_REGISTRY)


def arch_info(name: str) -> ArchInfo:
    return pick(_REGISTRY, name, "architecture")


def create_model(name: str, input_size: int | None = None, **kwargs: Any) -> Normalize:
    """The wrapped model (uint8 NHWC in, logit out) for architecture ``name``."""
    info = arch_info(name)
    colour_norm = kwargs.pop("colour_norm", "none")
    net = info.build(input_size or info.default_input_size, **kwargs)
    return Normalize(net, info.mean, info.std, colour_norm)


# -- pretrained weights ------------------------------------------------------------------

class PretrainedWeights(Protocol):
    """What is used of a torchvision ``WeightsEnum`` member (torchvision ships no type
    information): its name, its file's URL, and the download into torch's hub cache."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...

    def get_state_dict(self, progress: bool) -> dict[str, torch.Tensor]: ...


def _resnet50_imagenet() -> PretrainedWeights:
    from torchvision.models import ResNet50_Weights

    weights: PretrainedWeights = ResNet50_Weights.IMAGENET1K_V2
    return weights


def imagenet_cache_path(weights: PretrainedWeights) -> Path:
    """Where torch's hub cache keeps ``weights``' file: ``$TORCH_HOME/hub/checkpoints``."""
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / Path(weights.url).name


def _network_problem(url: str, timeout: float = 5.0) -> str | None:
    """Why ``url``'s host cannot be reached right now (DNS, connect), or None."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    host = u.hostname or ""
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host} is unreachable: {exc.strerror or exc}"


def _download_state_dict(weights: PretrainedWeights, dest: Path) -> dict[str, torch.Tensor]:
    import socket
    import urllib.error

    problem = _network_problem(weights.url)
    if problem is None:
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60.0)
        try:
            return weights.get_state_dict(progress=False)
        except (urllib.error.URLError, OSError) as exc:  # URLError is an OSError too
            problem = f"download failed: {exc}"
        finally:
            socket.setdefaulttimeout(old)
    raise TrainingError(
        f"ImageNet weights for resnet50 are not in the torch cache ({dest}) and cannot be "
        f"downloaded ({problem})",
        f"download {weights.url} where there is network and put it at {dest} "
        "(the folder follows $TORCH_HOME), or pass --weights FILE or --weights none")


def load_backbone_weights(model: Normalize, name: str, weights: str) -> str:
    """Put ``weights`` (``imagenet``, ``none`` or a state-dict file) into ``model``'s
    backbone; return a one-line description of what was loaded."""
    if weights == "none":
        return "random initialisation"
    if name == "lite0":
        return _load_lite0(model, weights)
    if name != "resnet50":
        raise UsageError(f"--weights {weights} is for resnet50 and lite0; scratch starts "
                         "from random weights")
    net = model.net
    if weights == "imagenet":
        w = _resnet50_imagenet()
        dest = imagenet_cache_path(w)
        if dest.is_file():
            state = _load_state_file(dest)
        else:
            state = _download_state_dict(w, dest)
        source = f"ImageNet ({w.name}, {dest.name})"
    else:
        state = _load_state_file(_user_file(weights))
        source = str(weights)
    state = _unwrap_state(state)
    own = net.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise TrainingError(
            f"{source} does not fit resnet50: {len(missing)} missing and "
            f"{len(result.unexpected_keys)} unexpected tensors (e.g. "
            f"{(missing + list(result.unexpected_keys))[0]})",
            "pass a torchvision resnet50 state dict")
    return source + (f"; new head ({', '.join(skipped)} not loaded)" if skipped else "")


def _user_file(weights: str) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise UsageError(f"--weights {weights}: no such file",
                         "use imagenet, none, or a state-dict file")
    return path


def _load_lite0(model: Normalize, weights: str) -> str:
    """lite0: the package's pinned file (``imagenet``) or a user's file, every key but
    ``_fc.*`` present with its shape (:func:`.pretrained.check_keys`), loaded strictly."""
    if weights == "imagenet":
        path = pretrained.package_file()
        digest = pretrained.check_hash(path)
        source = (f"ImageNet ({pretrained.PACKAGE} {pretrained.PACKAGE_VERSION}, "
                  f"{path.name}, sha256 {digest})")
    else:
        path = _user_file(weights)
        source = f"{weights} (sha256 {pretrained.file_sha256(path)})"
    state = _unwrap_state(_load_state_file(path))
    own = model.net.state_dict()
    state = pretrained.check_keys(own, state, str(weights if weights != "imagenet" else path))
    result = model.net.load_state_dict(state, strict=False)
    assert all(k.startswith("_fc.") for k in result.missing_keys), result.missing_keys
    return source + "; new one-logit head (_fc)"


def _load_state_file(path: Path) -> object:
    """Whatever the weights-only unpickler reads from ``path`` (:func:`_unwrap_state`
    finds the state dict in it)."""
    import pickle

    try:
        state: object = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise TrainingError(f"{path}: cannot read as a weights-only state dict "
                            f"({first_line(exc)})") from exc
    return state


def _unwrap_state(state: object) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TrainingError("weights file does not hold a state dict")
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "net."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


# -- freezing (two-stage fine-tuning) ----------------------------------------------------

RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")
UNFREEZE_CHOICES = ("all", "layer1", "layer2", "layer3", "layer4", "fc")


def trainable_prefixes(name: str, unfreeze: str) -> tuple[str, ...] | None:
    """Backbone module prefixes trained in the fine-tuning stage; None means all.

    ``layer3`` trains ``layer3``, ``layer4`` and ``fc``: Keras' "top 125 of ResNet50's 175
    layers" starts at ``conv4_block1``, which is torchvision's ``layer3``. lite0's stages
    are in :func:`.lite0.trainable`.
    """
    if name == "lite0":
        return lite0.trainable(unfreeze)
    if name != "resnet50" or unfreeze == "all":
        return None
    if unfreeze not in UNFREEZE_CHOICES:
        raise UsageError(f"--unfreeze {unfreeze!r} is unknown",
                         f"choose one of {', '.join(UNFREEZE_CHOICES)}")
    start = RESNET_STAGES.index(unfreeze)
    return RESNET_STAGES[start:]


def head_prefixes(name: str) -> tuple[str, ...]:
    return {"resnet50": ("fc",), "lite0": ("_fc",)}.get(name, ("head",))


def set_trainable(model: Normalize, prefixes: tuple[str, ...] | None) -> list[nn.Module]:
    """Freeze every backbone parameter outside ``prefixes`` (None = train all); return
    the frozen BatchNorm layers, which must stay in eval mode while training."""
    frozen_bn: list[nn.Module] = []
    for mod_name, module in model.net.named_modules():
        if not mod_name:
            continue
        inside = prefixes is None or any(
            mod_name == p or mod_name.startswith(p + ".") for p in prefixes)
        for p in module.parameters(recurse=False):
            p.requires_grad_(inside)
        if not inside and isinstance(module, nn.modules.batchnorm._BatchNorm):
            frozen_bn.append(module)
    return frozen_bn
