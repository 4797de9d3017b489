"""Parity: is the ONNX file the PyTorch model? Judged against a float64 oracle.

The same uint8 images go through three runs:

- the **oracle**: the PyTorch model in float64 (``copy.deepcopy(model).double()``, from the
  uint8 cast on: :class:`.models.Normalize` casts to its buffers' dtype), on the CPU;
- **PyTorch fp32** (eval, CPU) at batch 1 and at batch N;
- the **ONNX file** through the runtime's own loader (:func:`leukoedge.session.load_model`,
  so a model that passes is one ``classify`` accepts) at batch 1 and at batch N (a batch
  axis that is not really dynamic fails).

fp32 PyTorch is not the truth: on a deep network its own rounding error reaches 1e-4 and
more (ResNet50, logits of tens), so judging the ONNX file against it with a fixed
tolerance rejects correct exports. Instead the ONNX file is judged by its error against the
oracle, per image ``i``::

    |onnx_i - f64_i| <= max(K * max_j |fp32_j - f64_j|, FLOOR * (1 + |f64_i|))

The first term is earned by the model itself (how far float32 PyTorch, CPU, strays on the
same images, both batch sizes); the floor keeps a model whose PyTorch run happens to be
unusually exact from being held to less than float32 can give. K and FLOOR come from
measurements on both architectures (docs/training.md, "Parity"). A label that differs from
the oracle's fails, except for images whose oracle logit lies within the bound of the
threshold (named as near-threshold: rounding alone may flip them).

The oracle is slow (float64 ResNet50 at 224 px: about 1 s per image on 2 shared CPU
cores), so at most :data:`MAX_IMAGES` images are used, spread evenly over ``--data``; the
time the check took is reported. ``--provider cuda`` runs the ONNX side on the GPU with
onnxruntime's TF32 off (``use_tf32=0``); the bound is still earned by fp32 on the CPU.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from leukoedge.data import collect
from leukoedge.errors import ParityError
from leukoedge.preprocess import decode_for
from leukoedge.session import SessionConfig, cores, load_model
from leukoedge.spec import ModelSpec

from .dataset import load_images

K = 4.0  # ONNX may stray from float64 up to K times as far as PyTorch fp32 does
FLOOR = 1e-5  # ... and always by FLOOR * (1 + |logit|)
MAX_IMAGES = 64  # images per check (the float64 oracle is slow); spread over --data
SYNTHETIC_IMAGES = 32
WORST = 5  # worst images listed in the report


@dataclass
class WorstImage:
    name: str
    oracle_logit: float
    onnx_error: float  # |onnx - f64|, the larger of both batch sizes
    bound: float

    @property
    def ratio(self) -> float:
        return self.onnx_error / self.bound


@dataclass
class ParityResult:
    """What was compared, the three errors, the bound, and the verdict."""

    model: Path
    images: int
    source: str  # the folder the cells came from, or "synthetic"
    batch_sizes: tuple[int, ...]
    fp32_error: float  # max |fp32 - f64| over images and batch sizes: earns the bound
    onnx_error: float  # max |onnx - f64|
    onnx_fp32_diff: float  # max |onnx - fp32| (same batch size)
    mean_onnx_error: float
    bound_min: float  # the per-image bound, smallest and largest
    bound_max: float
    worst_ratio: float  # max over images of |onnx - f64| / bound (pass needs <= 1)
    max_abs_logit: float  # of the oracle
    passed: bool
    seconds: float  # the whole check: decoding, the three runs, the comparison
    oracle_seconds: float
    failures: list[str] = field(default_factory=list)  # names outside the bound
    label_flips: list[str] = field(default_factory=list)  # flips that fail
    near_threshold: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable files
    worst: list[WorstImage] = field(default_factory=list)
    available: int = 0  # images found before the cap
    k: float = K
    floor: float = FLOOR
    provider: str = "cpu"  # where the ONNX side ran
    tf32: str | None = None  # GPU providers: what was done about TF32
    cam: MapParity | None = None  # the heatmap output, judged the same way (if any)

    @property
    def max_abs_diff(self) -> float:
        """ONNX vs PyTorch fp32 (the figure earlier versions reported)."""
        return self.onnx_fp32_diff

    @property
    def capped(self) -> bool:
        return self.available > self.images

    def summary(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (f"parity {verdict}: {self.images} images ({self.source}), batches "
                f"{'/'.join(map(str, self.batch_sizes))}, |onnx - f64| {self.onnx_error:.3g} "
                f"= {self.worst_ratio:.3g}x the bound (fp32 vs f64 {self.fp32_error:.3g}, "
                f"bound max({self.k:g}x that, {self.floor:g}*(1+|logit|)))"
                + ("" if self.cam is None else
                   f"; cam {'x'.join(map(str, self.cam.shape))} |onnx - f64| "
                   f"{self.cam.onnx_error:.3g} = {self.cam.worst_ratio:.3g}x its bound"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (a non-finite error, from a NaN logit, becomes null)."""
        fields = {
            "passed": self.passed, "model": str(self.model), "images": self.images,
            "images_available": self.available, "image_cap": MAX_IMAGES,
            "source": self.source, "batch_sizes": list(self.batch_sizes),
            "provider": self.provider, "tf32": self.tf32,
            "errors": {"fp32_vs_oracle": self.fp32_error, "onnx_vs_oracle": self.onnx_error,
                       "onnx_vs_fp32": self.onnx_fp32_diff,
                       "onnx_vs_oracle_mean": self.mean_onnx_error},
            "bound": {"rule": "|onnx_i - f64_i| <= max(k * fp32_vs_oracle, "
                              "floor * (1 + |f64_i|))",
                      "k": self.k, "floor": self.floor, "min": self.bound_min,
                      "max": self.bound_max},
            "worst_ratio": self.worst_ratio, "max_abs_logit": self.max_abs_logit,
            "seconds": self.seconds, "oracle_seconds": self.oracle_seconds,
            "worst": [{"name": w.name, "oracle_logit": w.oracle_logit,
                       "onnx_error": w.onnx_error, "bound": w.bound, "ratio": w.ratio}
                      for w in self.worst],
            "outside_bound": self.failures, "label_flips": self.label_flips,
            "near_threshold": self.near_threshold, "skipped": self.skipped,
            "cam": None if self.cam is None else self.cam.as_dict(),
        }
        return {k: _finite(v) for k, v in fields.items()}


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def spread(n_total: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_total)`` (all of them when fewer)."""
    if n_total <= n:
        return list(range(n_total))
    return sorted(set(np.linspace(0, n_total - 1, n).round().astype(int).tolist()))


def images_for(spec: ModelSpec, data: Path | None, limit: int = MAX_IMAGES,
               synthetic: int = SYNTHETIC_IMAGES
               ) -> tuple[np.ndarray, list[str], str, list[str], int]:
    """uint8 batch, names, source description, unreadable files, images available."""
    if data is None:
        x, names, source, skipped = _synthetic(spec, min(synthetic, limit))
        return x, names, source, skipped, len(x)
    items = collect([data])
    picked = [items[i] for i in spread(len(items), limit)]
    loaded = load_images(picked, spec.input_size, spec.crop_fraction, spec.interpolation)
    if not loaded.items:
        raise ParityError(f"{data}: no readable image for the parity check")
    return (loaded.pixels, [str(it.path) for it in loaded.items], str(data),
            [why for _, why in loaded.skipped], len(items))


def _synthetic(spec: ModelSpec, n: int) -> tuple[np.ndarray, list[str], str, list[str]]:
    """``n`` cells of ``leukoedge.synth`` at 450 px, through the model's own preprocessing
    (uniform noise would not exercise the network the way cells do)."""
    from leukoedge.synth import sample_cells

    cells, labels = sample_cells(n, seed=2019)
    files: list[bytes] = []
    for rgb in cells:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="BMP")
        files.append(buf.getvalue())
    dec = decode_for(files, spec)
    names = [f"synthetic-{i}-{'all' if labels[i] else 'hem'}" for i in dec.kept]
    return dec.pixels, names, "synthetic", [why for _, why in dec.skipped]


def _run_all(model: torch.nn.Module, x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Every output of ``model`` over ``x`` (a model may return a tuple: logit first, then
    the further outputs its ``outputs`` attribute names), as float64 arrays."""
    parts: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            got = model(torch.from_numpy(x[i:i + batch]))
            got = got if isinstance(got, tuple) else (got,)
            if not parts:
                parts = [[] for _ in got]
            for k, t in enumerate(got):
                parts[k].append(t.double().numpy())
    return [np.concatenate(p) for p in parts] if parts else [np.zeros(0)]


