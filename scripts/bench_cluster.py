#!/usr/bin/env python
"""Benchmark builds on dask.distributed against the single-process build, and measure the per-unit costs that the
multi-GPU estimate in scripts/BENCHMARKS.md is computed from. Every measured thing runs in a fresh child process.

1. Cluster overhead: the same build as 1 process x 2 threads (the plain build: torch and the writer threads share
   the cores), on a warm LocalCluster of 2 worker processes x 1 thread (started and imported before the clock, each
   with half the cores for torch and for writing, as `--local-workers 2` gives), and with `--local-workers 2` (the
   cluster's start and the workers' imports included); alternated, best of `--repeat`. Ratio = single wall / cluster
   wall. Workload 2 (bench_build's quick assets, its 4N input: ~4000 fragments) is write-bound (tiny model, 8 SAEs of
   width 16384); workload 1 (bench_build's full assets, 315 fragments) compute-bound (Gemma-2-2B widths, 4 layers).
   Chunks are smaller than the default so both workers get tasks (the same chunking on both sides).
2. Per-unit costs at Gemma Scope widths (chunk 512 x 16384 latents): compress+write of one unit on one core, bytes
   per unit on disk, and the CPU encode of one SAE per chunk; dask's task round trip rate on a local cluster.

    python scripts/bench_cluster.py                              # ~8 min on 2 cores
    python scripts/bench_cluster.py --out-md scripts/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.85
WORKLOAD_SIZE = {1: "full", 2: "quick"}  # bench_build's sizes: 300 and ~1000 fragments
CHUNKS = {1: 32, 2: 128}  # enough tasks to share between two workers (the same chunking on both sides)
INPUTS = {1: ("input.csv", "n_fragments"), 2: ("input_x4.csv", "n_fragments_big")}  # W2: its 4N input, ~4000 fragments
_spec = importlib.util.spec_from_file_location("bench_build", Path(__file__).with_name("bench_build.py"))
bench_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_build)


# ------------------------------------------------------------------------------------------------- child tasks


def _warm(threads: int) -> None:
    """On a worker: the imports a first task would pay, and the torch threads `--local-workers` gives it."""
    import torch
    import transformers  # noqa: F401

    import saezarr.build.work  # noqa: F401

    torch.set_num_threads(threads)


def task_build(spec: dict) -> dict:
    """One build, timed without imports: in this process, on a warm LocalCluster, or with `--local-workers`."""
    import logging

    import torch
    from transformers import AutoModel  # noqa: F401 (imported before the clock starts, as in bench_build)

    from saezarr.build.pipeline import BuildOptions, build
    from saezarr.execution.connect import ClusterOptions
    from saezarr.machine import usable_cores

    n, writers, stack = spec.get("workers"), None, contextlib.ExitStack()
    cluster = ClusterOptions()
    if spec.get("mode") == "warm":
        from distributed import Client, LocalCluster

        local = stack.enter_context(
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,
                memory_limit=0,
            )
        )
        writers = max(1, usable_cores() // n)
        with Client(local) as client:
            client.run(_warm, writers)
        cluster = ClusterOptions(scheduler=local.scheduler_address)
    elif spec.get("mode") == "cold":
        cluster = ClusterOptions(local_workers=n)
    options = BuildOptions(
        input=Path(spec["input"]),
        output=Path(spec["output"]),
        config_file=Path(spec["config"]),
        quiet=True,
        overwrite=True,
        chunk_fragments=spec["chunk"],
        workers=writers,
        cluster=cluster,
    )
    with stack:
        started, cpu = time.perf_counter(), time.process_time()
        summary = build(options)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    # the client's own CPU time (with a LocalCluster, its scheduler's too): cores the workers did not get
    return {
        "wall": wall,
        "client_cpu": cpu,
        "n_fragments": summary.n_fragments,
        "units": summary.units_written,
        "bytes": summary.bytes_on_disk,
        "workers": len(summary.workers),
        "torch_threads": torch.get_num_threads(),
    }


def task_cluster_start(spec: dict) -> dict:
    """Start and stop a LocalCluster as a build does (start, connect, first worker, worker check), timed."""
    from saezarr.execution.connect import ClusterOptions, cluster_client

    started = time.perf_counter()
    with cluster_client(ClusterOptions(local_workers=spec["n"]), "cpu") as client:
        client.wait_for_workers(spec["n"])
        up = time.perf_counter() - started
        futures = client.map(abs, range(spec["tasks"]), pure=False)
        t0 = time.perf_counter()
        client.gather(futures)
        rate = spec["tasks"] / (time.perf_counter() - t0)
    return {"start": up, "task_rate": rate}


def task_units(spec: dict) -> dict:
    """Per-unit costs on a finished workload-2 store: compress+write on one thread, bytes; CPU encode per SAE."""
    import numpy as np
    import torch

    from saezarr.build.pipeline import BuildOptions, build
    from saezarr.store.format import Store

    built = Path(spec["scratch"]) / "units-source.zarr"  # Gemma Scope's 512-fragment chunks
    build(
        BuildOptions(
            input=Path(spec["input"]),
            output=built,
            config_file=Path(spec["config"]),
            quiet=True,
            overwrite=True,
            chunk_fragments=512,
        )
    )
    source = Store(built)
    copy = Path(spec["scratch"]) / "units.zarr"
    shutil.copytree(built, copy)
    store = Store(copy, mode="r+")
    chunk = 0
    latents = [
        np.ascontiguousarray(source.array[ci, slice(*source.chunk_bounds(chunk)), :]) for ci in range(store.n_configs)
    ]
    started = time.perf_counter()
    for ci, unit in enumerate(latents):
        store.write_shard(ci, chunk, unit)
    write_s = (time.perf_counter() - started) / len(latents)
    sizes = [store.shard_files(ci, chunk)[0].stat().st_size for ci in range(store.n_configs)]
    nnz = float(np.mean([np.count_nonzero(unit) / unit.shape[0] for unit in latents]))
    x, w = torch.randn(512, 2304), torch.randn(2304, 16384) / 48
    encode = {}
    for threads in (1, torch.get_num_threads()):
        torch.set_num_threads(threads)
        torch.addmm(torch.zeros(16384), x, w)
        t0 = time.perf_counter()
        for _ in range(3):
            torch.addmm(torch.zeros(16384), x, w)
        encode[threads] = (time.perf_counter() - t0) / 3
    return {
        "rows": latents[0].shape[0],
        "width": latents[0].shape[1],
        "write_s": write_s,
        "bytes": float(np.mean(sizes)),
        "l0": nnz,
        "encode_s": {str(k): v for k, v in encode.items()},
    }


CHILD_TASKS = {"build": task_build, "cluster_start": task_cluster_start, "units": task_units}


def run_child(spec: dict, timeout: float = 900) -> dict:
    """Run a task of this script in a fresh process, with bench_build's environment."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # workers inherit it
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(bench_build.RESULT_TAG):
            return json.loads(line[len(bench_build.RESULT_TAG) :])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"bench_cluster: child task {spec['task']} failed (exit {proc.returncode})")


