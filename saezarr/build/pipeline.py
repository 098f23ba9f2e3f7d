"""The build loop: plan everything, then stream fragment chunks through the model and SAEs into the store."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from saezarr.build.build_options import BuildOptions, with_defaults
from saezarr.build.cluster import DaskExecutor, check_workers
from saezarr.build.planning import BuildPlan, check_kept_options, plan_build
from saezarr.build.runner import InProcess, Runner
from saezarr.build.work import (
    ChunkWriter,
)
from saezarr.errors import (
    InputError,
    Interrupted,
    OutOfMemory,
    OutputExists,
    ResumeMismatch,
    StoreNotFound,
    option,
)
from saezarr.execution.connect import cluster_client
from saezarr.machine import human_bytes
from saezarr.progress import say
from saezarr.store.format import (
    Store,
    check_conditional_writes,
    check_output_path,
    create_store,
    open_for_resume,
    remove_stale_staging,
    store_lock,
)
from saezarr.store.growing import Growth, finish_growth, grow_store, restore_interrupted_growth
from saezarr.store.storage import Location, is_url
from saezarr.store.storage.base import WriterLock

__all__ = ["BuildOptions", "BuildSummary", "ChunkWriter", "build", "run"]


@dataclass
class BuildSummary:
    """What a build did, with the counters the benchmarks read."""

    store: Location
    n_configs: int
    n_fragments: int
    n_sentences: int
    bytes_on_disk: int = 0
    elapsed: float = 0.0
    model_passes: int = 0
    forward_batches: int = 0
    sae_loads: int = 0
    units_written: int = 0
    units_skipped: int = 0
    units_total: int = 0
    complete: bool = False
    workers: list[str] = field(default_factory=list)  # dask workers that ran tasks; empty in this process

    def line(self) -> str:
        """One summary line for the terminal."""
        state = "built" if self.complete else "partly built"
        return (
            f"saezarr: {state} {self.store}: {self.n_configs} configs x {self.n_fragments} fragments "
            f"({self.n_sentences} sentences), {human_bytes(self.bytes_on_disk)} on disk, {self.elapsed:.1f} s; "
            f"model passes {self.model_passes}, SAE loads {self.sae_loads}, "
            f"chunks written {self.units_written}, already done {self.units_skipped} of {self.units_total}"
            + (f"; {len(self.workers)} workers: {', '.join(self.workers)}" if self.workers else "")
        )


def build(options: BuildOptions) -> BuildSummary:
    """Build (or resume, or extend) a store; every input is validated before the output is touched."""
    options = with_defaults(options)
    with _sigterm_interrupts():
        try:
            return _build(options)
        except _Terminated:  # before the lock was taken: nothing of this build is in the store
            raise Interrupted(f"terminated (SIGTERM) before {options.output} was written to", exit_code=143) from None


def _build(options: BuildOptions) -> BuildSummary:
    started = time.perf_counter()
    if options.extend:
        return _extend(options, started)
    assert options.output is not None  # with_defaults: refused without one
    # the output and flags first: a forgotten --resume must not wait for gigabytes of downloads
    exists = check_output_path(options.output)
    check_conditional_writes(options.output, options.unsafe_lock)
    if exists and not (options.resume or options.overwrite):
        raise OutputExists(
            f"{option('output', options.output)}: a store exists there; use {option('resume', True)} to continue it or {option('overwrite', True)} to "
            "replace it"
        )
    plan = plan_build(options)
    assert plan.fragments is not None  # a new or resumed store's plan has its fragments
    with _cluster(plan) as client:  # connected, and every worker checked, before the store is touched
        store, lock = _open_or_create(options, plan, exists)
        summary = BuildSummary(plan.output, len(plan.configs), len(plan.fragments), plan.n_sentences)
        with lock:
            how = f"rerun the same command with {option('resume', True)} (in place of {option('overwrite', True)}, if given)"
            run(plan, store, summary, client, how)
    return _finish(summary, store, started)


def run(plan: BuildPlan, store: Store, summary: BuildSummary, client=None, how: str = "rerun the same command") -> None:
    """Run the plan's pending tasks into the store (on the dask `client`'s workers, or in this process), counting
    into `summary`; an out-of-memory or an interruption is one line saying what is kept and `how` to go on."""
    executor = InProcess(plan.quiet) if client is None else DaskExecutor(client, plan.cluster)
    runner = Runner(plan, store, summary, executor)
    try:
        runner.run()
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(plan, store, runner) from None
    except KeyboardInterrupt as stop:
        with _interrupts_ignored():
            done = store.done_matrix()
        raise _interrupted(
            stop, f": {int(done.sum())} of {done.size} chunks of {plan.output} are done and kept; {how} to continue"
        ) from None


def _interrupted(stop: KeyboardInterrupt, what: str) -> Interrupted:
    """The one line for Ctrl-C or SIGTERM (exit 130 or 143): which of them, then `what` was kept and how to go on."""
    terminated = isinstance(stop, _Terminated)
    said = "terminated (SIGTERM)" if terminated else "interrupted"
    return Interrupted(f"{said}{what}", exit_code=143 if terminated else 130)


def _finish(summary: BuildSummary, store: Store, started: float) -> BuildSummary:
    """The summary's final counts."""
    if summary.units_written == 0 and summary.units_total:  # nothing written: what the count found stands
        summary.complete = summary.units_skipped == summary.units_total
    else:
        summary.complete = bool(store.done_matrix().all()) and not len(store.pending_residuals())
    summary.bytes_on_disk = store.bytes_on_disk()
    summary.elapsed = time.perf_counter() - started
    return summary


