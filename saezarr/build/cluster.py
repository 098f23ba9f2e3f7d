"""Running a build's tasks on dask.distributed workers: connect, check every worker, submit, mark what comes back.

The build process stays the client and the only writer of marks: workers compute tasks (`work.run_task`) and write
their shards straight into the store on the shared filesystem; the client marks a unit once its task reports the
shard durable and the client itself sees the file. A worker that dies mid-task has its task rerun elsewhere by
the scheduler (up to `distributed.scheduler.allowed-failures` times); a task is idempotent, so a rerun rewrites
the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

import saezarr
from saezarr.build.memory import default_sae_memory
from saezarr.build.residuals import ModelInfo, check_weights
from saezarr.build.work import (
    ComputeSpec,
    FragmentIndex,
    PassSpec,
    Task,
    TaskResult,
    device_budget,
    run_task,
    write_error,
)
from saezarr.errors import SaezarrError, one_line
from saezarr.store.layout import Store
from saezarr.units import usable_cores

if TYPE_CHECKING:
    from distributed import Client

DEFAULT_WORKER_TIMEOUT = 60.0
MARK_THREADS = 16


@dataclass(frozen=True)
class ClusterOptions:
    """Where a build's tasks run: a local cluster of N worker processes, or an existing scheduler."""

    local_workers: int | None = None
    scheduler: str | None = None
    scheduler_file: Path | None = None
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT

    def __post_init__(self):
        given = [name for name, value in self._options() if value is not None]
        if len(given) > 1:
            raise SaezarrError(f"{' and '.join(given)}: give only one of them")

    def _options(self) -> list[tuple[str, object]]:
        return [("--local-workers", self.local_workers), ("--scheduler", self.scheduler),
                ("--scheduler-file", self.scheduler_file)]

    @property
    def wanted(self) -> bool:
        """True when the build runs on dask workers rather than in this process."""
        return any(value is not None for _, value in self._options())

    @property
    def remote(self) -> bool:
        """True when the workers are not this node's own (their devices are checked there, not here)."""
        return self.scheduler is not None or self.scheduler_file is not None

    @property
    def option(self) -> str:
        """The option naming the cluster, for messages."""
        return next(f"{name} {value}" for name, value in self._options() if value is not None)


@contextlib.contextmanager
def cluster_client(options: ClusterOptions, device: str, as_default: bool = False) -> Iterator[Client]:
    """A client of the scheduler (or of a new local cluster) with at least one worker; nothing is written.

    With `as_default`, dask computations run on this cluster while the client is open.
    """
    from distributed import Client

    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its failures reach the user as one line
    with contextlib.ExitStack() as stack:
        if options.local_workers is not None:
            address = stack.enter_context(_local_cluster(options.local_workers, device))
        else:
            address = _scheduler_address(options)
        try:
            client = stack.enter_context(Client(address, timeout=options.worker_timeout, set_as_default=as_default))
        except (OSError, TimeoutError, ValueError) as exc:
            raise SaezarrError(
                f"{options.option}: cannot reach the dask scheduler at {address} within {options.worker_timeout:g} s "
                f"(--worker-timeout) ({type(exc).__name__}: {one_line(exc)}); nothing was written"
            ) from None
        try:
            client.wait_for_workers(1, timeout=options.worker_timeout)
        except (TimeoutError, OSError):
            raise SaezarrError(
                f"{options.option}: no dask worker joined the scheduler at {address} within "
                f"{options.worker_timeout:g} s (--worker-timeout); start some with `dask worker {address}`"
            ) from None
        yield client


def _scheduler_address(options: ClusterOptions) -> str:
    if options.scheduler is not None:
        return options.scheduler
    try:
        return json.loads(Path(options.scheduler_file).read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SaezarrError(
            f"--scheduler-file {options.scheduler_file}: not a dask scheduler file ({type(exc).__name__}: {one_line(exc)})"
        ) from None


@contextlib.contextmanager
def _local_cluster(n_workers: int, device: str) -> Iterator[str]:
    """A cluster of single-thread worker processes on this node (one per GPU on CUDA), yielding its address."""
    from distributed import LocalCluster

    if torch.device(device).type == "cuda" and n_workers > torch.cuda.device_count():
        raise SaezarrError(
            f"--local-workers {n_workers}: one worker per GPU, and this node has {torch.cuda.device_count()}"
        )
    # memory_limit=0: the nanny must not kill a worker for holding a model; saezarr bounds its own memory
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL, memory_limit=0) as cluster:
        yield cluster.scheduler_address


