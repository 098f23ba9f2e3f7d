"""Memory budgets of a build: SAE encoders per pass on the device, and the writer's threads and host buffers."""

from __future__ import annotations

import torch

from saezarr.machine import available_memory, usable_cores

CPU_SAE_MEMORY = 8 * 2**30  # leaves room for Gemma-2-2B in float32 (~10.5 GB) on a 24 GiB host
DEVICE_RESERVE_FRACTION = 0.1  # of the device's free memory, kept for activations and the allocator's slack
DEVICE_RESERVE_MIN = 2 * 2**30  # batch 16 of 512-token sentences in eager attention stays below this
WRITER_THREADS_CAP = 32  # zstd level 1 runs ~1-2 GB/s per thread: 32 outpace any single GPU's latents
HOST_BUFFER_CAP = 8 * 2**30
HOST_BUFFER_SHARE = 0.25  # of the host memory available when the build starts


def default_sae_memory(device: str) -> int:
    """The default `--sae-memory`: on CUDA the device's free memory less a reserve, on a CPU 8 GiB."""
    if torch.device(device).type != "cuda":
        return CPU_SAE_MEMORY
    free, _ = torch.cuda.mem_get_info(device)
    # blocks torch's caching allocator holds but no tensor uses are free to the encoders too
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(free - max(DEVICE_RESERVE_MIN, int(free * DEVICE_RESERVE_FRACTION)), 0)


def writer_threads(requested: int | None = None) -> int:
    """Threads that compress and write: as asked, else one per usable core up to WRITER_THREADS_CAP."""
    return requested or min(usable_cores(), WRITER_THREADS_CAP)


def host_buffer_budget() -> int:
    """Host memory for latents waiting to be written: a quarter of what is available, at most HOST_BUFFER_CAP."""
    available = available_memory()
    return HOST_BUFFER_CAP if available is None else min(HOST_BUFFER_CAP, int(available * HOST_BUFFER_SHARE))


def units_in_flight(threads: int, unit_bytes: int, overlap: bool) -> int:
    """Units of latents the writer holds at once: two per thread (one per thread without overlap), within the budget."""
    wanted = 2 * threads if overlap else threads
    return max(1, min(wanted, host_buffer_budget() // max(unit_bytes, 1)))


def host_memory_bound(encoder_bytes: int, unit_bytes: int, threads: int, overlap: bool) -> int:
    """Host memory a build's encoding and writing take at most, beyond the model and the interpreter.

    `encoder_bytes`: the pass's encoders on the host (on a CPU, their mapped weights files: page cache; on a GPU
    host, one tile being copied, within --sae-memory). Then the units the writer holds (`units_in_flight`), the one
    being computed, and one shard's compressed bytes per writer thread (at most a unit each). Units shrink with the
    width (store.layout.default_chunk_fragments)."""
    held = units_in_flight(threads, unit_bytes, overlap) + 1 + threads
    return encoder_bytes + held * unit_bytes
