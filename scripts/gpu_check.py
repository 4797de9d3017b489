#!/usr/bin/env python3
"""The prepared check for a lent GPU machine (issue 33: the CUDA path, run for real).

A ranked list of steps (:data:`STEPS`), most valuable first. Each step has its own
timeout and writes the raw output of its commands to its own file under ``--out`` as they
run (``NN-name.log``), so a step that fails, hangs or is killed loses nothing of the steps
before it; ``summary.md`` / ``summary.json`` are rewritten after every step, and a step
that does not run is listed as "not measured" with the reason. A whole-run budget
(``--budget``) stops starting steps that no longer fit.

On the device machine (see the project's shared DESIGN.md, "The GPU machine"; the steps to carry
the onnxruntime-gpu wheel in pieces are in docs/performance.md)::

    python3 scripts/gpu_check.py run --out "$OUT" --wheel-pieces . --cells .gpucells

Here, the CPU dry run: the same commands with ``--provider cpu`` / ``--device cpu``, tiny
sizes and synthetic cells from ``leukoedge synth`` (what ``tests/test_gpu_check.py`` runs)::

    python scripts/gpu_check.py run --dry-run --out /tmp/gpu-dry

Other subcommands: ``pick-cells`` (choose ~500 real cells, spread over patients, into a
folder to carry), and two helpers the steps call in a child process: ``compare`` (two
classify results under the flip rule) and ``iobench`` (IO binding with the input already
on the device, and PyTorch on the same device).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "leukoedge" / "models" / "default.onnx"
IMAGE_EXTS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
ALL_ARCHS = ("scratch", "resnet50", "lite0")
#: classify on the GPU runs with onnxruntime's TF32 on (what users get); its logits may
#: differ from the CPU's by rounding. A cell passes when |gpu - cpu| <= TF32_REL * (1 +
#: |cpu|); a label flip can then only happen within that bound of the threshold. A chosen
#: tolerance (about 20 units of TF32's rounding, 2^-11), not a measured one: the summary
#: gives the largest difference seen, so the figure can be judged on its own.
TF32_REL = 1e-2
SETUP_TIMEOUT = 90.0  # join + install the wheel, machine facts


# -- what a run is --------------------------------------------------------------------------

@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    synth_patients: int
    synth_cells: int
    synth_size: int
    cells_patients: int  # synthetic stand-ins for real cells (dry run, or none carried)
    cells_per_patient: int
    cells_size: int
    input_size: dict[str, int]
    batch_size: int
    bench_batches: str
    bench_seconds: float
    bench_files: int
    amp_epochs: int
    amp_on_cells: bool  # AMP fine-tune on the real cells (else on the small training set)


GPU_SIZES = Sizes(12, 20, 450, 25, 20, 450, {"scratch": 128, "resnet50": 224, "lite0": 128},
                  32, "32,256", 2.0, 1000, 3, True)
DRY_SIZES = Sizes(4, 4, 64, 25, 20, 64, {"scratch": 32, "resnet50": 32, "lite0": 32},
                  4, "2,4", 0.02, 8, 2, False)


@dataclass
class Ctx:
    out: Path
    work: Path
    le: list[str]  # how to run leukoedge
    py: str
    dry: bool
    provider: str  # the GPU provider, or cpu in the dry run
    device: str
    sizes: Sizes
    archs: list[str]
    bench_arch: str
    cells: Path | None  # real cells (None: synthetic stand-ins, made by the data step)
    deadline: float
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    providers: dict[str, str] = field(default_factory=dict)  # from doctor --json
    cells_note: str = ""

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class StepLog:
    """One step's raw output file, and what the summary should say about it."""

    path: Path
    facts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    deadline: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def fact(self, text: str) -> None:
        self.facts.append(text)
        self.write(f"# {text}")

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.write(f"# FAILED: {text}")


class StepTimeout(Exception):
    pass


