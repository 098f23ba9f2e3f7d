"""Memory sizing: the SAE budget from a (mocked) CUDA device, writer threads and host buffers, model loading, and
a device out of memory during a build (injected from the real encoder) as one line with a resumable store."""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import pytest
import torch
from clitools import REPO
from faults.faultkit import compare_stores

from saezarr.build.memory import (
    CPU_SAE_MEMORY,
    HOST_BUFFER_CAP,
    WRITER_THREADS_CAP,
    default_sae_memory,
    host_buffer_budget,
    units_in_flight,
    writer_threads,
)
from saezarr.build.pipeline import BuildOptions, ChunkWriter, build
from saezarr.cli import main
from saezarr.inputs.configs import load_config_file
from saezarr.models.language_model import load_model, resolve_model
from saezarr.saes.description import SAEDescription
from saezarr.saes.encoder import Encoder, plan_passes
from saezarr.saes.locate import SAEFile

GB, GiB = 10**9, 2**30
GEMMA_FP32 = 10_457_367_552  # Gemma-2-2B without its LM head (2.61e9 parameters) in float32
CUDA_CONTEXT = 500 * 2**20


def gemma_scope_saes() -> list[SAEFile]:
    """The 135 Gemma Scope 16k SAEs of the shipped config file, as SAEFiles of their real shape (no files read)."""
    configs = load_config_file(REPO / "config" / "gemma_scope_16k_configurations.json").configs
    return [
        SAEFile(
            c,
            SAEDescription("gemma_scope", Path(c.path) / "params.npz", "jumprelu", "W_enc", "b_enc", "threshold"),
            2304,
            16384,
        )
        for c in configs
    ]


