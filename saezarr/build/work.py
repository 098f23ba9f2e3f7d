"""A build's unit of work, wherever it runs: one fragment chunk through one SAE pass, written shard by shard.

What a task computes is described by picklable values (`ComputeSpec`, `FragmentIndex`, `PassSpec`); `run_task`
computes one (pass, chunk) task and writes its shards durably without marking them, so running it twice writes
the same bytes. A process keeps its model, its current pass's encoders and the open store across tasks
(`saezarr.execution.caches`, the store by its identity). Executors decide where tasks run (`runner.InProcess` here,
`cluster.DaskExecutor` on dask.distributed workers); `runner.Runner` marks what they report.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from saezarr.build.memory import default_sae_memory, units_in_flight, writer_threads
from saezarr.errors import SaezarrError, WriteFailed, option
from saezarr.execution.caches import current_store, process_cache
from saezarr.inputs.fragments import Fragments
from saezarr.models.language_model import ModelInfo, SiteReader, load_model
from saezarr.saes.encoder import Encoder, load_encoder, plan_passes
from saezarr.saes.locate import SAEFile
from saezarr.store.format import Store, refuse_if_replaced
from saezarr.store.residual_arrays import RESIDUAL_UNIT, kept_residuals
from saezarr.store.storage import Location

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class FragmentIndex:
    """What the model reads of the fragments: each sentence's token ids, and each fragment's sentence and position."""

    token_ids: tuple[np.ndarray, ...]
    sentences: np.ndarray
    positions: np.ndarray

    @classmethod
    def of(cls, fragments: Fragments) -> FragmentIndex:
        """The index of a fragment table."""
        return cls(
            token_ids=tuple(fragments.token_ids),
            sentences=fragments.table["sentence_index"].to_numpy(),
            positions=fragments.table["token_position"].to_numpy(),
        )

    @classmethod
    def none(cls) -> FragmentIndex:
        """An empty index, for tasks that read every residual from the store."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(token_ids=(), sentences=empty, positions=empty)


@dataclass(frozen=True)
class ComputeSpec:
    """What every task of a build shares: the model and how to run it, and the store the shards go to."""

    model: ModelInfo | None  # None: no task runs the model (an extension from stored residuals)
    device: str
    dtype: str
    batch_size: int
    store: Location
    store_id: str  # the store's identity (Store.identity): a task for a store since replaced is refused
    overlap_writes: bool  # whether units are written behind the compute (the build's plan decides)
    torch_threads: int | None = None  # None: the process's own setting
    write_threads: int | None = None  # None: one per usable core


@dataclass(frozen=True)
class PassSpec:
    """One SAE pass: the SAEs encoded from one model pass, and the store's config index of each."""

    saes: tuple[SAEFile, ...]
    rows: tuple[int, ...]
    sae_memory: int | None = None  # an encoder wider than this is encoded in tiles within it
    residual_hooks: tuple[str, ...] = ()  # the hooks a residual unit holds, in the pass that writes residual units

    @property
    def sites(self) -> list[str]:
        """The sites the pass reads: its SAEs', and with residual units every hook they hold."""
        return sorted({sae.hook for sae in self.saes} | set(self.residual_hooks))


@dataclass(frozen=True)
class Task:
    """One fragment chunk through one pass, writing the units of `rows` (the pass's configs not yet done) and, with
    `residuals`, the chunk's residual unit."""

    pass_index: int
    chunk: int
    rows: tuple[int, ...]
    residuals: bool = False

    @property
    def units(self) -> list[tuple[int, int]]:
        """The (config index, chunk) units the task writes; RESIDUAL_UNIT stands for the chunk's residual unit."""
        return [(row, self.chunk) for row in self.rows] + ([(RESIDUAL_UNIT, self.chunk)] if self.residuals else [])


@dataclass
class TaskResult:
    """What a task wrote (each unit durable, none marked) and what it cost."""

    units: list[tuple[int, int]]
    forward_batches: int = 0
    model_loads: int = 0
    sae_loads: int = 0
    worker: str = ""
    store_id: str = ""  # the identity of the store it wrote into
    bounds: tuple[int, int] = (0, 0)  # the fragments [start, stop) of the chunk, as the task saw the store