def sh(ctx: Ctx, log: StepLog, cmd: Sequence[str], *, stdout: Path | None = None,
       env: dict[str, str] | None = None, check: bool = True) -> tuple[int, float]:
    """Run ``cmd`` in the work folder; its output goes to the step's file as it comes
    (stdout to ``stdout`` instead when given, then appended). Killed, with its process
    group, at the step's deadline. A non-zero exit is recorded as a failure when
    ``check``. Returns (exit code, seconds)."""
    cmd = [str(c) for c in cmd]
    log.write(f"\n$ {shlex.join(cmd)}")
    limit = log.deadline - time.monotonic()
    if limit <= 1:
        raise StepTimeout("no time left for " + shlex.join(cmd[:4]))
    t0 = time.monotonic()
    with log.path.open("a") as errf, (stdout.open("w") if stdout else log.path.open("a")) as outf:
        proc = subprocess.Popen(cmd, cwd=ctx.work, stdout=outf, stderr=errf,
                                env=env or ctx.env, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill(proc)
            log.write(f"--- killed at the step's timeout after {time.monotonic() - t0:.1f} s")
            raise StepTimeout(f"timed out in `{shlex.join(cmd[:6])}`") from None
    wall = time.monotonic() - t0
    if stdout is not None:
        log.write(stdout.read_text(errors="replace"))
    log.write(f"--- rc={rc} wall={wall:.2f} s")
    if rc != 0 and check:
        log.fail(f"rc={rc}: {shlex.join(cmd[:8])}")
    return rc, wall


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End the child and its process group (ours: started with a new session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def arch_flags(ctx: Ctx, arch: str) -> list[str]:
    flags = ["--input-size", str(ctx.sizes.input_size[arch]),
             "--batch-size", str(ctx.sizes.batch_size), "--device", ctx.device]
    if arch in ("resnet50", "lite0"):
        flags += ["--weights", "none"]  # no registry there; speed does not depend on them
    return flags


def model(ctx: Ctx, arch: str, precision: str = "fp32") -> Path:
    return ctx.work / "m" / (f"{arch}.onnx" if precision == "fp32" else f"{arch}_{precision}.onnx")


def need(ctx: Ctx, *paths: Path) -> None:
    missing = [str(p.relative_to(ctx.work)) for p in paths if not p.exists()]
    if missing:
        raise Skip(f"needs {', '.join(missing)} (an earlier step did not make it)")


class Skip(Exception):
    """The step cannot run here: recorded as not measured, with the reason."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- the steps --------------------------------------------------------------------------------

def step_doctor(ctx: Ctx, log: StepLog) -> None:
    sh(ctx, log, [*ctx.le, "doctor"])
    j = ctx.work / "doctor.json"
    sh(ctx, log, [*ctx.le, "doctor", "--json"], stdout=j)
    got = read_json(j) or {}
    ctx.providers = dict(got.get("providers", {}))
    for p in ("cpu", "cuda", "tensorrt"):
        log.fact(f"provider {p}: {ctx.providers.get(p, 'not reported')}")
    if ctx.providers.get(ctx.provider) != "ok":
        log.fail(f"{ctx.provider} does not run here: {ctx.providers.get(ctx.provider)}")


def step_data(ctx: Ctx, log: StepLog) -> None:
    s = ctx.sizes
    sh(ctx, log, [*ctx.le, "synth", "data", "--patients", s.synth_patients,
                  "--cells-per-patient", s.synth_cells, "--size", s.synth_size, "--seed", 0,
                  "--overwrite"])
    if ctx.cells is None:
        sh(ctx, log, [*ctx.le, "synth", "cells", "--patients", s.cells_patients,
                      "--cells-per-patient", s.cells_per_patient, "--size", s.cells_size,
                      "--seed", 7, "--overwrite"])
        ctx.cells = ctx.work / "cells"
    n = len(list_images(ctx.cells))
    log.fact(f"cells: {n} images in {ctx.cells.name}/, {ctx.cells_note}")
    if n == 0:
        log.fail(f"no images in {ctx.cells}")


def classify_pair(ctx: Ctx, log: StepLog, name: str, onnx: Path) -> None:
    assert ctx.cells is not None
    csvs = {}
    for side, p in (("cpu", "cpu"), ("gpu", ctx.provider)):  # the dry run: cpu twice
        csvs[side] = ctx.work / "cls" / f"{name}_{side}.csv"
        csvs[side].parent.mkdir(exist_ok=True)
        _, wall = sh(ctx, log, [*ctx.le, "classify", ctx.cells, "--model", onnx, "--provider", p,
                                "--batch-size", 256 if not ctx.dry else 8, "--out", csvs[side],
                                "--overwrite"])
        log.fact(f"{name}: classify --provider {p}: whole process {wall:.1f} s")
    cmp_json = ctx.out / f"compare_{name}.json"
    sh(ctx, log, [ctx.py, Path(__file__).resolve(), "compare", csvs["cpu"], csvs["gpu"],
                  "--model", onnx, "--json", cmp_json])
    c = read_json(cmp_json)
    if c:
        log.data[name] = c
        log.fact(f"{name}: {c['cells']} cells, labels agree {c['agree']}/{c['cells']}, "
                 f"flips {len(c['flips'])} (all within the bound of the threshold: "
                 f"{c['flips_within_bound']}), max |logit gpu - cpu| {c['max_abs_diff']:.3g}, "
                 f"max relative {c['max_rel_diff']:.3g} (bound {TF32_REL:g}*(1+|logit|)): "
                 f"{'pass' if c['passed'] else 'FAIL'}")
        if not c["passed"]:
            log.fail(f"{name}: CPU and {ctx.provider} disagree beyond the bound")


def step_classify_default(ctx: Ctx, log: StepLog) -> None:
    classify_pair(ctx, log, "default", DEFAULT_MODEL)


def step_train(ctx: Ctx, log: StepLog) -> None:
    for arch in ctx.archs:
        shutil.rmtree(ctx.work / "runs" / arch, ignore_errors=True)  # a rerun trains afresh
        _, wall = sh(ctx, log, [*ctx.le, "train", arch, "data", "--epochs", 1,
                                "--out", f"runs/{arch}", *arch_flags(ctx, arch)])
        log.fact(f"{arch}: 1 epoch on {ctx.device}, whole process {wall:.1f} s")


def step_export(ctx: Ctx, log: StepLog) -> None:
    assert ctx.cells is not None
    for arch in ctx.archs:
        need(ctx, ctx.work / "runs" / arch / "best.pt")
        rc, wall = sh(ctx, log, [*ctx.le, "export", f"runs/{arch}", "--out", model(ctx, arch),
                                 "--data", ctx.cells, "--overwrite"])
        log.fact(f"{arch}: fp32 export (parity on the CPU) rc={rc}, {wall:.1f} s")


def step_classify_big(ctx: Ctx, log: StepLog) -> None:
    need(ctx, model(ctx, ctx.bench_arch))
    classify_pair(ctx, log, ctx.bench_arch, model(ctx, ctx.bench_arch))


def step_parity(ctx: Ctx, log: StepLog) -> None:
    assert ctx.cells is not None
    for arch in ctx.archs:
        need(ctx, model(ctx, arch))
        j = ctx.out / f"parity_{arch}.json"
        rc, _ = sh(ctx, log, [*ctx.le, "parity", model(ctx, arch), f"runs/{arch}", "--data",
                              ctx.cells, "--provider", ctx.provider, "--json"], stdout=j)
        r = read_json(j) or {}
        log.fact(f"{arch}: parity on {r.get('provider', '?')} (TF32 {r.get('tf32')}): "
                 f"{'pass' if rc == 0 else 'FAIL'}, worst {r.get('worst_ratio', '?')} of the "
                 f"bound, label flips {r.get('label_flips', '?')}")


def step_fp16(ctx: Ctx, log: StepLog) -> None:
    assert ctx.cells is not None
    for arch in ctx.archs:
        need(ctx, ctx.work / "runs" / arch / "best.pt")
        j = ctx.out / f"fp16_{arch}.json"
        rc, _ = sh(ctx, log, [*ctx.le, "export", f"runs/{arch}", "--out", model(ctx, arch, "fp16"),
                              "--precision", "fp16", "--report-data", ctx.cells, "--overwrite",
                              "--json"], stdout=j, check=False)
        prec = (read_json(j) or {}).get("precision") or {}
        verdict = "exported" if rc == 0 else ("rejected by the gate" if rc == 3 else f"rc={rc}")
        log.fact(f"{arch}: fp16 {verdict}; agreement with fp32 {prec.get('agreement', '?')} on "
                 f"{prec.get('images', '?')} cells, run on {prec.get('provider', '?')}")
        if rc not in (0, 3):  # 3: the gate said no, which is a result, not a broken step
            log.fail(f"{arch}: fp16 export rc={rc}")


def step_bench(ctx: Ctx, log: StepLog) -> None:
    assert ctx.cells is not None
    s, arch = ctx.sizes, ctx.bench_arch
    fp32, fp16 = model(ctx, arch), model(ctx, arch, "fp16")
    need(ctx, fp32)
    versus = ["--versus", fp32] if fp16.exists() else []
    if not fp16.exists():
        log.fact(f"{arch} fp16: not measured (no fp16 export)")
    sh(ctx, log, [*ctx.le, "bench", fp16 if fp16.exists() else fp32, *versus,
                  "--provider", ctx.provider, "--batch-sizes", s.bench_batches,
                  "--data", ctx.cells, "--files", s.bench_files, "--seconds", s.bench_seconds,
                  "--json", ctx.out / f"bench_{arch}.json"])
    j = ctx.out / f"iobench_{arch}.json"
    models = [fp32, *([fp16] if fp16.exists() else [])]
    sh(ctx, log, [ctx.py, Path(__file__).resolve(), "iobench", *models,
                  "--checkpoint", ctx.work / "runs" / arch, "--cells", ctx.cells,
                  "--device", ctx.device, "--batch-sizes", s.bench_batches,
                  "--seconds", s.bench_seconds, "--json", j])
    for row in (read_json(j) or {}).get("rows", []):
        log.fact(f"{row['what']} batch {row['batch']}: {row['images_per_s']:.1f} images/s")


def step_tensorrt(ctx: Ctx, log: StepLog) -> None:
    assert ctx.cells is not None
    provider = "tensorrt"
    if ctx.dry:
        provider = "cpu"
        log.fact("dry run: the TensorRT commands run with --provider cpu")
    elif ctx.providers.get("tensorrt") != "ok":
        raise Skip(f"TensorRT does not run here: {ctx.providers.get('tensorrt', 'unknown')}")
    env = dict(ctx.env, XDG_CACHE_HOME=str(ctx.work / "trt-cache-home"))
    shutil.rmtree(ctx.work / "trt-cache-home", ignore_errors=True)
    for name, onnx in (("default", DEFAULT_MODEL), (ctx.bench_arch, model(ctx, ctx.bench_arch))):
        need(ctx, onnx)
        for run in ("first (engine built)", "second (engine from the cache)"):
            _, wall = sh(ctx, log, [*ctx.le, "classify", ctx.cells, "--model", onnx, "--provider",
                                    provider, "--out", f"cls/{name}_trt.csv", "--overwrite"],
                         env=env)
            log.fact(f"{name}: classify --provider {provider}, {run}: {wall:.1f} s")
    cache = ctx.work / "trt-cache-home" / "leukoedge" / "trt"  # session.DEFAULT_TRT_CACHE
    cached = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    log.write("# engine cache: " + (", ".join(cached) or "empty"))
    log.fact(f"engine cache files: {len(cached)}")


def step_amp(ctx: Ctx, log: StepLog) -> None:
    assert ctx.cells is not None
    for arch in ctx.archs:
        out = ctx.work / "runs" / f"amp_{arch}"
        shutil.rmtree(out, ignore_errors=True)
        data = ctx.cells if ctx.sizes.amp_on_cells else "data"
        sh(ctx, log, [*ctx.le, "train", arch, data, "--epochs", ctx.sizes.amp_epochs,
                      "--amp", "--out", out, *arch_flags(ctx, arch)])
        secs = epoch_seconds(out / "history.csv")
        log.data[arch] = secs
        log.fact(f"{arch}: AMP on {ctx.device}, seconds per epoch "
                 f"{', '.join(f'{x:.1f}' for x in secs) or 'none recorded'}")
        if not secs:
            log.fail(f"{arch}: no epoch times in {out.name}/history.csv")


def epoch_seconds(history: Path) -> list[float]:
    try:
        with history.open(newline="") as f:
            return [float(r["seconds"]) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError):
        return []


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    timeout: float  # seconds, on the GPU machine
    run: Callable[[Ctx, StepLog], None]
    always: bool = False  # runs even when --only leaves it out (later steps need its state)


#: In order of value; everything a later step needs is made by an earlier one.
STEPS: tuple[Step, ...] = (
    Step("doctor", "doctor: CUDA (and TensorRT) really load", 30, step_doctor, always=True),
    Step("data", "data: synthetic training cells; the real cells to classify", 20, step_data,
         always=True),
    Step("classify-default", "classify, default model: CPU vs GPU on the same ~500 cells", 45,
         step_classify_default),
    Step("train", "train each architecture 1 epoch on the GPU (for the next steps)", 60,
         step_train),
    Step("export", "export each architecture fp32 (parity on the CPU)", 75, step_export),
    Step("classify-big", "classify, the --bench-arch model (ResNet50): CPU vs GPU", 45,
         step_classify_big),
    Step("parity", "parity --provider cuda (TF32 off) for each architecture", 60, step_parity),
    Step("fp16", "fp16 export of each architecture and its agreement gate", 60, step_fp16),
    Step("bench", "bench ResNet50 fp32/fp16, batch 32 and 256: host copy, IO binding with the "
         "input on the GPU, PyTorch on the same GPU", 60, step_bench),
    Step("tensorrt", "classify --provider tensorrt, engine cache: first and second run", 90,
         step_tensorrt),
    Step("amp", "AMP fine-tune on the GPU: wall time per epoch", 60, step_amp),
)


# -- the driver -------------------------------------------------------------------------------

def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def find_leukoedge(given: str | None) -> list[str]:
    """``--leukoedge`` / $LEUKOEDGE, else ``leukoedge`` beside this Python (a venv), else on
    PATH, else ``python -m leukoedge``."""
    if given:
        return shlex.split(given)
    beside = Path(sys.executable).parent / "leukoedge"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("leukoedge")
    return [found] if found else [sys.executable, "-m", "leukoedge"]


def install_wheel(pieces_root: Path, sha256: str | None, log: StepLog, env: dict[str, str],
                  work: Path) -> None:
    """Join the carried pieces (``.ortgpu*/part.*``), check the sha256, install with
    ``--no-deps --target`` into ``.ortgpu-site`` (kept while the machine is warm), put the
    NVIDIA pip libraries on the loader path and this tree's package and plugin on
    PYTHONPATH (with a dist-info so the plugin's entry point is found)."""
    site = REPO / ".ortgpu-site"
    pieces = sorted(glob.glob(str(pieces_root / ".ortgpu*" / "part.*")),
                    key=lambda p: Path(p).name)
    marker = site / "INSTALLED_SHA256"
    if marker.exists() and (not sha256 or marker.read_text().strip() == sha256):
        log.fact(f"onnxruntime-gpu already installed in {site.name} (sha256 {marker.read_text().strip()[:12]}...)")
    elif not pieces:
        raise Skip(f"no wheel pieces ({pieces_root}/.ortgpu*/part.*) and nothing installed: "
                   "carry them first")
    else:
        wheel = work / "wheel" / (env.get("ORT_GPU_WHEEL") or
                                       "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64."
                                       "manylinux_2_28_x86_64.whl")
        wheel.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with wheel.open("wb") as w:
            for p in pieces:
                b = Path(p).read_bytes()
                h.update(b)
                w.write(b)
        got = h.hexdigest()
        log.fact(f"wheel: {len(pieces)} pieces, sha256 {got}")
        if sha256 and got != sha256:
            raise Skip(f"sha256 mismatch (expected {sha256}): a piece is missing or stale")
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                                "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                                "--target", str(site), str(wheel)], capture_output=True,
                               text=True, timeout=max(1.0, log.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise Skip("pip install of the wheel did not finish in the setup's time") from None
        log.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise Skip(f"pip install of the wheel failed (rc={r.returncode})")
        marker.write_text(got)
    dist = site / "leukoedge-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: leukoedge\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[leukoedge.plugins]\ntrain = leukoedge_train.plugin\n")
    libs: set[str] = set()
    try:
        import nvidia  # type: ignore

        for base in list(nvidia.__path__):
            for lib in glob.glob(os.path.join(base, "**", "lib"), recursive=True):
                if glob.glob(os.path.join(lib, "*.so*")):
                    libs.add(lib)
    except ImportError:
        log.fact("no NVIDIA pip libraries found (import nvidia failed)")
    env["LD_LIBRARY_PATH"] = ":".join([*sorted(libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PYTHONPATH"] = ":".join([str(site), str(REPO), str(REPO / "plugins"),
                                  *filter(None, [env.get("PYTHONPATH")])])


def machine_info(ctx: Ctx, log: StepLog) -> None:
    cmds = [["uname", "-a"], ["nproc"],
            [ctx.py, "-c", "import onnxruntime as o, torch; print('onnxruntime', o.__version__, "
             "o.get_available_providers()); print('torch', torch.__version__, "
             "torch.cuda.is_available())"]]
    if shutil.which("nvidia-smi"):
        cmds.insert(0, ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                        "--format=csv,noheader"])
    for c in cmds:
        sh(ctx, log, c, check=False)


def write_summary(ctx: Ctx, results: list[dict[str, Any]]) -> None:
    head = ("# GPU check: summary\n\n"
            f"mode: {'CPU dry run (--provider cpu / --device cpu, tiny sizes, synthetic cells)' if ctx.dry else 'GPU'}; "
            f"provider {ctx.provider}, device {ctx.device}; architectures {', '.join(ctx.archs)}; "
            f"bench architecture {ctx.bench_arch}; cells: {ctx.cells_note}\n\n"
            "| # | step | timeout s | status | wall s | file |\n|---|---|---|---|---|---|\n")
    rows, details = [], []
    for r in results:
        rows.append(f"| {r['rank']} | {r['name']} | {r['timeout']:g} | {r['status']} | "
                    f"{'-' if r['wall'] is None else round(r['wall'], 1)} | {r['file']} |")
        if r["facts"]:
            details.append(f"\n## {r['rank']}. {r['title']}\n\n" +
                           "\n".join(f"- {f}" for f in r["facts"]))
    (ctx.out / "summary.md").write_text(head + "\n".join(rows) + "\n" + "\n".join(details) + "\n")
    (ctx.out / "summary.json").write_text(json.dumps(
        {"dry_run": ctx.dry, "provider": ctx.provider, "device": ctx.device,
         "archs": ctx.archs, "bench_arch": ctx.bench_arch, "steps": results}, indent=1))


def cmd_run(a: argparse.Namespace) -> int:
    archs = [x.strip() for x in a.archs.split(",") if x.strip()]
    bad = [x for x in archs if x not in ALL_ARCHS]
    if bad or not archs:
        return die(f"--archs: unknown {', '.join(bad) or '(none given)'}; "
                   f"choose from {', '.join(ALL_ARCHS)}")
    if a.bench_arch not in archs:
        return die(f"--bench-arch {a.bench_arch} is not among --archs ({', '.join(archs)})")
    if a.cells is not None and not a.cells.is_dir():
        return die(f"--cells {a.cells}: not a folder")
    names = [s.name for s in STEPS]
    only = [x.strip() for x in a.only.split(",")] if a.only else names
    if [x for x in only if x not in names]:
        return die(f"--only: unknown step(s) {', '.join(x for x in only if x not in names)}; "
                   f"steps: {', '.join(names)}")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # not under --out: the models (ResNet50 fp32: ~94 MB) must not travel back
    work = (a.work or Path(tempfile.gettempdir()) / "leukoedge-gpu-check-work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = DRY_SIZES if a.dry_run else GPU_SIZES
    budget = a.budget if a.budget is not None else (3600.0 if a.dry_run else 300.0)
    # the dry run checks plumbing on a shared 2-core machine: its timeouts only catch hangs
    scale = a.timeout_scale if a.timeout_scale else (20.0 if a.dry_run else 1.0)
    ctx = Ctx(out=out, work=work, le=find_leukoedge(a.leukoedge), py=sys.executable,
              dry=a.dry_run, provider="cpu" if a.dry_run else a.provider,
              device="cpu" if a.dry_run else "cuda", sizes=sizes, archs=archs,
              bench_arch=a.bench_arch, cells=a.cells.resolve() if a.cells else None,
              deadline=time.monotonic() + budget,
              cells_note="real (--cells)" if a.cells else "none given: synthetic stand-ins")
    ctx.env["PYTHONUNBUFFERED"] = "1"
    ctx.env["COLUMNS"] = "120"
    if a.dry_run:
        # the check's own pass/fail rules must not see this machine's CUDA (there is none)
        ctx.env["CUDA_VISIBLE_DEVICES"] = ""
    results: list[dict[str, Any]] = []

    setup = StepLog(out / "00-setup.log", deadline=time.monotonic() + min(SETUP_TIMEOUT, budget))
    setup.path.write_text("")
    status = "ok"
    t_setup = time.monotonic()
    try:
        if a.dry_run or a.no_install:
            setup.fact(f"{'dry run: ' if a.dry_run else ''}no wheel installed (this "
                       f"environment's onnxruntime); leukoedge: {shlex.join(ctx.le)}")
        else:
            install_wheel(a.wheel_pieces.resolve(), a.wheel_sha256, setup, ctx.env, work)
            ctx.le = find_leukoedge(a.leukoedge) if a.leukoedge else [sys.executable, "-m", "leukoedge"]
        machine_info(ctx, setup)
    except (Skip, StepTimeout, OSError) as exc:
        setup.fail(str(exc))
        status = f"FAILED: {exc}"
    results.append({"rank": 0, "name": "setup", "title": "setup", "timeout": SETUP_TIMEOUT,
                    "status": status, "wall": time.monotonic() - t_setup, "file": setup.path.name,
                    "facts": setup.facts, "failures": setup.failures, "data": {}})
    write_summary(ctx, results)
    broken = status != "ok"

    for rank, step in enumerate(STEPS, 1):
        log = StepLog(out / f"{rank:02d}-{step.name}.log")
        timeout = step.timeout * scale
        res = {"rank": rank, "name": step.name, "title": step.title, "timeout": timeout,
               "wall": None, "file": log.path.name, "facts": log.facts,
               "failures": log.failures, "data": log.data}
        log.path.write_text(f"# {rank}. {step.title} (timeout {timeout:g} s)\n")
        if broken:
            res["status"] = "not measured (setup failed)"
        elif step.name not in only and not step.always:
            res["status"] = "not measured (left out with --only)"
        elif ctx.left() < 10:
            res["status"] = f"not measured (the run's budget of {budget:g} s was spent)"
        else:
            log.deadline = time.monotonic() + min(timeout, ctx.left())
            t0 = time.monotonic()
            try:
                step.run(ctx, log)
                res["status"] = "FAILED: " + "; ".join(log.failures) if log.failures else "ok"
            except Skip as exc:
                res["status"] = f"not measured ({exc})"
            except StepTimeout as exc:
                res["status"] = f"TIMED OUT: {exc}"
            except Exception as exc:  # noqa: BLE001 - one step's bug must not lose the rest
                res["status"] = f"FAILED: {type(exc).__name__}: {exc}"
                log.write(f"# driver error: {type(exc).__name__}: {exc}")
            res["wall"] = time.monotonic() - t0
        if not log.path.read_text().count("\n") > 1:
            log.write(f"# {res['status']}")
        results.append(res)
        write_summary(ctx, results)
        print(f"{rank:2d} {step.name:17s} {res['status']}", flush=True)
    print(f"summary: {out / 'summary.md'}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def die(msg: str) -> int:
    print(f"gpu_check: {msg}", file=sys.stderr)
    return 2


# -- helpers the steps run in a child process -----------------------------------------------

def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def cmd_compare(a: argparse.Namespace) -> int:
    """Two classify results of the same cells and model (CPU, GPU): per cell |logit
    difference|, label agreement, and whether every flip lies within the bound of the
    threshold (bound_i = TF32_REL * (1 + |cpu_i|))."""
    from leukoedge.session import SessionConfig, load_model

    try:
        cpu, gpu = read_csv(a.cpu), read_csv(a.gpu)
    except (OSError, KeyError) as exc:
        return die(f"cannot read the classify results: {exc}")
    thr = load_model(a.model, SessionConfig(provider="cpu")).spec.logit_threshold
    common = sorted(k for k in cpu if k in gpu and cpu[k]["logit"] and gpu[k]["logit"])
    if not common:
        return die("no cell was classified in both results")
    flips, outside = [], []
    max_abs = max_rel = 0.0
    within = 0
    for k in common:
        c, g = float(cpu[k]["logit"]), float(gpu[k]["logit"])
        d = abs(g - c)
        bound = TF32_REL * (1.0 + abs(c))
        max_abs, max_rel = max(max_abs, d), max(max_rel, d / (1.0 + abs(c)))
        within += abs(c - thr) <= bound
        if d > bound:
            outside.append(k)
        if cpu[k]["label"] != gpu[k]["label"]:
            flips.append({"path": k, "cpu_logit": c, "gpu_logit": g,
                          "cpu_minus_threshold": c - thr, "bound": bound})
    flips_ok = all(abs(f["cpu_minus_threshold"]) <= f["bound"] for f in flips)
    res = {"cells": len(common), "only_in_one": len(set(cpu) ^ set(gpu)),
           "agree": len(common) - len(flips), "flips": flips, "flips_within_bound": flips_ok,
           "cells_within_bound_of_threshold": within, "logit_threshold": thr,
           "max_abs_diff": max_abs, "max_rel_diff": max_rel, "outside_bound": outside[:20],
           "n_outside_bound": len(outside), "rule": f"|gpu - cpu| <= {TF32_REL:g}*(1+|cpu|)",
           "passed": not outside and flips_ok}
    a.json.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k not in ("flips", "outside_bound")}))
    return 0


def cmd_iobench(a: argparse.Namespace) -> int:
    """Inference only, per model and batch size: onnxruntime with the host copy (what
    classify does: ``Model.logits``), onnxruntime with the input already on the device
    (IO binding of an OrtValue there, output left there), and PyTorch on the same device
    (fp32; fp16 autocast on CUDA, bfloat16 on a CPU), the input already there."""
    import numpy as np
    import onnxruntime as ort

    from leukoedge.bench import sample_batch, timed
    from leukoedge.session import SessionConfig, load_model

    sizes = [int(b) for b in a.batch_sizes.split(",")]
    files = list_images(a.cells)
    provider = "cuda" if a.device == "cuda" else "cpu"
    rows: list[dict[str, Any]] = []

    def add(what: str, b: int, times: list[float]) -> None:
        rows.append({"what": what, "batch": b, "images_per_s": b / float(np.median(times))})
        print(f"{what} batch {b}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)

    x = None
    for path in a.models:
        m = load_model(path, SessionConfig(provider=provider))
        x, _ = sample_batch(m.spec, files, max(sizes))
        tag = f"onnxruntime {path.stem} on {m.provider}{' (TF32 on)' if provider == 'cuda' else ''}"
        for b in sizes:
            xb = np.ascontiguousarray(x[:b])
            m.logits(xb)
            add(f"{tag}, host copy", b, timed(lambda xb=xb: m.logits(xb), a.seconds))
            xv = ort.OrtValue.ortvalue_from_numpy(xb, a.device, 0)
            io = m.session.io_binding()
            io.bind_ortvalue_input(m.input_name, xv)
            io.bind_output(m.output_name, a.device, 0)

            def resident(io: Any = io) -> None:
                m.session.run_with_iobinding(io)
                io.synchronize_outputs()

            resident()
            add(f"{tag}, IO binding, input on the device", b, timed(resident, a.seconds))
    if a.checkpoint is not None and x is not None:
        import torch
        from leukoedge_train import checkpoint as ckpt_io

        dev = torch.device(a.device)
        net = ckpt_io.model_of(ckpt_io.load(ckpt_io.resolve(a.checkpoint))).float().eval()
        net = net.to(dev, memory_format=torch.channels_last)
        half = torch.float16 if dev.type == "cuda" else torch.bfloat16
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        for dtype in (None, half):
            for b in sizes:
                xt = torch.from_numpy(x[:b]).to(dev)

                def step(xt: Any = xt, dtype: Any = dtype) -> None:
                    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or half,
                                                                enabled=dtype is not None):
                        net(xt)
                    sync()

                step()
                add(f"PyTorch {torch.__version__} eager on {dev.type}, "
                    f"{'fp32' if dtype is None else str(dtype).split('.')[-1] + ' autocast'}, "
                    "channels_last, input on the device", b, timed(step, a.seconds))
    settings = {}
    if a.checkpoint is not None and a.device == "cuda":
        import torch

        settings = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                    "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                    "gpu": torch.cuda.get_device_name(0)}
    a.json.write_text(json.dumps({"device": a.device, "torch_settings": settings, "rows": rows},
                                 indent=1))
    return 0


def cmd_pick_cells(a: argparse.Namespace) -> int:
    """Copy ``--n`` real cells from SRC to DST, spread over patients (round robin over
    patients in name order), keeping each file's all/ or hem/ folder."""
    from leukoedge.data import patient_of

    if not a.src.is_dir():
        return die(f"{a.src}: not a folder")
    if a.dst.exists() and any(a.dst.iterdir()):
        return die(f"{a.dst} exists and is not empty")
    by_patient: dict[str, list[Path]] = {}
    for p in list_images(a.src):
        by_patient.setdefault(patient_of(p.name) or "?", []).append(p)
    if not by_patient:
        return die(f"no images under {a.src}")
    picked: list[Path] = []
    queues = [by_patient[k] for k in sorted(by_patient)]
    while len(picked) < a.n and any(queues):
        for q in queues:
            if q and len(picked) < a.n:
                picked.append(q.pop(0))
    for p in picked:
        dst = a.dst / p.relative_to(a.src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
    print(f"{len(picked)} cells of {len(by_patient)} patients -> {a.dst}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the steps")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    r.add_argument("--work", type=Path,
                   help="models and runs; kept for a rerun with --only (default: "
                        "$TMPDIR/leukoedge-gpu-check-work)")
    r.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, synthetic cells")
    r.add_argument("--cells", type=Path, help="real cells to classify (~500; see pick-cells)")
    r.add_argument("--provider", default="cuda", choices=("cuda",))
    r.add_argument("--archs", default=",".join(ALL_ARCHS))
    r.add_argument("--bench-arch", default="resnet50")
    r.add_argument("--budget", type=float, default=None,
                   help="seconds for setup and all the steps (default: 300 on the GPU, 3600 "
                        "in a dry run); a step is not started with under 10 s left")
    r.add_argument("--timeout-scale", type=float, default=None,
                   help="multiply every step's timeout (default: 1 on the GPU, 20 in a dry run)")
    r.add_argument("--only", help="comma-separated step names (the others: not measured)")
    r.add_argument("--leukoedge", default=os.environ.get("LEUKOEDGE"),
                   help="command that runs leukoedge (default: beside this Python, PATH, -m)")
    r.add_argument("--wheel-pieces", type=Path, default=Path("."),
                   help="folder holding the carried .ortgpu*/part.* pieces")
    r.add_argument("--wheel-sha256", default=os.environ.get("ORT_GPU_SHA256"))
    r.add_argument("--no-install", action="store_true",
                   help="use this environment's onnxruntime (a GPU build already installed)")
    c = sub.add_parser("compare", help="two classify results under the flip rule")
    c.add_argument("cpu", type=Path)
    c.add_argument("gpu", type=Path)
    c.add_argument("--model", type=Path, required=True)
    c.add_argument("--json", type=Path, required=True)
    b = sub.add_parser("iobench", help="host copy vs input on the device; PyTorch beside")
    b.add_argument("models", type=Path, nargs="+")
    b.add_argument("--checkpoint", type=Path)
    b.add_argument("--cells", type=Path, required=True)
    b.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    b.add_argument("--batch-sizes", default="32,256")
    b.add_argument("--seconds", type=float, default=2.0)
    b.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("pick-cells", help="choose ~500 real cells, spread over patients")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--n", type=int, default=500)
    a = ap.parse_args(argv)
    return {"run": cmd_run, "compare": cmd_compare, "iobench": cmd_iobench,
            "pick-cells": cmd_pick_cells}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