def _run(model: torch.nn.Module, x: np.ndarray, batch: int) -> np.ndarray:
    return _run_all(model, x, batch)[0]


def torch_logits(model: torch.nn.Module, x: np.ndarray, batch: int) -> np.ndarray:
    """PyTorch fp32 on the CPU (eval), as float64 numbers."""
    return _run(model.eval().to("cpu").float(), x, batch)


def oracle_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """The float64 oracle: a float64 copy of ``model`` (eval, CPU); ``model`` is untouched."""
    m64 = copy.deepcopy(model).to("cpu").double().eval()
    try:
        return _run(m64, x, batch)
    finally:
        del m64


@dataclass
class Runs:
    """Logits of the three runs on the same images (float64 numbers)."""

    oracle: np.ndarray  # [n]
    fp32: np.ndarray  # [batch sizes, n]
    onnx: np.ndarray  # [batch sizes, n]
    batch_sizes: tuple[int, ...]
    oracle_seconds: float
    provider: str
    tf32: str | None
    #: the heatmap output ``cam`` of the three runs, when the model has one:
    #: oracle [n, h, w], fp32 and onnx [batch sizes, n, h, w]
    maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def run_all(onnx_path: Path, model: torch.nn.Module, x: np.ndarray, batch: int = 16,
            provider: str = "cpu") -> Runs:
    """``model`` may return several outputs (:class:`.cam.InGraph`); the logit is
    compared, and the ``cam`` output too when the model names one."""
    torch.set_num_threads(cores())
    sizes = tuple(sorted({1, batch}))
    names: tuple[str, ...] = getattr(model, "outputs", ("logit",))
    ci = names.index("cam") if "cam" in names else None
    t0 = time.perf_counter()
    m64 = copy.deepcopy(model).to("cpu").double().eval()
    try:
        oracle_all = _run_all(m64, x, batch)
    finally:
        del m64
    oracle = oracle_all[0]
    oracle_s = time.perf_counter() - t0
    model = model.eval().to("cpu").float()
    fp32_all = [_run_all(model, x, bs) for bs in sizes]
    fp32 = np.stack([f[0] for f in fp32_all])
    cfg = SessionConfig(provider=provider, cuda_tf32=False)
    m = load_model(onnx_path, cfg)
    want = ("logit", "cam") if ci is not None else ("logit",)
    onnx_all = []
    for bs in sizes:
        got = [m.run(x[i:i + bs], want) for i in range(0, len(x), bs)]
        onnx_all.append({n: np.concatenate([np.asarray(g[n], np.float64) for g in got])
                         for n in want})
    onnx = np.stack([o["logit"].reshape(len(x)) for o in onnx_all])
    maps = None
    if ci is not None:
        maps = (oracle_all[ci], np.stack([f[ci] for f in fp32_all]),
                np.stack([o["cam"] for o in onnx_all]))
    tf32 = None
    if m.provider == "cuda":
        tf32 = "off (CUDA provider use_tf32=0)"
    elif m.provider == "tensorrt":
        tf32 = ("off for nodes on CUDA (use_tf32=0); TensorRT's own kernels use its "
                "default, which allows TF32")
    return Runs(oracle, fp32, onnx, sizes, oracle_s, m.provider, tf32, maps)


