"""Running a build's pending tasks on an executor, and marking what they report.

A unit is computed and written one way wherever it runs: `work.run_task` computes a (pass, chunk) task and writes
its shards durably, unmarked. An executor says where tasks run: `InProcess` here, one after another, and
`cluster.DaskExecutor` on a dask cluster's workers. This process is the only writer of marks: it marks a task's
units once the task reports them durable, for this very store (its identity) and this chunk's fragments.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Protocol

import numpy as np
from tqdm.auto import tqdm

from saezarr.build.memory import default_sae_memory
from saezarr.build.work import (
    ComputeSpec,
    FragmentIndex,
    PassSpec,
    Task,
    TaskResult,
    needs_model,
    pass_encoders,
    pending_work,
    run_task,
    task_model,
    write_error,
)
from saezarr.errors import ClusterError, option
from saezarr.execution.caches import process_cache
from saezarr.progress import say
from saezarr.store.storage import absolute_location

if TYPE_CHECKING:
    from saezarr.build.pipeline import BuildSummary
    from saezarr.build.planning import BuildPlan
    from saezarr.store.format import Store

MARK_THREADS = 16  # marks are file creates: on a network filesystem or a bucket each is a round trip
Work = list[tuple[PassSpec, list[Task]]]


class Executor(Protocol):
    """Where a build's tasks run."""

    label: str  # how a message names where the tasks ran
    remote: bool  # tasks run in other processes: their shards are checked visible here before marking

    def prepared(self, spec: ComputeSpec) -> ComputeSpec:
        """The spec as this executor's processes run it."""
        ...

    def sae_memory(self, spec: ComputeSpec) -> int:
        """The default `--sae-memory`: what the tightest device leaves free once the model is loaded."""
        ...

    def description(self) -> str:
        """The progress bar's name."""
        ...

    def results(
        self, spec: ComputeSpec, fragments: FragmentIndex, work: Work, bar: tqdm
    ) -> Generator[tuple[Task, TaskResult], None, None]:
        """Run every task, yielding each with its result as it finishes; closing it stops the tasks left."""
        ...


class InProcess:
    """Runs the tasks in this process, pass after pass, keeping the model and the current pass's encoders across its
    tasks (dropped at the end, so that a notebook gets its memory back)."""

    label = "build"
    remote = False

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self._loaded = False

    def prepared(self, spec: ComputeSpec) -> ComputeSpec:
        """The spec unchanged: this process's own threads."""
        return spec

    def sae_memory(self, spec: ComputeSpec) -> int:
        """On CUDA what the loaded model leaves free; on a CPU the fixed default."""
        self._load_model(spec)
        return default_sae_memory(spec.device)

    def description(self) -> str:
        """The bar's name."""
        return "saezarr build"

    def results(
        self, spec: ComputeSpec, fragments: FragmentIndex, work: Work, bar: tqdm
    ) -> Generator[tuple[Task, TaskResult], None, None]:
        """Each task's result in turn; the bar's postfix names the pass, and says while its SAEs load."""
        try:
            self._load_model(spec)
            for number, (pass_, tasks) in enumerate(work, 1):
                name = f"pass {number}/{len(work)}"
                bar.set_postfix_str(f"{name}: loading {len(pass_.saes)} SAEs")  # the bar stands still meanwhile
                _, loads = pass_encoders(spec, pass_)
                bar.set_postfix_str(name)
                for task in tasks:
                    result = run_task(spec, fragments, pass_, task)
                    result.sae_loads += loads  # the pass's loads, done before its first task, count with it
                    loads = 0
                    yield task, result
        finally:
            for slot in ("model", "encoders", "host buffers"):
                process_cache.drop(slot)

    def _load_model(self, spec: ComputeSpec) -> None:
        if spec.model is None or self._loaded:
            return
        say(self.quiet, f"loading model {spec.model.source.name} ({spec.dtype}) on {spec.device}")
        task_model(spec)
        self._loaded = True