def mock_cuda(monkeypatch, total: int, used: int, cached: int = 0) -> None:
    """A CUDA device of `total` bytes with `used` taken (context and model) and `cached` held free by torch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - used - cached, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: used + cached)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: used)


@pytest.mark.parametrize(
    ("total", "dtype_bytes", "passes"),
    [(40 * GB, 4, 1), (80 * GB, 4, 1), (141 * GB, 2, 1), (32 * GiB, 2, 1), (24 * GiB, 2, 2), (16 * GiB, 4, 6)],
    ids=["A100-40GB fp32", "H100-80GB fp32", "H200 bf16", "32GiB bf16", "24GiB bf16", "16GiB fp32"],
)
def test_cuda_default_sae_memory_fits_the_device(monkeypatch, total, dtype_bytes, passes):
    saes = gemma_scope_saes()
    assert len(saes) == 135 and 20.3 * GB < sum(s.encoder_bytes for s in saes) < 20.5 * GB
    model = GEMMA_FP32 * dtype_bytes // 4
    mock_cuda(monkeypatch, total, CUDA_CONTEXT + model)
    budget = default_sae_memory("cuda")
    free = total - CUDA_CONTEXT - model
    assert budget == free - max(2 * GiB, int(free * 0.1))
    assert len(plan_passes(saes, budget)) == passes
    # what the passes hold never exceeds the budget, so the reserve stays free for activations
    assert all(sum(s.encoder_bytes for s in group) <= budget for group in plan_passes(saes, budget))


def test_cuda_default_counts_memory_torch_caches_as_free(monkeypatch):
    mock_cuda(monkeypatch, 40 * GB, CUDA_CONTEXT + GEMMA_FP32, cached=3 * GB)
    with_cache = default_sae_memory("cuda:0")
    mock_cuda(monkeypatch, 40 * GB, CUDA_CONTEXT + GEMMA_FP32)
    assert with_cache == default_sae_memory("cuda:0")


def test_cuda_default_on_a_full_device_is_one_sae_per_pass(monkeypatch):
    mock_cuda(monkeypatch, 12 * GB, 11 * GB)
    assert default_sae_memory("cuda") == 0
    saes = gemma_scope_saes()[:3]
    assert [len(group) for group in plan_passes(saes, 0)] == [1, 1, 1]


def test_cpu_default_sae_memory_is_8_gib_whatever_cuda_says(monkeypatch):
    mock_cuda(monkeypatch, 80 * GB, GB)
    assert default_sae_memory("cpu") == CPU_SAE_MEMORY == 8 * GiB
    assert len(plan_passes(gemma_scope_saes(), CPU_SAE_MEMORY)) == 3


def test_writer_threads_are_capped_on_a_many_core_host(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(128)), raising=False)
    assert writer_threads() == WRITER_THREADS_CAP == 32
    assert writer_threads(64) == 64  # --workers is an explicit override
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert writer_threads() == 3


@pytest.mark.parametrize(
    ("available", "overlap", "units"),
    [(512 * GiB, True, 64), (512 * GiB, False, 32), (4 * GiB, True, 32), (None, True, 64), (10 * 2**20, True, 1)],
    ids=["big host, GPU", "big host, CPU", "4 GiB free", "unknown", "almost nothing free"],
)
def test_units_in_flight_stay_within_the_host_budget(monkeypatch, available, overlap, units):
    monkeypatch.setattr("saezarr.build.memory.available_memory", lambda: available)
    unit = 4 * 512 * 16384  # one Gemma Scope 16k unit of 512 fragments: 32 MiB
    expected_budget = HOST_BUFFER_CAP if available is None else min(HOST_BUFFER_CAP, available // 4)
    assert host_buffer_budget() == expected_budget
    assert units_in_flight(32, unit, overlap) == units
    assert units * unit <= max(expected_budget, unit)


@pytest.mark.parametrize("overlap", [True, False], ids=["GPU mode", "CPU mode"])
def test_a_small_host_budget_bounds_the_writers_buffers_and_keeps_results(
    tiny, tiny_store, tmp_path, monkeypatch, overlap
):
    """With room for 2 units, a build holds at most 3 host buffers (2 held, 1 being filled) and gives the same store
    as one without a budget (tiny_store: the same input, config and chunks; the write mode and the writer threads
    change no byte, tests/build/test_resume.py)."""
    reference = tiny_store.path
    kwargs = dict(
        input=tiny.csv, config_file=tiny.config_file, quiet=True, chunk_fragments=32, workers=4, overlap_writes=overlap
    )
    unit = 4 * 32 * 128
    monkeypatch.setattr("saezarr.build.memory.available_memory", lambda: 4 * 2 * unit)
    live, most, real_host_buffer = set(), [0], ChunkWriter.host_buffer

    def counting_host_buffer(self, rows, width):
        assert self.units == 2 and self.workers == 4
        buffer = real_host_buffer(self, rows, width)
        if id(buffer) not in live:  # a new buffer: alive until the writer drops it
            live.add(id(buffer))
            weakref.finalize(buffer, live.discard, id(buffer))
        most[0] = max(most[0], len(live))
        return buffer

    monkeypatch.setattr(ChunkWriter, "host_buffer", counting_host_buffer)
    bounded = tmp_path / "bounded.zarr"
    assert build(BuildOptions(output=bounded, **kwargs)).complete
    assert 1 <= most[0] <= 3
    assert compare_stores(bounded, reference) == []


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_model_is_loaded_straight_in_its_dtype(tiny, monkeypatch, dtype):
    """Weights arrive in the requested dtype on the device; no module-wide .to() copy follows the load."""
    moves = []
    real_to = torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        moves.append((type(self).__name__, args, kwargs))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    model = load_model(resolve_model(str(tiny.model)), "cpu", dtype)
    tensors = [*model.parameters(), *model.buffers()]
    assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
    assert {t.device for t in tensors} == {torch.device("cpu")}
    assert not model.training
    assert moves == []


def test_device_out_of_memory_is_one_line_and_the_store_resumes(tiny, tiny_store, tmp_path, monkeypatch, capsys):
    """torch's out-of-memory error from the 20th real encode: exit 1, one line naming both options, resumable."""
    full = tiny_store.path  # the same input, config file and chunks, built in one go
    calls, real_encode = [], Encoder.encode

    def encode_until_out_of_memory(self, x, out=None):
        calls.append(1)
        if len(calls) == 20:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 MiB")
        return real_encode(self, x, out=out)

    monkeypatch.setattr(Encoder, "encode", encode_until_out_of_memory)
    store = tmp_path / "store.zarr"
    args = [
        "build",
        "--input",
        str(tiny.csv),
        "--output",
        str(store),
        "--config",
        str(tiny.config_file),
        "--quiet",
        "--chunk-fragments",
        "32",
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    # in-process, transformers' weight-loading bar may precede the line (the command line turns it off)
    lines = [line for line in captured.err.splitlines(keepends=True) if line.startswith("saezarr:")]
    assert len(lines) == 1 and captured.err.endswith(lines[0]), captured.err
    match = re.fullmatch(
        rf"saezarr: error: cpu: out of memory \((\d+) of (\d+) chunks of {re.escape(str(store))} are done and kept\); "
        r"rerun the same command with --resume and a smaller --sae-memory \(this run: 8\.0 GiB\), or start over with "
        r"--overwrite and a smaller --batch-size \(this run: 16\)\n",
        lines[0],
    )
    assert match, lines[0]
    marked = sorted((store / "_saezarr" / "done").glob("*/*"))
    assert 0 < len(marked) == int(match[1]) < int(match[2]) == 6 * 17
    assert not (store / "_saezarr" / "lock").exists()
    monkeypatch.setattr(Encoder, "encode", real_encode)
    assert main([*args, "--resume"]) == 0
    assert compare_stores(store, full) == []