def pending_work(
    store: Store, saes: Sequence[SAEFile], sae_memory: int, max_chunks: int | None = None
) -> list[tuple[PassSpec, list[Task]]]:
    """Each pass that has units left, with one task per chunk that lacks one of its units; `max_chunks` caps the tasks.
    The first pass also writes the residual units still to write."""
    done = store.done_matrix()
    index = {name: i for i, name in enumerate(store.config_names)}
    residual_chunks = set(store.pending_residuals().tolist())
    work: list[tuple[PassSpec, list[Task]]] = []
    for group in plan_passes(list(saes), sae_memory):
        rows = tuple(index[sae.config.name] for sae in group)
        writes_residuals = bool(residual_chunks) and not work
        chunks = set(np.flatnonzero(~done[list(rows)].all(axis=0)).tolist()) if rows else set()
        if writes_residuals:
            chunks |= residual_chunks
        tasks = [
            Task(
                len(work),
                chunk,
                tuple(r for r in rows if not done[r, chunk]),
                writes_residuals and chunk in residual_chunks,
            )
            for chunk in sorted(chunks)
        ]
        if max_chunks is not None:
            tasks, max_chunks = tasks[:max_chunks], max_chunks - min(len(tasks), max_chunks)
        if tasks:
            kept = kept_residuals(store).hooks if writes_residuals else ()
            work.append((PassSpec(tuple(group), rows, sae_memory, kept), tasks))
    return work


def overlaps_writes(device: str) -> bool:
    """Whether writes run behind the compute by default: on a GPU yes, on a CPU they would compete for its cores."""
    return torch.device(device).type != "cpu"


def chunk_residuals(
    reader: SiteReader, fragments: FragmentIndex, start: int, stop: int, batch_size: int
) -> tuple[dict[str, torch.Tensor], int]:
    """Activations {site: [fragment, hidden]} of fragments [start, stop), and the forward batches run; the chunk
    alone decides its batches."""
    sentences, positions = fragments.sentences[start:stop], fragments.positions[start:stop]
    unique = list(dict.fromkeys(sentences.tolist()))
    batches = []
    for first in range(0, len(unique), batch_size):
        batch = unique[first : first + batch_size]
        in_batch = np.isin(sentences, batch)
        row_of = {s: r for r, s in enumerate(batch)}
        rows = np.array([row_of[s] for s in sentences[in_batch]])
        # a causal model needs no token after the chunk's last fragment of a sentence
        token_ids = [fragments.token_ids[s][: positions[sentences == s].max() + 1] for s in batch]
        batches.append((token_ids, rows, positions[in_batch]))
    return reader.read(batches), len(batches)


def compute_chunk(
    reader: SiteReader | None,
    encoders: Sequence[Encoder],
    pass_: PassSpec,
    fragments: FragmentIndex,
    task: Task,
    batch_size: int,
    writer: ChunkWriter,
) -> int:
    """Run one chunk through the model once (only its rows whose residuals the store lacks; no reader is needed if it
    has them all) and through the pass's SAEs for `task.rows`, and write its residual unit if the task has one;
    return the forward batches. Leading rows that an extension keeps are copied from the store, not computed."""
    store = writer.store
    start, stop = store.chunk_bounds(task.chunk)
    skip = _kept_by_all(store, task)
    residuals, batches = task_residuals(reader, store, pass_, fragments, task, batch_size, skip)
    for sae, encoder, row in zip(pass_.saes, encoders, pass_.rows):
        if row in task.rows:
            # the chunk's latents reach the host once, into a buffer the writer recycles
            latents = writer.host_buffer(stop - start, int(store.widths[row]))
            _encode_as_a_full_chunk(encoder, residuals[sae.hook], latents, skip, store.chunk_fragments)
            kept = store.kept_rows(row, task.chunk)
            if kept:  # an extension keeps these rows' latents bitwise as they were
                latents[:kept] = torch.from_numpy(store.read_chunk(row, task.chunk, partial(_first_rows, kept)))
            writer.submit(row, task.chunk, latents)
    if task.residuals:
        arrays = kept_residuals(store)
        if skip:  # the kept rows' residuals, as stored
            stored = _stored(store, arrays.hooks, start, start + skip)
            residuals = {key: torch.cat([value, residuals[key].cpu().float()]) for key, value in stored.items()}
        writer.submit_residuals(task.chunk, {hook: _host(residuals[hook], arrays.dtype) for hook in arrays.hooks})
    return batches