def _extend(options: BuildOptions, started: float) -> BuildSummary:
    """Grow an existing store by the config file's new SAEs and the input's new rows, then compute the new units (in
    this process or on a dask cluster)."""
    if options.overwrite or options.resume:
        raise InputError(
            f"{option('extend', True)} grows the store in place (and finishes an interrupted extension itself): leave "
            f"out {option('overwrite', True)} and {option('resume', True)}"
        )
    assert options.output is not None  # with_defaults: refused without one
    check_conditional_writes(options.output, options.unsafe_lock)
    if not check_output_path(options.output):
        raise StoreNotFound(
            f"{option('extend', True)}: no store at {option('output', options.output)} to extend; build it first"
        )
    # held from the start: the store is read as no other writer leaves it, and a growth a kill cut short is repaired
    with store_lock(options.output) as lock:
        lock.acquire(force=options.force_unlock)
        restore_interrupted_growth(options.output)
        store = open_for_resume(options.output)
        check_kept_options(options.batch_size, options.chunk_fragments, store)
        plan = plan_build(options, store)
        with _cluster(plan) as client:  # connected, and every worker checked, before the store is touched
            store.discard_partial_writes()
            remove_stale_staging(plan.output)
            if plan.growth is not None:
                _grow(store, plan.growth, plan.quiet)  # here, before any task: the tasks carry the new store id
                store = Store(plan.output, mode="r+")
                plan.attrs = store.attrs
            summary = BuildSummary(plan.output, store.n_configs, store.n_fragments, plan.n_sentences)
            run(plan, store, summary, client, f"rerun the same {option('extend', True)} command")
        _finish(summary, store, started)
        if summary.complete:
            finish_growth(plan.output)
    return summary


def _grow(store: Store, growth: Growth, quiet: bool) -> None:
    """Grow the store; an interruption says that rerunning the extension finishes it."""
    configs = len(growth.configs) - growth.kept_configs
    fragments = len(growth.fragments) - growth.kept_fragments
    say(quiet, f"growing {store.path} by {configs} configs and {fragments} fragments (its coordinates are rewritten)")
    try:
        grow_store(store, growth)
    except KeyboardInterrupt as stop:
        raise _interrupted(
            stop,
            f" while {store.path} was growing; rerun the same {option('extend', True)} command to finish the extension",
        ) from None


@contextlib.contextmanager
def _cluster(plan: BuildPlan):
    """A dask client whose every worker can run this build, or None to run in this process."""
    if not plan.cluster.wanted:
        yield None
        return
    with cluster_client(plan.cluster, plan.device) as client:
        check_workers(
            client,
            plan.cluster,
            plan.model_info,
            [sae.path for sae in plan.saes],
            plan.device,
            plan.output,
        )
        yield client