class Runner:
    """Runs a plan's pending tasks into its store on an executor, marking and counting what they report."""

    def __init__(self, plan: BuildPlan, store: Store, summary: BuildSummary, executor: Executor):
        self.plan, self.store, self.summary, self.executor = plan, store, summary, executor
        self.sae_memory: int | None = None

    def run(self) -> None:
        """Run every pending task; the model is loaded only if one of them runs it."""
        if not count_pending(self.store, self.summary):
            return
        plan, store = self.plan, self.store
        spec = self.executor.prepared(self._spec())
        self.sae_memory = plan.sae_memory or self.executor.sae_memory(spec)
        saes = [sae.resolved() for sae in plan.saes]  # absolute paths: as workers see them
        work = pending_work(store, saes, self.sae_memory, plan.max_chunks)
        total = sum(store.chunk_size(task.chunk) for _, tasks in work for task in tasks)
        fragments = FragmentIndex.of(plan.fragments) if plan.fragments is not None else FragmentIndex.none()
        bar = tqdm(total=total, unit="frag", disable=plan.quiet, desc=self.executor.description(), dynamic_ncols=True)
        marker = ThreadPoolExecutor(max_workers=MARK_THREADS, thread_name_prefix="saezarr-mark")
        with bar, marker, contextlib.closing(self.executor.results(spec, fragments, work, bar)) as results:
            try:
                for task, result in results:
                    check_result(store, self.executor.label, task, result)
                    list(marker.map(partial(self._mark, result), result.units))
                    self._count(result)
                    bar.update(store.chunk_size(task.chunk))
            except OSError as error:
                raise write_error(error, store.path) from None
        if self.executor.remote:  # every task has finished: a temporary shard file left is a killed worker's
            store.discard_partial_writes()
        self.summary.model_passes = len(work)

    def _spec(self) -> ComputeSpec:
        """What every task shares; the model only if a task runs it (none does if the store holds every residual)."""
        plan, store = self.plan, self.store
        return ComputeSpec(
            model=plan.model_info if self._model_needed() else None,
            device=plan.device,
            dtype=store.attrs["model_dtype"],
            batch_size=plan.batch_size,
            store=absolute_location(store.path),
            store_id=store.identity,
            overlap_writes=plan.overlap_writes,
            write_threads=plan.write_threads,
        )

    def _model_needed(self) -> bool:
        work = pending_work(self.store, self.plan.saes, 2**62, self.plan.max_chunks)
        done = self.store.residuals.done() if self.store.residuals is not None else None
        return any(needs_model(self.store, pass_, task, done) for pass_, tasks in work for task in tasks)

    def _mark(self, result: TaskResult, unit: tuple[int, int]) -> None:
        """Mark a unit a task wrote, once this process sees its shard (a worker on another filesystem would not)."""
        if self.executor.remote and not self.store.shard_written(*unit):
            raise ClusterError(
                f"{self.executor.label}: worker {result.worker} wrote unit {unit} but this client cannot see its "
                f"shard in {self.store.path}; the store must be on a filesystem shared by every worker",
                exit_code=1,
            )
        self.store.mark_done(*unit)

    def _count(self, result: TaskResult) -> None:
        summary = self.summary
        summary.sae_loads += result.sae_loads
        summary.forward_batches += result.forward_batches
        summary.units_written += len(result.units)
        if result.worker and result.worker not in summary.workers:
            summary.workers = sorted([*summary.workers, result.worker])


def check_result(store: Store, label: str, task: Task, result: TaskResult) -> None:
    """Refuse a task's report unless it wrote this store (its identity), the chunk's fragments, and the task's units."""
    wrong = None
    if result.store_id != store.identity:
        wrong = f"into store_id {result.store_id}, but the store at {store.path} is {store.identity}"
    elif tuple(result.bounds) != store.chunk_bounds(task.chunk):
        wrong = f"fragments {tuple(result.bounds)} for chunk {task.chunk}, which holds {store.chunk_bounds(task.chunk)}"
    elif sorted(result.units) != sorted(task.units):
        wrong = f"units {result.units} for task units {task.units}"
    if wrong:
        raise ClusterError(
            f"{label}: worker {result.worker} wrote {wrong}; nothing of it was marked: rerun the same command with "
            f"{option('resume', True)}",
            exit_code=1,
        )


def count_pending(store: Store, summary: BuildSummary) -> bool:
    """Count the store's done and total units (residual units included) into the summary; return whether any unit is
    left."""
    done = store.done_matrix()
    residuals = store.residuals.done() if store.residuals is not None else np.zeros(0, dtype=bool)
    summary.units_total = done.size + residuals.size
    summary.units_skipped = int(done.sum()) + int(residuals.sum())
    return not (done.all() and residuals.all())