@dataclass
class MapParity:
    """The ``cam`` output judged like the logit: per image, its largest element error
    against the oracle within ``max(K * fp32's largest map error, FLOOR * (1 + the
    image's largest |map value|))``."""

    shape: tuple[int, ...]  # of one image's map
    fp32_error: float
    onnx_error: float
    worst_ratio: float
    bound_min: float
    bound_max: float
    max_abs: float  # the oracle maps' largest |value|
    passed: bool
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "fp32_vs_oracle": self.fp32_error,
                "onnx_vs_oracle": self.onnx_error, "worst_ratio": self.worst_ratio,
                "bound": {"min": self.bound_min, "max": self.bound_max},
                "max_abs": self.max_abs, "passed": self.passed,
                "outside_bound": self.failures}


def judge_maps(oracle: np.ndarray, fp32: np.ndarray, onnx: np.ndarray, names: list[str],
               k: float = K, floor: float = FLOOR) -> MapParity:
    """``oracle`` [n, h, w]; ``fp32``, ``onnx`` [batch sizes, n, h, w]."""
    if onnx.shape != fp32.shape or not np.isfinite(oracle).all():
        return MapParity(tuple(onnx.shape[2:]), float("nan"), float("inf"), float("inf"),
                         0.0, 0.0, float("nan"), False, list(names))
    n = oracle.shape[0]
    fp32_err = float(np.abs(fp32 - oracle).max()) if n else 0.0
    err = np.abs(onnx - oracle).reshape(onnx.shape[0], n, -1).max(axis=(0, 2))
    err[~np.isfinite(err)] = np.inf
    scale = np.abs(oracle).reshape(n, -1).max(axis=1)
    bound = np.maximum(k * fp32_err, floor * (1.0 + scale))
    ratio = err / bound
    return MapParity(tuple(oracle.shape[1:]), fp32_err, float(err.max()),
                     float(ratio.max()), float(bound.min()), float(bound.max()),
                     float(scale.max()), bool((err <= bound).all()),
                     [names[i] for i in np.flatnonzero(err > bound)])


