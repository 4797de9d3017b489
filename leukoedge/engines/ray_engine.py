"""``classify --engine ray``: the same rows as the local engine, computed on a Ray cluster.

The driver (this process) lists the files, drops those already in the result file (the
done-list: Ray Data itself does not resume), and hands Ray Data a dataset of
``(index, path, patient)`` records cut into blocks of files. A pool of actors classifies
the blocks: each actor opens the model once (:func:`leukoedge.session.load_model`, the
same provider rules) and runs the local engine's own :func:`leukoedge.classify.predict_stream`
on its block (the one preprocessing function, batched and overlapped inference, the one
place where a model output becomes a :class:`~leukoedge.output.Row`), so every column the
local engine writes comes back unchanged. The rows travel back as JSON text with their
index; the driver puts them in input order, drops any index it has already seen, and
writes them through the same writers, flushed after every block.

Guarantees (tests/test_ray_engine.py): a bad file is an error row; an actor that dies is
restarted by Ray and its unfinished block is run again (its rows had not been returned, so
nothing is lost or written twice); Ctrl-C leaves every finished block on disk and
``--resume`` finishes the run with every file exactly once. Ray is imported here only,
when the engine is asked for.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classify import RowSink, RunStats, tally
from ..data import Item
from ..errors import LeukoedgeError, MissingExtraError, first_line
from ..output import Row
from ..session import Model, cores
from ..spec import ModelSpec

if TYPE_CHECKING:
    from ..heatmap import OverlayWriter

SCALE_HINT = "pip install 'leukoedge[scale]'"
#: a block is the unit of work handed to an actor and the unit redone when one dies
DEFAULT_BLOCK_FILES = 1024
#: a block that has killed its actor this many times more fails the run (a file that
#: crashes a native decoder must not loop forever); actors themselves restart without end
TASK_RETRIES = 3


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or :class:`MissingExtraError` naming the ``scale`` extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError("--engine ray needs Ray Data, which is not installed",
                                SCALE_HINT) from exc
    module: ModuleType = ray
    return module


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: start a local cluster on this machine's cores
    actors: int | None = None  # None: one per node (GPUs: one per gpus_per_actor)
    gpus_per_actor: float = 0.0
    block_files: int = DEFAULT_BLOCK_FILES


@dataclass(frozen=True)
class Plan:
    """What the driver asks of the cluster."""

    actors: int
    cpus_per_actor: int
    threads: int  # onnxruntime intra-op threads per actor
    workers: int  # decoding threads per actor


def plan(resources: dict[str, float], nodes: list[dict[str, Any]], options: RayOptions,
         threads: int | None, workers: int | None) -> Plan:
    """Actors and their share of the cluster: by default one actor per node with that
    node's cores (one session per machine, as the local engine runs one per process), or
    one per ``gpus_per_actor`` GPUs."""
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive")]
    node_cpus = [c for c in node_cpus if c > 0] or [max(1, int(resources.get("CPU", 1)))]
    if options.actors is not None:
        actors = options.actors
    elif options.gpus_per_actor > 0:
        actors = max(1, int(resources.get("GPU", 0) // options.gpus_per_actor))
    else:
        actors = len(node_cpus)
    total = sum(node_cpus)
    cpus = max(1, min(max(node_cpus), total // actors))
    return Plan(actors, cpus, threads or cpus, workers or max(1, min(8, cpus)))


class BlockClassifier:
    """Runs inside each actor: one model (one onnxruntime session) for the actor's life."""

    def __init__(self, model_path: str, provider: str, threads: int, spec: ModelSpec,
                 batch_size: int, workers: int, overlays: OverlayWriter | None = None,
                 precision: str = "f32") -> None:
        from ..session import SessionConfig, load_model

        # the driver's provider and precision; a bf16 actor checks the gate store on its
        # own machine (the gate is bound to the CPU it runs on)
        self.model = load_model(model_path, SessionConfig(provider=provider, threads=threads,
                                                          precision=precision))
        self.model.spec = spec  # the driver's spec: --threshold and the like apply here too
        self.batch_size = batch_size
        self.workers = workers
        self.overlays = overlays

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..classify import predict_stream

        items = [Item(Path(os.fsdecode(bytes(p))), None, str(pt) or None)
                 for p, pt in zip(batch["path"], batch["patient"])]
        rows = [json.dumps(asdict(p.row), ensure_ascii=False) for p in
                predict_stream(self.model, items, self.batch_size, self.workers,
                               overlays=self.overlays)]
        return {"index": np.asarray(batch["index"], dtype=np.int64),
                "row": np.array(rows, dtype=object)}