def _out_of_memory(plan: BuildPlan, store: Store, runner: Runner) -> OutOfMemory:
    """The one line for a device out of memory: what is kept, and which options lower the need."""
    done = store.done_matrix()
    budget = human_bytes(runner.sae_memory) if runner.sae_memory else "not reached"
    return OutOfMemory(
        f"{plan.device}: out of memory ({int(done.sum())} of {done.size} chunks of {plan.output} are done "
        f"and kept); rerun the same command with {option('resume', True)} and a smaller {option('sae_memory')} "
        f"(this run: {budget}), or start over with {option('overwrite', True)} and a smaller "
        f"{option('batch_size')} (this run: {store.attrs.get('batch_size')})",
        exit_code=1,
    )


def _check_resume_residuals(options: BuildOptions, plan: BuildPlan, store: Store) -> None:
    """Refuse a --residuals other than the store's: the layers and sites kept are fixed when the store is created."""
    if options.residuals is None:
        return
    kept = None if store.residuals is None else store.residuals.layers
    sites = () if store.residuals is None else store.residuals.sites
    if plan.residual_layers != kept or plan.residual_sites != sites:
        has = "keeps no residual stream" if kept is None else f"keeps the residuals of layers {_layer_list(kept)}"
        if kept is not None and plan.residual_sites != sites:
            others = ", ".join(f"{site.kind} of layers {_layer_list(site.layers)}" for site in sites)
            has += f" and {others or 'no other site'}"
        raise ResumeMismatch(
            f"{option('residuals')}: the store at {plan.output} {has}; the layers and sites kept are fixed when a "
            f"store is created, so leave {option('residuals')} out (or use {option('overwrite', True)})"
        )


def _layer_list(layers: Sequence[int]) -> str:
    return ",".join(str(layer) for layer in layers)


@contextlib.contextmanager
def _interrupts_ignored():
    """A second Ctrl-C while counting what is done would only lose the message saying how to resume."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, as Slurm, Kubernetes and systemd stop a job: stopped like Ctrl-C, with exit code 143."""


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough; a second would cut the clean stop short
    raise _Terminated


@contextlib.contextmanager
def _sigterm_interrupts():
    """For the duration of a build, SIGTERM interrupts it as Ctrl-C does (only the main thread can handle it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _open_or_create(options: BuildOptions, plan: BuildPlan, exists: bool) -> tuple[Store, WriterLock]:
    """Open the store to resume, or create it; an old store is replaced only while its lock is held."""
    if not exists and is_url(plan.output):
        return _create_locked(plan)
    if not exists:
        store = create_planned_store(plan)
    elif options.resume:
        lock = store_lock(plan.output)
        lock.acquire(force=options.force_unlock)
        try:
            store = open_for_resume(plan.output)
            # the plan's batch size: the one given, else the store's as planned (refused if it changed since)
            check_kept_options(plan.batch_size, options.chunk_fragments, store)
            _check_resume_residuals(options, plan, store)
        except BaseException:  # a refusal, Ctrl-C or SIGTERM: the lock goes back
            lock.release()
            raise
        store.discard_partial_writes()
        remove_stale_staging(plan.output)
        return store, lock
    else:
        # held through the swap, so no --resume can take the old store and then write into the new one
        with store_lock(plan.output) as old_lock:
            old_lock.acquire(force=options.force_unlock)
            store = create_planned_store(plan, replace=True)
    lock = store.lock()
    lock.acquire()
    return store, lock


def _create_locked(plan: BuildPlan) -> tuple[Store, WriterLock]:
    """Create a store in a key-value storage holding its lock from the start (a folder is created by one rename
    instead): of two builds racing to create it, one does and the other is refused."""
    lock = store_lock(plan.output)
    lock.acquire()
    try:
        if check_output_path(plan.output):
            raise OutputExists(
                f"{option('output', plan.output)}: another build created a store there meanwhile; use "
                f"{option('resume', True)} to continue it"
            )
        return create_planned_store(plan), lock
    except BaseException:
        lock.release()
        raise


def create_planned_store(plan: BuildPlan, replace: bool = False) -> Store:
    """The new store of the plan, at its output (replacing the store there, if `replace`)."""
    # a new store's plan has its fragments, chunk size and model
    assert plan.fragments is not None and plan.chunk_fragments is not None and plan.model_info is not None
    return create_store(
        plan.output,
        plan.fragments.table,
        plan.configs,
        [sae.width for sae in plan.saes],
        plan.attrs,
        plan.chunk_fragments,
        replace=replace,
        residual_layers=plan.residual_layers,
        hidden_size=plan.model_info.hidden_size,
        residual_sites=plan.residual_sites,
    )