def _encode_as_a_full_chunk(encoder: Encoder, x: torch.Tensor, latents: torch.Tensor, skip: int, rows: int) -> None:
    """Encode x into latents[skip:] as rows [skip:] of a chunk of `rows` rows: a BLAS may round a row by where it
    falls in the matrix (MKL on AMD EPYC does, for rows past the last full block of its kernel), so a partial chunk,
    or the new rows of an extension's partial chunk, are encoded at the places and matrix height of a full one."""
    if skip == 0 and len(x) == rows:
        encoder.encode(x, out=latents)
        return
    padded = x.new_zeros((rows, x.shape[1]))
    padded[skip : skip + len(x)] = x
    latents[skip:] = encoder.encode(padded)[skip : skip + len(x)].to(latents.device)


def _kept_by_all(store: Store, task: Task) -> int:
    """Leading rows of the task's chunk that every unit it writes keeps from the store (an extension's old rows of
    the store's last partial chunk): they need no residuals."""
    kept = [store.kept_rows(row, task.chunk) for row in task.rows]
    if task.residuals:
        kept.append(store.residual_rows_stored(task.chunk))
    return min(kept, default=0)


def needs_model(store: Store, pass_: PassSpec, task: Task, residuals_done: np.ndarray | None) -> bool:
    """Whether a task runs the model: some of its rows need residuals the store does not hold."""
    start, stop = store.chunk_bounds(task.chunk)
    return start + max(_kept_by_all(store, task), _rows_from_store(store, pass_, task, residuals_done)) < stop


def _rows_from_store(store: Store, pass_: PassSpec, task: Task, residuals_done: np.ndarray | None = None) -> int:
    """Leading rows of a task's chunk whose residuals (every site it reads) come from the store."""
    if store.residuals is None or not set(_task_sites(store, pass_, task)) <= set(_stored_sites(store)):
        return 0
    return store.residual_rows_stored(task.chunk, residuals_done)


def _task_sites(store: Store, pass_: PassSpec, task: Task) -> list[str]:
    """The sites a task's units read: its SAEs', and every stored site if it writes the residual unit."""
    sites = {sae.hook for sae, row in zip(pass_.saes, pass_.rows) if row in task.rows}
    return sorted(sites | (set(_stored_sites(store)) if task.residuals else set()))


def _stored_sites(store: Store) -> list[str]:
    """The sites whose activations the store keeps: resid_post of each kept layer, the embeddings (resid_pre of
    layer 0) and the kept sites of other kinds."""
    return list(kept_residuals(store).hooks)


def task_residuals(
    reader: SiteReader | None,
    store: Store,
    pass_: PassSpec,
    fragments: FragmentIndex,
    task: Task,
    batch_size: int,
    skip: int = 0,
) -> tuple[dict[str, torch.Tensor], int]:
    """The activations a task reads for its chunk's rows after the first `skip`, {site: [rows, width]}, read from the store where it holds them and from the model for the other rows;
    and the forward batches run."""
    start, stop = store.chunk_bounds(task.chunk)
    first = start + skip
    stored_stop = max(first, start + _rows_from_store(store, pass_, task))
    parts: list[dict[str, torch.Tensor]] = []
    if stored_stop > first:
        parts.append(_stored(store, _task_sites(store, pass_, task), first, stored_stop))
    batches = 0
    if stored_stop < stop:
        if reader is None:
            raise RuntimeError("a task that runs the model was given no model")
        # the whole chunk runs, in the batches a one-go build runs, and the rows it needs are kept: the floats of
        # a row can depend on what else is in its batch (seen with MKL on AMD EPYC), so a chunk never runs a part
        computed, batches = chunk_residuals(reader, fragments, start, stop, batch_size)
        parts.append({key: value[stored_stop - start :] for key, value in computed.items()})
    if len(parts) == 1:
        residuals = parts[0]
    else:  # float32 where stored and computed rows meet: the stored rows are float32
        residuals = {key: torch.cat([p[key].cpu().float() for p in parts]) for key in parts[0]}
    kept = start + store.residual_rows_stored(task.chunk) if task.residuals else first
    if stored_stop == first and kept > first:  # an extension keeps these rows' residuals bitwise as they were
        stored = _stored(store, _stored_sites(store), first, kept)
        residuals = {key: value.cpu().float() for key, value in residuals.items()}
        for key, value in stored.items():
            residuals[key][: kept - first] = value
    return residuals, batches