class _InOrder:
    """Rows arrive by block, tagged with their index: hand them on in input order, each
    index once (a block redone after a failure must not write its rows twice)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.next = 0
        self.waiting: dict[int, Row] = {}
        self.duplicates = 0

    def add(self, indices: Iterable[int], rows: Iterable[str]) -> list[Row]:
        for i, text in zip(indices, rows):
            i = int(i)
            if i < self.next or i in self.waiting or not 0 <= i < self.total:
                self.duplicates += 1
                continue
            self.waiting[i] = Row(**json.loads(text))
        out: list[Row] = []
        while self.next in self.waiting:
            out.append(self.waiting.pop(self.next))
            self.next += 1
        return out


def connect(ray: ModuleType, address: str | None) -> bool:
    """Join the running Ray session, the cluster at ``address``, or start a local one;
    True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # Ray starts its workers 15 steps nicer than itself by default: on a busy
            # machine the actors would then get a fraction of the CPU this command gets
            # (measured: 2.6x slower beside a training job). They run the work here.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=cores(), include_dashboard=False, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise LeukoedgeError(f"cannot start or reach {where}: {first_line(exc)}",
                             "start one with 'ray start --head' and pass --ray-address, "
                             "or leave --ray-address out for a local one") from exc
    return True


@dataclass(frozen=True)
class RayEngine:
    """:class:`leukoedge.engines.Engine` on a Ray cluster (:func:`classify_ray`)."""

    batch_size: int = 32
    workers: int | None = None
    options: RayOptions = RayOptions()
    threads: int | None = None
    overlays: OverlayWriter | None = None
    note: Callable[[str], None] | None = None

    def run(self, model: Model, items: Sequence[Item], writer: RowSink,
            progress: Callable[[int], None] | None = None) -> RunStats:
        return classify_ray(model, items, writer, self.batch_size, self.workers, progress,
                            self.options, self.threads, self.overlays, self.note)


def classify_ray(
    model: Model,
    items: Iterable[Item],
    writer: RowSink,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    options: RayOptions | None = None,
    threads: int | None = None,
    overlays: OverlayWriter | None = None,
    note: Callable[[str], None] | None = None,
) -> RunStats:
    """:func:`leukoedge.engines.local.classify_files` on a Ray cluster: rows through
    ``writer`` in input order, flushed after each block. Every item given is run (a resumed
    run passes what :func:`leukoedge.engines.pending` left); ``note`` hears how the cluster
    was reached."""
    options = options or RayOptions()
    ray = import_ray()
    stats = RunStats()
    todo = list(items)
    if not todo:
        return stats
    t0 = time.perf_counter()
    started = connect(ray, options.address)
    try:
        p = plan(ray.cluster_resources(), ray.nodes(), options, threads, workers)
        if note is not None:
            note(f"ray: {'started a local cluster' if started else 'joined the cluster'} "
                 f"in {time.perf_counter() - t0:.1f} s; {p.actors} actor(s), "
                 f"{p.cpus_per_actor} CPU(s) each" + (f", {options.gpus_per_actor:g} GPU(s) "
                                                      "each" if options.gpus_per_actor
                                                      else ""))
        _quiet(ray)
        ds = _dataset(ray, model, todo, options, p, batch_size, overlays)
        written = _write_in_order(ray, ds, len(todo), writer, stats, model.spec.positive,
                                  progress)
        if written != len(todo):  # cannot happen unless Ray dropped a block
            raise LeukoedgeError(f"the Ray run returned {written} of {len(todo)} rows",
                                 "rerun with --resume to finish the rest")
    finally:
        stats.seconds = time.perf_counter() - t0
        if started:
            ray.shutdown()
    return stats


