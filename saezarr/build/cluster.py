"""A build's tasks on dask.distributed workers: what a worker needs for them, and the executor that runs them there.

Connecting, checking every worker's code and shared folders, and running tasks is `saezarr.execution`'s job; this
module adds what only a build needs (the model, SAEs, device, GPU memory).

The build process stays the client and the only writer of marks (`runner.Runner`): workers compute tasks
(`work.run_task`) and write their shards straight into the store on the shared filesystem or bucket; the client
marks a unit once its task reports the shard durable, for this very store and chunk, and the client itself sees it.
A worker that dies mid-task has its task rerun elsewhere by the scheduler (up to
`distributed.scheduler.allowed-failures` times); a task is idempotent, so a rerun rewrites the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from saezarr.build.memory import default_sae_memory
from saezarr.build.runner import Work
from saezarr.build.work import (
    ComputeSpec,
    FragmentIndex,
    PassSpec,
    Task,
    TaskResult,
    device_budget,
    run_task,
)
from saezarr.errors import ClusterError, SaezarrError, one_line, option
from saezarr.execution.checks import probe_marker, probe_workers
from saezarr.execution.connect import ClusterOptions
from saezarr.execution.running import completed, submit_checked
from saezarr.machine import usable_cores
from saezarr.models.language_model import ModelInfo, check_weights
from saezarr.store.storage import Location, unreachable

if TYPE_CHECKING:
    from distributed import Client


def local_spec(spec: ComputeSpec, n_workers: int) -> ComputeSpec:
    """A spec for N workers on this node: each gets its share of the cores for torch and, unless the spec says how
    many, for writing."""
    share = max(1, usable_cores() // n_workers)
    threads = share if torch.device(spec.device).type == "cpu" else None
    return dataclasses.replace(spec, torch_threads=threads, write_threads=spec.write_threads or share)


def check_workers(
    client: Client,
    options: ClusterOptions,
    model: ModelInfo | None,
    saes: Sequence[Path],
    device: str,
    output: Location,
) -> list[str]:
    """Check on every worker what a build needs there; refuse in one line naming the first worker that lacks it. A
    store at a URL needs no shared file system: each worker is asked to reach it instead."""
    if isinstance(output, str):
        return probe_workers(client, options, [], (check_build_needs, model, tuple(saes), device, output))
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with probe_marker(output.parent, output.name) as marker:
        return probe_workers(
            client,
            options,
            [(marker, True, f"the store's folder {output.parent}")],
            (check_build_needs, model, tuple(saes), device),
        )


def check_build_needs(model: ModelInfo | None, saes: Sequence[Path], device: str, url: str | None = None) -> str | None:
    """On a worker: what it lacks of a build's model (None: no task runs it), SAE files, device and, for a store at
    a URL, access to it; or None."""
    try:
        if model is not None:
            check_weights(model)
    except SaezarrError as exc:
        return f"lacks the model: {exc.message}"
    if url is not None and (problem := unreachable(url)):
        return problem
    for path in saes:
        if not os.access(path, os.R_OK):
            return f"cannot read the SAE file {path}"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return f"has no CUDA device for {option('device', device)}"
    return None


def cluster_sae_memory(client: Client, options: ClusterOptions, spec: ComputeSpec) -> int:
    """The default `--sae-memory` on a cluster: the least any worker's device leaves free with the model loaded."""
    if torch.device(spec.device).type != "cuda":
        return default_sae_memory(spec.device)
    pin = _pins(options, spec)
    futures = [
        submit_checked(client, _budget_on_worker, spec, pin, workers=[address], allow_other_workers=False, pure=False)
        for address in client.scheduler_info()["workers"]
    ]
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


class DaskExecutor:
    """Runs the tasks on a dask cluster's checked workers, each pass's before the next's where it can."""

    remote = True

    def __init__(self, client: Client, options: ClusterOptions):
        self.client, self.options = client, options
        self.label = options.option

    def prepared(self, spec: ComputeSpec) -> ComputeSpec:
        """A local cluster's spec shares this node's cores among its workers."""
        if self.options.local_workers is None:
            return spec
        return local_spec(spec, self.options.local_workers)

    def sae_memory(self, spec: ComputeSpec) -> int:
        """The least any worker's device leaves free with the model loaded."""
        return cluster_sae_memory(self.client, self.options, spec)

    def description(self) -> str:
        """The bar's name, with the workers counted."""
        return f"saezarr build on {len(self.client.scheduler_info()['workers'])} workers"

    def results(
        self, spec: ComputeSpec, fragments: FragmentIndex, work: Work, bar: tqdm
    ) -> Generator[tuple[Task, TaskResult], None, None]:
        """Submit every task, then yield each with its result as it finishes; the tasks left are cancelled on close."""
        client = self.client
        scattered = client.scatter(fragments, broadcast=True, hash=False)  # token ids reach each worker once
        build_id = uuid.uuid4().hex[:8]
        pin = _pins(self.options, spec)
        futures = {
            submit_checked(
                client,
                _task_on_worker,
                spec,
                scattered,
                pass_,
                task,
                pin,
                priority=-task.pass_index,
                key=f"saezarr-{build_id}-pass{task.pass_index}-chunk{task.chunk}",
            ): task
            for pass_, tasks in work
            for task in tasks
        }
        with contextlib.closing(completed(client, futures)) as finished:  # closed: the tasks left are cancelled
            for task, future in finished:
                yield task, _result(future, self.label)


def _result(future, label: str) -> TaskResult:
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except (torch.cuda.OutOfMemoryError, OSError):
        raise  # the build says which options lower the need, or how to go on after a failed write
    except KilledWorker as exc:
        raise ClusterError(
            f"{label}: task {future.key} was lost with every worker that ran it ({one_line(exc)}); "
            f"the units done are kept: rerun the same command with {option('resume', True)}",
            exit_code=1,
        ) from None
    except Exception as exc:
        if isinstance(exc, SaezarrError):
            raise
        raise ClusterError(
            f"{label}: task {future.key} failed ({type(exc).__name__}: {one_line(exc)}); the units done "
            f"are kept: rerun the same command with {option('resume', True)}",
            exit_code=1,
        ) from None


def _task_on_worker(spec: ComputeSpec, fragments: FragmentIndex, pass_: PassSpec, task: Task, pin: bool) -> TaskResult:
    """Run one task on this dask worker, on its own GPU when the local cluster pins one per worker."""
    from distributed import get_worker
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a worker's bars would interleave with the client's
    result = run_task(_on_this_worker(spec, pin), fragments, pass_, task)
    result.worker = get_worker().address
    return result