def _first_rows(rows: int, block: np.ndarray) -> np.ndarray:
    """A copy of a block's first `rows` rows."""
    return block[:rows].copy()


def _stored(store: Store, sites: Sequence[str], start: int, stop: int) -> dict[str, torch.Tensor]:
    """Activations {site: [rows, width]} of the stored sites among `sites` of fragments [start, stop) of one chunk,
    read from the store."""
    arrays = kept_residuals(store)
    read = arrays.read([hook for hook in arrays.hooks if hook in sites], start, stop)
    return {hook: torch.from_numpy(values.copy()) for hook, values in read.items()}


def _host(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A tensor as a host numpy array of the store's residual dtype, of its own: the writer may write it after the
    tensor's memory serves the next chunk."""
    return tensor.detach().to("cpu", torch.float32, copy=True).numpy().astype(dtype, copy=False)


# what a writer is handed: a unit's latents [rows, width], or a residual unit's activations {hook: [rows, width]}
Unit = torch.Tensor | dict[str, np.ndarray]


class ChunkWriter:
    """Compresses and writes units on worker threads, holding a bounded number of units so memory stays flat.

    With `overlap` (for GPUs), units queue behind the compute. Without it (for CPUs), units gather until there is one
    per thread, then all are written at once while the compute waits: writer threads running beside the model's
    OpenMP threads stall its matmuls, which made overlapped builds slower (scripts/BENCHMARKS.md). Units are written
    durably and unmarked, and listed in `written` once written, for a runner to mark.
    """

    def __init__(
        self,
        store: Store,
        workers: int | None = None,
        overlap: bool = True,
        buffers: list[torch.Tensor] | None = None,
    ):
        self.store = store
        self.workers = writer_threads(workers)
        self.overlap = overlap
        self.written: list[tuple[int, int]] = []
        # units held on the host at once (queued, or gathered), each a chunk_fragments x width float32 buffer
        self.units = units_in_flight(self.workers, 4 * store.chunk_fragments * store.width, overlap)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="saezarr-write")
        self._slots = threading.BoundedSemaphore(self.units)
        self._gathered: list[tuple[int, int, Unit]] = []
        self._free: list[torch.Tensor] = [] if buffers is None else buffers  # a list kept across writers, if given
        self._free_lock = threading.Lock()
        self._error: BaseException | None = None

    def host_buffer(self, rows: int, width: int) -> torch.Tensor:
        """A float32 host tensor for a unit's latents: one whose unit is written, else a new one."""
        # reusing them spares the page faults of a fresh tensor per unit (about 11% of a write-bound build)
        with self._free_lock:
            self._free[:] = [buffer for buffer in self._free if buffer.shape == (rows, width)]
            if self._free:
                return self._free.pop()
        return torch.empty((rows, width), dtype=torch.float32)

    def _write(self, config_index: int, chunk: int, latents: Unit) -> None:
        if isinstance(latents, dict):  # config_index is RESIDUAL_UNIT
            self._write_residuals(chunk, latents)
            return
        self.store.write_shard(config_index, chunk, latents.numpy())
        with self._free_lock:
            self._free.append(latents)
            self.written.append((config_index, chunk))

    def _write_residuals(self, chunk: int, activations: dict[str, np.ndarray]) -> None:
        refuse_if_replaced(self.store.path, self.store.identity)
        kept_residuals(self.store).write_unit(chunk, activations)
        with self._free_lock:
            self.written.append((RESIDUAL_UNIT, chunk))

    def submit_residuals(self, chunk: int, activations: dict[str, np.ndarray]) -> None:
        """Hand over one chunk's residual unit ({hook: [rows, width]} of every stored hook), written like a unit of
        latents."""
        self.submit(RESIDUAL_UNIT, chunk, activations)

    def submit(self, config_index: int, chunk: int, latents: Unit) -> None:
        """Hand over one unit; blocks while units are being written or the queue is full, and raises write errors."""
        self._raise_if_failed()
        if not self.overlap:
            self._gathered.append((config_index, chunk, latents))
            if len(self._gathered) >= self.units:
                self._write_gathered()
            return
        self._slots.acquire()
        self._pool.submit(self._write, config_index, chunk, latents).add_done_callback(self._finished)

    def _write_gathered(self) -> None:
        units, self._gathered = self._gathered, []
        try:
            for _ in self._pool.map(lambda unit: self._write(*unit), units):
                pass
        except OSError as error:
            raise write_error(error, self.store.path) from None

    def _finished(self, future: Future) -> None:
        if future.exception() is not None and self._error is None:
            self._error = future.exception()  # before the slot frees, so no further unit is queued
        self._slots.release()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise write_error(self._error, self.store.path)

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self._write_gathered()  # units gathered but not yet written; dropped (unmarked) after an error
        finally:
            self._pool.shutdown(wait=True)
        if exc[0] is None:
            self._raise_if_failed()