# ------------------------------------------------------------------------------------------------- the run


def overhead(meta: dict, scratch: Path, csv: str, chunk: int, repeat: int, log) -> dict[str, list[dict]]:
    """The same build in this process, on a warm 2-worker cluster and with `--local-workers 2`, alternated."""
    folder = meta["folder"]
    common = {"task": "build", "input": str(folder / csv), "config": str(folder / "config.json"), "chunk": chunk}
    runs: dict[str, list[dict]] = {"single": [], "warm": [], "cold": []}
    for i in range(repeat):
        log(f"    run {i + 1}/{repeat}: 1 process x 2 threads; 2 warm workers x 1 thread; --local-workers 2 ...")
        for mode in runs:
            runs[mode].append(
                run_child({**common, "output": str(scratch / f"{mode}.zarr"), "mode": mode, "workers": 2})
            )
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workloads", default="2,1")
    parser.add_argument("--assets", type=Path, default=Path(tempfile.gettempdir()) / "saezarr-bench")
    parser.add_argument("--out-md", type=Path)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        result = CHILD_TASKS[spec.pop("task")](spec)
        print(bench_build.RESULT_TAG + json.dumps(result), flush=True)
        return 0
    begun = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - begun:6.1f}s] {message}", file=sys.stderr, flush=True)

    lines = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        scratch = Path(tmp)
        log("cluster start and scheduler task rate ...")
        start = run_child({"task": "cluster_start", "n": 2, "tasks": 2000})
        lines.append(
            f"- LocalCluster of 2 workers: start + connect + worker check {start['start']:.2f} s; "
            f"scheduler round trip {start['task_rate']:.0f} no-op tasks/s"
        )
        for workload in [int(w) for w in args.workloads.split(",")]:
            meta = bench_build.ensure_assets(args.assets, workload, WORKLOAD_SIZE[workload], log)
            chunk, (csv, count) = CHUNKS[workload], INPUTS[workload]
            n_fragments = meta[count]
            n_tasks = -(-n_fragments // chunk)
            log(f"workload {workload}: {n_fragments} fragments x {meta['n_configs']} SAEs, {n_tasks} tasks")
            runs = overhead(meta, scratch, csv, chunk, args.repeat, log)
            best = {mode: min(r["wall"] for r in results) for mode, results in runs.items()}
            warm, cold = best["single"] / best["warm"], best["single"] / best["cold"]
            lines.append(
                f"- workload {workload} ({n_fragments} fragments x {meta['n_configs']} SAEs of width "
                f"{meta['width']}, chunk {chunk}: {n_tasks} tasks of {meta['n_configs']} units): "
                + "; ".join(f"{mode} {_runs([r['wall'] for r in results])} s" for mode, results in runs.items())
                + f" (CPU seconds of the client process: {_runs([r['client_cpu'] for r in runs['single']])} single, "
                f"{_runs([r['client_cpu'] for r in runs['warm']])} warm)"
                + f". Throughput ratio on a warm cluster {warm:.2f} (target >= {TARGET_RATIO}: "
                f"{'PASS' if warm >= TARGET_RATIO else 'MISS'}); with the cluster's start and each worker's imports "
                f"(`--local-workers 2`) {cold:.2f}"
            )
            if workload == 2:
                units = run_child(
                    {
                        "task": "units",
                        "input": str(meta["folder"] / "input.csv"),
                        "config": str(meta["folder"] / "config.json"),
                        "scratch": str(scratch),
                    }
                )
                encode = ", ".join(f"{k} thread(s) {v * 1e3:.0f} ms" for k, v in units["encode_s"].items())
                lines.append(
                    f"- per unit ({units['rows']} fragments x {units['width']} latents, mean L0 {units['l0']:.0f}): "
                    f"compress + write on one core {units['write_s'] * 1e3:.1f} ms, {units['bytes'] / 1e3:.0f} kB on "
                    f"disk; CPU encode of one SAE per 512-fragment chunk at d_model 2304: {encode}"
                )
    log("done")
    entry = "\n".join(lines)
    print(entry)
    if args.out_md:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        block = f"### {stamp} - bench_cluster.py ({time.perf_counter() - begun:.0f} s, load {os.getloadavg()[0]:.1f})\n\n{entry}\n\n"
        text = args.out_md.read_text() if args.out_md.exists() else ""
        marker = "<!-- bench_cluster entries -->\n"
        text = text.replace(marker, marker + "\n" + block, 1) if marker in text else text + "\n" + block
        args.out_md.write_text(text)
    return 0


def _runs(walls: list[float]) -> str:
    return "/".join(f"{w:.2f}" for w in walls)


if __name__ == "__main__":
    raise SystemExit(main())