def judge(runs: Runs, names: list[str], threshold: float, k: float = K,
          floor: float = FLOOR) -> dict[str, Any]:
    """The rule (module docstring) applied to ``runs``; a dict of ParityResult fields."""
    f64 = runs.oracle
    if not (np.isfinite(f64).all() and np.isfinite(runs.fp32).all()):
        raise ParityError("the PyTorch model itself gives non-finite logits (NaN or inf) on "
                          "the parity images; there is nothing to compare the ONNX file with",
                          "check the checkpoint (leukoedge train wrote it?)")
    fp32_err = float(np.abs(runs.fp32 - f64).max())
    err = np.abs(runs.onnx - f64).max(axis=0)  # [n]: the worse batch size per image
    err[~np.isfinite(err)] = np.inf  # a NaN from the ONNX file is never within a bound
    bound = np.maximum(k * fp32_err, floor * (1.0 + np.abs(f64)))
    ratio = err / bound
    outside = err > bound
    label = f64 >= threshold
    flipped = ((runs.onnx >= threshold) != label).any(axis=0)
    near = np.abs(f64 - threshold) <= bound
    bad_flip = flipped & ~near
    order = np.argsort(-ratio)[:WORST]
    return {
        "fp32_error": fp32_err, "onnx_error": float(err.max()),
        "onnx_fp32_diff": float(np.abs(runs.onnx - runs.fp32).max()),
        "mean_onnx_error": float(err.mean()),
        "bound_min": float(bound.min()), "bound_max": float(bound.max()),
        "worst_ratio": float(ratio.max()), "max_abs_logit": float(np.abs(f64).max()),
        "passed": not outside.any() and not bad_flip.any(),
        "failures": [names[i] for i in np.flatnonzero(outside)],
        "label_flips": [names[i] for i in np.flatnonzero(bad_flip)],
        "near_threshold": [names[i] for i in np.flatnonzero(near)],
        "worst": [WorstImage(names[i], float(f64[i]), float(err[i]), float(bound[i]))
                  for i in order],
    }