def write_error(error: BaseException, store: Location) -> BaseException:
    """A failed write as one line saying how to continue; other errors unchanged."""
    if isinstance(error, OSError) and not isinstance(error, SaezarrError):  # a StoreDamaged is an OSError too
        where = error.filename or store
        return WriteFailed(
            f"{store}: writing failed at {where}: {error.strerror or error}; "
            f"fix the cause, then rerun the same command with {option('resume', True)} (in place of "
            f"{option('overwrite', True)}, if given)",
            exit_code=1,
        )
    return error


_one_task_at_a_time = threading.Lock()  # tasks share the model and its hooks: a worker with many threads queues them


def task_model(spec: ComputeSpec) -> tuple[PreTrainedModel, int]:
    """This process's model for a spec, loaded unless kept (an old one goes first); also the model loads done."""
    info = spec.model
    assert info is not None  # callers ask for the model only of a spec whose tasks run it

    def load() -> PreTrainedModel:
        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        return load_model(info, spec.device, spec.dtype)

    model, loaded = process_cache.get("model", (spec.model, spec.device, spec.dtype, spec.torch_threads), load)
    return model, int(loaded)


def pass_encoders(spec: ComputeSpec, pass_: PassSpec) -> tuple[list[Encoder], int]:
    """This process's encoders for a pass, one pass's at a time (what --sae-memory budgets); also the SAE loads."""
    encoders, loaded = process_cache.get(
        "encoders",
        (pass_, spec.device),
        lambda: [load_encoder(sae, spec.device, pass_.sae_memory) for sae in pass_.saes],
    )
    return encoders, len(pass_.saes) if loaded else 0


def device_budget(spec: ComputeSpec) -> int:
    """This process's default `--sae-memory`: what its device leaves free once the model is loaded (kept for tasks)."""
    with _one_task_at_a_time:
        if spec.model is not None:
            task_model(spec)
    return default_sae_memory(spec.device)


def run_task(spec: ComputeSpec, fragments: FragmentIndex, pass_: PassSpec, task: Task) -> TaskResult:
    """Compute one task and write its units' shards durably, unmarked; rerunning it writes the same bytes. Refused,
    nothing written, if the store at spec.store is no longer the one spec.store_id names."""
    with _one_task_at_a_time:
        store = current_store(spec.store, spec.store_id, mode="r+")
        model, model_loads = task_model(spec) if spec.model is not None else (None, 0)  # None: every residual stored
        encoders, sae_loads = pass_encoders(spec, pass_)
        buffers, _ = process_cache.get("host buffers", None, list)  # latents' host buffers, recycled across tasks
        writer = ChunkWriter(store, spec.write_threads, spec.overlap_writes, buffers=buffers)
        reading = contextlib.nullcontext() if model is None else SiteReader(model, pass_.sites)
        with reading as reader, writer:
            batches = compute_chunk(reader, encoders, pass_, fragments, task, spec.batch_size, writer)
    return TaskResult(
        sorted(writer.written),
        batches,
        model_loads,
        sae_loads,
        store_id=store.identity,
        bounds=store.chunk_bounds(task.chunk),
    )