def _dataset(ray: ModuleType, model: Model, todo: list[Item], options: RayOptions, p: Plan,
             batch_size: int, overlays: OverlayWriter | None) -> Any:
    """The Ray dataset of ``todo``'s rows: ``(index, path, patient)`` records cut into
    blocks no larger than needed to give every actor work, mapped by a pool of
    :class:`BlockClassifier` actors (a block retried :data:`TASK_RETRIES` times)."""
    block = max(1, min(options.block_files, math.ceil(len(todo) / p.actors)))
    records = [{"index": i, "path": os.fsencode(it.path), "patient": it.patient or ""}
               for i, it in enumerate(todo)]
    ds = ray.data.from_items(records, override_num_blocks=math.ceil(len(records) / block))
    remote: dict[str, Any] = {"max_task_retries": TASK_RETRIES}
    with warnings.catch_warnings():  # Ray 2.60 takes retries only this way (deprecated)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            BlockClassifier,
            fn_constructor_kwargs={
                "model_path": str(Path(model.path).resolve()),
                "provider": model.provider, "precision": model.precision,
                "threads": p.threads, "spec": model.spec,
                "batch_size": batch_size, "workers": p.workers, "overlays": overlays},
            batch_size=block, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=p.actors),
            num_cpus=p.cpus_per_actor, num_gpus=options.gpus_per_actor or None,
            **remote)


def _write_in_order(ray: ModuleType, ds: Any, total: int, writer: RowSink, stats: RunStats,
                    positive: str, progress: Callable[[int], None] | None) -> int:
    """Run ``ds`` and write its rows through ``writer`` in input order as the blocks come
    back, each index once; the number of rows written. A Ray failure becomes one of our
    errors (:func:`_our_error`); on any way out the dataset's actors are stopped."""
    order = _InOrder(total)
    blocks = iter(ds.iter_batches(batch_size=None, batch_format="numpy",
                                  prefetch_batches=1))
    try:
        for out in blocks:
            rows = order.add(out["index"], out["row"])
            if rows:
                writer.write(rows)
                tally(stats, rows, positive)
                if progress is not None:
                    progress(len(rows))
    except ray.exceptions.RayError as exc:
        raise _our_error(exc) from None
    finally:  # Ctrl-C or a failed write: stop the dataset's actors now
        close = getattr(blocks, "close", None)
        if close is not None:
            close()
    return order.next


def _quiet(ray: ModuleType) -> None:
    """Rows are the output: no progress bars or per-dataset log lines from Ray Data."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # blocks in order: the reorder stays small
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _our_error(exc: BaseException) -> LeukoedgeError:
    """The leukoedge error an actor raised (a model failing at run time: exit 3, as on the
    local engine), else one line about the Ray failure."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = getattr(e, "cause", None)
        for found in (cause, e):
            if isinstance(found, LeukoedgeError):
                return _rebuilt(found)
        e = e.__cause__ or e.__context__
    return LeukoedgeError(f"the Ray run failed: {first_line(exc)}",
                          "rows finished so far are kept; rerun with --resume")


def _rebuilt(exc: LeukoedgeError) -> LeukoedgeError:
    """A plain copy of a leukoedge error that Ray wrapped (its class mixed with Ray's)."""
    cls = next(c for c in type(exc).__mro__
               if issubclass(c, LeukoedgeError) and c.__module__.startswith("leukoedge"))
    try:
        return cls(exc.message, exc.hint)
    except TypeError:  # a class with another signature: keep its words
        return LeukoedgeError(exc.message, exc.hint)