def check(onnx_path: Path, model: torch.nn.Module, spec: ModelSpec,
          data: Path | None = None, batch: int = 16, limit: int = MAX_IMAGES,
          provider: str = "cpu") -> ParityResult:
    """Judge the ONNX file against the float64 oracle of ``model`` on the same images.

    ``provider`` runs the ONNX side elsewhere (``cuda`` on a GPU machine, TF32 off); the
    oracle and PyTorch fp32 stay on the CPU."""
    t0 = time.perf_counter()
    x, names, source, skipped, available = images_for(spec, data, limit)
    runs = run_all(onnx_path, model, x, batch, provider)
    verdict = judge(runs, names, spec.logit_threshold)
    if runs.maps is not None:
        verdict["cam"] = judge_maps(*runs.maps, names)
        verdict["passed"] = verdict["passed"] and verdict["cam"].passed
        verdict["failures"] += [f for f in verdict["cam"].failures
                                if f not in verdict["failures"]]
    return ParityResult(
        model=onnx_path, images=len(x), source=source, batch_sizes=runs.batch_sizes,
        seconds=time.perf_counter() - t0, oracle_seconds=runs.oracle_seconds,
        skipped=skipped, available=available, provider=runs.provider, tf32=runs.tf32,
        **verdict)


def reference(model: torch.nn.Module, spec: ModelSpec) -> torch.nn.Module:
    """What a file with ``spec`` computes, in PyTorch: the oracle's model. ``export`` builds
    its graph with this function and ``parity`` rebuilds it from the file's spec, so the
    two judge a file against the same computation. The bare model when the file holds
    neither a map nor test-time symmetries (a ``features`` output alone is not compared
    here); otherwise :class:`.cam.InGraph` with the spec's outputs and symmetry group."""
    from . import cam as cam_mod

    outputs = tuple(spec.outputs)
    if spec.tta == "none" and "cam" not in outputs:
        unknown = [o for o in outputs[1:] if o != "features"]
        if unknown:
            raise ParityError(f"the model has outputs {', '.join(outputs)}; parity knows "
                              "logit, features and cam",
                              "export it with this version's 'leukoedge export'")
        return model
    if spec.tta not in cam_mod.GROUPS:
        raise ParityError(f"the model averages over test-time symmetries {spec.tta!r}, "
                          f"which this version does not know (it knows "
                          f"{', '.join(cam_mod.GROUPS)})", "upgrade leukoedge")
    graph = cam_mod.InGraph(model, cam="cam" in outputs, features="features" in outputs,
                            tta=spec.tta)
    if graph.outputs != outputs:
        raise ParityError(f"the model has outputs {', '.join(outputs)}; export writes "
                          f"{', '.join(graph.outputs)} for these options",
                          "export it with this version's 'leukoedge export'")
    return graph.eval()


def file_spec(onnx_path: Path) -> ModelSpec:
    """The spec inside the ONNX file (read without running it)."""
    from leukoedge.inspect_model import load_onnx
    from leukoedge.session import read_spec_from_metadata

    proto = load_onnx(onnx_path)
    return read_spec_from_metadata({p.key: p.value for p in proto.metadata_props},
                                   str(onnx_path))


def check_checkpoint(onnx_path: Path, ckpt_path: Path, data: Path | None = None,
                     batch: int = 16, provider: str = "cpu") -> ParityResult:
    """Parity of an ONNX file against a checkpoint. The checkpoint's spec decides the
    preprocessing; the file's spec decides what is compared (:func:`reference`: its map
    and its test-time symmetries, as ``export`` built them)."""
    from . import checkpoint as ckpt_io

    ckpt = ckpt_io.load(ckpt_path)
    model = reference(ckpt_io.model_of(ckpt), file_spec(onnx_path))
    return check(onnx_path, model, ckpt_io.spec_of(ckpt), data, batch, provider=provider)