def local_spec(spec: ComputeSpec, n_workers: int, write_threads: int | None) -> ComputeSpec:
    """A spec for N workers on this node: each gets its share of the cores for torch and for writing."""
    share = max(1, usable_cores() // n_workers)
    threads = share if torch.device(spec.device).type == "cpu" else None
    return dataclasses.replace(spec, torch_threads=threads, write_threads=write_threads or share)


def check_workers(client: Client, options: ClusterOptions, model: ModelInfo, saes: Sequence[Path], device: str,
                  output: Path) -> list[str]:
    """Check on every worker what a build needs there; refuse in one line naming the first worker that lacks it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with _marker(output.parent, output.name) as marker:
        return _probe_workers(client, options, [(marker, True, f"the store's folder {output.parent}")],
                              pickle.dumps((model, tuple(saes), device)))


@contextlib.contextmanager
def analysis_client(options: ClusterOptions, store: Path, cache: Path) -> Iterator[Client]:
    """Make this cluster dask's scheduler while open, once every worker can read the store and write the cache."""
    with cluster_client(options, "cpu", as_default=True) as client:
        cache.mkdir(parents=True, exist_ok=True)
        with _marker(cache, "analysis") as marker:
            _probe_workers(client, options, [(Path(store).resolve() / "zarr.json", False, f"the store {store}"),
                                             (marker, True, f"the analysis cache folder {cache}")])
        yield client


@contextlib.contextmanager
def _marker(folder: Path, name: str) -> Iterator[Path]:
    """A probe file that workers must see: a folder with the same path but another filesystem would lack it."""
    marker = Path(folder).resolve() / f".{name}.{uuid.uuid4().hex}.probe"
    marker.touch()
    try:
        yield marker
    finally:
        marker.unlink(missing_ok=True)


def _probe_workers(client: Client, options: ClusterOptions, paths: list[tuple[Path, bool, str]],
                   needs: bytes | None = None) -> list[str]:
    import cloudpickle

    from saezarr.build import probe

    cloudpickle.register_pickle_by_value(probe)  # a worker without saezarr can unpickle it and say so
    expected = {"version": saezarr.__version__, "code": code_digest(), "needs": needs,
                "paths": [(str(path), writable, what) for path, writable, what in paths]}
    results = client.run(probe.probe_worker, expected, on_error="return")
    for address, result in sorted(results.items()):
        if isinstance(result, BaseException):
            result = f"failed its check ({type(result).__name__}: {one_line(result)})"
        if result:
            raise SaezarrError(f"{options.option}: worker {address} {result}")
    return sorted(results)


def check_worker(expected: dict) -> str | None:
    """On a worker: what it lacks (saezarr code, shared folders, and for a build the model, SAEs, device), or None."""
    if (saezarr.__version__, code_digest()) != (expected["version"], expected["code"]):
        return (
            f"runs saezarr {saezarr.__version__} (code {code_digest()}) but the client runs {expected['version']} "
            f"(code {expected['code']}); install the same saezarr everywhere"
        )
    for path, writable, what in expected["paths"]:
        path = Path(path)
        if not path.exists() or (writable and not os.access(path.parent, os.W_OK)):
            return (
                f"cannot {'see or write' if writable else 'see'} {what} as the client does; it must be on a "
                "filesystem shared by every worker, at the same path"
            )
    if expected["needs"] is None:
        return None
    model, saes, device = pickle.loads(expected["needs"])
    try:
        check_weights(model)
    except SaezarrError as exc:
        return f"lacks the model: {exc}"
    for path in saes:
        if not os.access(path, os.R_OK):
            return f"cannot read the SAE file {path}"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return f"has no CUDA device for --device {device}"
    return None


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A short digest of this saezarr's source files: workers must run the very code the client runs."""
    package = Path(saezarr.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cluster_sae_memory(client: Client, options: ClusterOptions, spec: ComputeSpec) -> int:
    """The default `--sae-memory` on a cluster: the least any worker's device leaves free with the model loaded."""
    if torch.device(spec.device).type != "cuda":
        return default_sae_memory(spec.device)
    pin = _pins(options, spec)
    futures = [client.submit(_budget_on_worker, spec, pin, workers=[address], allow_other_workers=False, pure=False)
               for address in client.scheduler_info()["workers"]]
    return min(client.gather(futures))


def _pins(options: ClusterOptions, spec: ComputeSpec) -> bool:
    """Whether each worker takes its own GPU by its name: a local cluster's workers, asked for plain `cuda`."""
    return options.local_workers is not None and spec.device == "cuda"


def _on_this_worker(spec: ComputeSpec, pin: bool) -> ComputeSpec:
    from distributed import get_worker

    if pin:
        return dataclasses.replace(spec, device=f"cuda:{int(get_worker().name) % torch.cuda.device_count()}")
    return spec


def _budget_on_worker(spec: ComputeSpec, pin: bool) -> int:
    return device_budget(_on_this_worker(spec, pin))


def run_tasks(client: Client, options: ClusterOptions, spec: ComputeSpec, fragments: FragmentIndex,
              work: list[tuple[PassSpec, list[Task]]], store: Store, quiet: bool) -> list[TaskResult]:
    """Run every task on the cluster, marking each unit once its task reports it durable; return the results."""
    from distributed import as_completed

    scattered = client.scatter(fragments, broadcast=True, hash=False)  # token ids reach each worker once
    build_id = uuid.uuid4().hex[:8]
    pin = _pins(options, spec)
    futures = {
        client.submit(_task_on_worker, spec, scattered, pass_, task, pin, code_digest(), priority=-task.pass_index,
                      key=f"saezarr-{build_id}-pass{task.pass_index}-chunk{task.chunk}"): task
        for pass_, tasks in work for task in tasks
    }
    results = []
    total = sum(store.chunk_size(task.chunk) for task in futures.values())
    # marks are file creates: on a network filesystem each is a round trip, so a task's are made at once
    marker = ThreadPoolExecutor(max_workers=MARK_THREADS, thread_name_prefix="saezarr-mark")
    try:
        with marker, tqdm(total=total, unit="frag", disable=quiet, dynamic_ncols=True,
                          desc=f"saezarr build on {len(client.scheduler_info()['workers'])} workers") as bar:
            for future in as_completed(futures, loop=client.loop):
                result = _result(future, options, store)
                list(marker.map(lambda unit: _mark(store, options, result, unit), result.units))
                results.append(result)
                bar.update(store.chunk_size(futures[future].chunk))
    finally:
        client.cancel(list(futures))
    return results


def _mark(store: Store, options: ClusterOptions, result: TaskResult, unit: tuple[int, int]) -> None:
    """Mark a unit a worker wrote, once this client sees its shard (a worker on another filesystem would not)."""
    if not store.shard_written(*unit):
        raise SaezarrError(
            f"{options.option}: worker {result.worker} wrote unit {unit} but this client cannot see its shard in "
            f"{store.path}; the store must be on a filesystem shared by every worker", exit_code=1)
    store.mark_done(*unit)


def _result(future, options: ClusterOptions, store: Store) -> TaskResult:
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except torch.cuda.OutOfMemoryError:
        raise  # the build says which options lower the need
    except OSError as exc:
        raise write_error(exc, store.path) from None
    except KilledWorker as exc:
        raise SaezarrError(
            f"{options.option}: task {future.key} was lost with every worker that ran it ({one_line(exc)}); "
            "the units done are kept: rerun the same command with --resume", exit_code=1) from None
    except Exception as exc:
        if isinstance(exc, SaezarrError):
            raise
        raise SaezarrError(
            f"{options.option}: task {future.key} failed ({type(exc).__name__}: {one_line(exc)}); the units done "
            "are kept: rerun the same command with --resume", exit_code=1) from None


def _task_on_worker(spec: ComputeSpec, fragments: FragmentIndex, pass_: PassSpec, task: Task, pin: bool,
                    code: str) -> TaskResult:
    """Run one task on this dask worker, on its own GPU when the local cluster pins one per worker."""
    from distributed import get_worker
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a worker's bars would interleave with the client's
    worker = get_worker()
    if code != code_digest():  # a worker that joined after the check
        raise SaezarrError(f"worker {worker.address} runs saezarr code {code_digest()}, the client {code}")
    result = run_task(_on_this_worker(spec, pin), fragments, pass_, task)
    result.worker = worker.address
    return result
