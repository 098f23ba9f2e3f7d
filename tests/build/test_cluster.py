"""Builds on dask.distributed: equal to a single-process build, surviving a killed worker or client, refusing bad clusters.

Clusters are real: a `LocalCluster` of two single-thread worker processes, and `dask scheduler` / `dask worker`
subprocesses. Workers import this checkout's saezarr through the inherited PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from clitools import run_cli, run_main
from faults.faultkit import CHUNK as FAULTS_CHUNK
from faults.faultkit import compare_stores, count_marks, one_error_line

from saezarr.build.pipeline import BuildOptions, build
from saezarr.execution.connect import ClusterOptions
from saezarr.testing.synthetic import DEMO_CSV

CHUNK = 16  # 34 chunks x 6 configs: many tasks, so kills land mid-build
TIMEOUT = 240


def build_args(store: Path, config: Path, *extra) -> list:
    return [
        "build",
        "--input",
        DEMO_CSV,
        "--output",
        store,
        "--config",
        config,
        "--chunk-fragments",
        CHUNK,
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(demo_reference) -> Path:
    """A single-process build in a test process (tests/conftest.py: the demo CSV, chunks of CHUNK fragments)."""
    assert CHUNK == FAULTS_CHUNK  # the chunking demo_reference is built with
    return demo_reference


def _env() -> dict:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}


def _dask(
    role: str, *args, prefix: tuple = (), flags: tuple = (), env: dict | None = None, log: Path
) -> subprocess.Popen:
    """Start `dask scheduler` or `dask worker` (as `python -m distributed.cli.dask_ROLE`) in its own session."""
    command = [*prefix, sys.executable, *flags, "-m", f"distributed.cli.dask_{role}", *map(str, args)]
    # run from the log's folder: `python -m` puts the working folder first on sys.path
    return subprocess.Popen(
        command,
        env=env or _env(),
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        cwd=log.parent,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@contextlib.contextmanager
def scheduler(folder: Path):
    """A `dask scheduler` subprocess; yields its scheduler file once written."""
    sched_file = folder / "sched.json"
    process = _dask(
        "scheduler", "--scheduler-file", sched_file, "--port", 0, "--no-dashboard", log=folder / "scheduler.log"
    )
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert process.poll() is None and time.monotonic() < deadline, (folder / "scheduler.log").read_text()
            time.sleep(0.1)
        yield sched_file
    finally:
        _stop(process)


@contextlib.contextmanager
def workers(sched_file: Path, n: int = 1, prefix: tuple = (), flags: tuple = (), env: dict | None = None):
    """n `dask worker --nthreads 1 --no-nanny` subprocesses, yielded (with their addresses) once all joined."""
    from distributed import Client

    folder = sched_file.parent
    processes = [
        _dask(
            "worker",
            "--scheduler-file",
            sched_file,
            "--nthreads",
            1,
            "--no-nanny",
            "--no-dashboard",
            prefix=prefix,
            flags=flags,
            env=env,
            log=folder / f"worker{i}.log",
        )
        for i in range(n)
    ]
    try:
        with Client(scheduler_file=str(sched_file), timeout=30) as client:
            client.wait_for_workers(n, timeout=90)
            addresses = {pid: address for address, pid in client.run(os.getpid).items()}
        yield [(process, addresses.get(process.pid)) for process in processes]
    finally:
        for process in processes:
            _stop(process)
        with Client(scheduler_file=str(sched_file), timeout=30) as client:
            deadline = time.monotonic() + 30
            while client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.1)


def _wait_for_marks(store: Path, process: subprocess.Popen, at_least: int = 1) -> int:
    deadline = time.monotonic() + TIMEOUT
    while (marks := count_marks(store)) < at_least:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no unit was marked"
        time.sleep(0.01)
    return marks


def test_local_cluster_build_equals_single_process(demo_config, reference, tmp_path):
    store = tmp_path / "local.zarr"
    summary = build(
        BuildOptions(
            input=DEMO_CSV,
            output=store,
            config_file=demo_config,
            chunk_fragments=CHUNK,
            quiet=True,
            cluster=ClusterOptions(local_workers=2),
        )
    )
    assert summary.complete and summary.units_written == summary.units_total == 204
    assert len(summary.workers) == 2 and all(w.startswith("tcp://") for w in summary.workers)
    assert summary.sae_loads == 12  # each worker process loads the pass's 6 encoders once and keeps them
    assert compare_stores(store, reference) == []
    assert f"2 workers: {summary.workers[0]}, {summary.workers[1]}" in summary.line()


def test_dask_cli_cluster_survives_a_killed_worker(demo_config, reference, tmp_path):
    """A worker SIGKILLed mid-build: the scheduler reruns its tasks on the other, the store equals the reference."""
    store = tmp_path / "killed-worker.zarr"
    with scheduler(tmp_path) as sched_file, workers(sched_file, 2) as started:
        build_process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "saezarr",
                *map(str, build_args(store, demo_config, "--scheduler-file", sched_file)),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        marks = _wait_for_marks(store, build_process)
        (victim, victim_address), (_, survivor) = started
        os.kill(victim.pid, signal.SIGKILL)
        out, err = build_process.communicate(timeout=TIMEOUT)
    assert build_process.returncode == 0, err
    assert marks < 204, "the worker was killed after the build"
    assert out.startswith(f"saezarr: built {store}") and survivor in out, out
    assert compare_stores(store, reference) == []


def test_killed_client_resumes_without_a_cluster(demo_config, reference, tmp_path):
    store = tmp_path / "killed-client.zarr"
    client = subprocess.Popen(
        [sys.executable, "-m", "saezarr", *map(str, build_args(store, demo_config, "--local-workers", 2))],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for_marks(store, client)
        os.kill(
            client.pid, signal.SIGKILL
        )  # the client alone; its local workers are stopped below, as a batch job's are
        client.wait(timeout=30)
    finally:
        _stop(client)  # the rest of its process group: orphaned local workers
    assert count_marks(store) < 204
    resumed = run_main(*build_args(store, demo_config, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "already done" in resumed.stdout and "workers" not in resumed.stdout
    assert compare_stores(store, reference) == []


def _refused(demo_config, store: Path, *options, code: int = 2) -> str:
    process = run_cli(*build_args(store, demo_config, *options), timeout=TIMEOUT)
    assert process.returncode == code, process.stderr
    assert not store.exists(), "a refused cluster build must write nothing"
    assert not list(store.parent.glob(f".{store.name}.*")), "no probe or staging file is left"
    return one_error_line(process.stderr)


def test_unreachable_scheduler(demo_config, tmp_path):
    line = _refused(demo_config, tmp_path / "out.zarr", "--scheduler", "tcp://127.0.0.1:9", "--worker-timeout", "2")
    assert "--scheduler tcp://127.0.0.1:9: cannot reach the dask scheduler at tcp://127.0.0.1:9 within 2 s" in line
    assert "nothing was written" in line


def test_not_a_scheduler_file(demo_config, tmp_path):
    line = _refused(demo_config, tmp_path / "out.zarr", "--scheduler-file", tmp_path / "missing.json")
    assert f"--scheduler-file {tmp_path / 'missing.json'}: not a dask scheduler file (FileNotFoundError" in line


@pytest.fixture(scope="module")
def lone_scheduler(tmp_path_factory):
    """A scheduler that each test below gives one bad worker (or none)."""
    with scheduler(tmp_path_factory.mktemp("lone-scheduler")) as sched_file:
        yield sched_file


def test_no_workers(demo_config, lone_scheduler, tmp_path):
    address = json.loads(lone_scheduler.read_text())["address"]
    line = _refused(demo_config, tmp_path / "out.zarr", "--scheduler-file", lone_scheduler, "--worker-timeout", "3")
    assert f"no dask worker joined the scheduler at {address} within 3 s (--worker-timeout)" in line


def _with_unshare(mount_over: Path) -> tuple:
    """A command prefix running the worker where `mount_over` is an empty tmpfs, as on a node that lacks that folder."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root or user namespaces) to give one worker its own view of a folder")
    return ("unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{mount_over}" && exec "$0" "$@"')


def _model_dir(demo_config: Path) -> Path:
    return Path(json.loads(demo_config.read_text())["model"])


def _other_saezarr(tmp_path: Path) -> dict:
    """An environment whose saezarr is a copy of this one with one source file changed."""
    copy = tmp_path / "other-saezarr"
    shutil.copytree(Path(__file__).resolve().parents[2] / "saezarr", copy / "saezarr")
    with open(copy / "saezarr" / "machine.py", "a") as file:
        file.write("\n# a later edit\n")
    return {**_env(), "PYTHONPATH": str(copy)}


@pytest.mark.parametrize("bad", ["no saezarr", "other saezarr", "store folder unseen", "no model"])
def test_bad_worker_is_named(demo_config, lone_scheduler, tmp_path, bad):
    store = tmp_path / "out" / "out.zarr"
    store.parent.mkdir()
    prefix, flags, env = (), (), None
    if bad == "no saezarr":  # no site module: dask importable from PYTHONPATH, saezarr's editable install not
        flags, env = ("-S",), {**_env(), "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    elif bad == "other saezarr":
        env = _other_saezarr(tmp_path)
    elif bad == "store folder unseen":
        prefix = _with_unshare(store.parent)
    else:
        prefix = _with_unshare(_model_dir(demo_config))
    with workers(lone_scheduler, 1, prefix=prefix, flags=flags, env=env) as started:
        line = _refused(demo_config, store, "--scheduler-file", lone_scheduler)
    address = started[0][1]
    assert f"--scheduler-file {lone_scheduler}: worker {address} " in line
    expected = {
        "no saezarr": "cannot import saezarr (ModuleNotFoundError: No module named 'saezarr')",
        "other saezarr": "runs saezarr 0.1.0 (code ",
        "store folder unseen": f"cannot see or write the store's folder {store.parent} as the client does",
        "no model": f"lacks the model: --model {_model_dir(demo_config)}: no *.safetensors weights",
    }[bad]
    assert expected in line
    if bad == "other saezarr":
        assert "but the client runs 0.1.0 (code " in line and "install the same saezarr everywhere" in line


def test_a_worker_joining_later_is_checked(lone_scheduler, tmp_path):
    """A worker that joins after the start (adaptive, jobqueue) gets the check plugin; running other code, it refuses."""
    from distributed import Client

    from saezarr.errors import SaezarrError
    from saezarr.execution.checks import watch_workers
    from saezarr.execution.probe import PLUGIN_NAME
    from saezarr.execution.running import map_units, units_run_on

    with Client(scheduler_file=str(lone_scheduler), timeout=30) as client:
        watch_workers(client)  # no worker yet
        with workers(lone_scheduler, 1, env=_other_saezarr(tmp_path)) as started:
            problems = client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].problem)
            with units_run_on(client), pytest.raises(SaezarrError) as refused:
                list(map_units(abs, [-1]))
    address = started[0][1]
    assert (
        "runs saezarr 0.1.0 (code " in problems[address] and "install the same saezarr everywhere" in problems[address]
    )
    assert str(refused.value).startswith(f"worker {address} runs saezarr 0.1.0 (code ")


LOOSE = ("--min-pearson", "0.1", "--min-tpr", "0.1", "--max-fpr", "0.5")


def test_analyze_on_a_cluster_equals_local(reference, lone_scheduler, tmp_path):
    """`analyze --scheduler-file`: the computations run on the cluster's workers; the outputs equal a local run."""
    import pandas as pd

    def analyze(name: str, *extra) -> subprocess.CompletedProcess:
        return run_cli(
            "analyze",
            reference,
            "--output",
            tmp_path / name,
            "--quiet",
            *LOOSE,
            *extra,
            env={"SAEZARR_CACHE": str(tmp_path / f"cache-{name}")},
            timeout=TIMEOUT,
        )

    local = analyze("local")
    with workers(lone_scheduler, 1) as started:
        clustered = analyze("cluster", "--scheduler-file", lone_scheduler)
    assert local.returncode == 0 and clustered.returncode == 0, local.stderr + clustered.stderr
    assert started[0][1]  # a worker was there to compute it
    from distributed import Client

    def finished_by_prefix(dask_scheduler) -> dict[str, int]:  # a local function: pickled by value to the scheduler
        return {
            name: sum(prefix.state_counts.get(state, 0) for state in ("memory", "released", "forgotten"))
            for name, prefix in dask_scheduler.task_prefixes.items()
        }

    with Client(scheduler_file=str(lone_scheduler), timeout=TIMEOUT) as client:
        ran = client.run_on_scheduler(finished_by_prefix)
    assert ran.get("compute_unit", 0) >= 6  # every (config, feature chunk) unit of the 6 configs ran on the cluster
    for name in ("features.parquet",):
        assert pd.read_parquet(tmp_path / "cluster" / name).equals(pd.read_parquet(tmp_path / "local" / name))
    assert (tmp_path / "cluster" / "ranked_features.csv").read_text() == (
        tmp_path / "local" / "ranked_features.csv"
    ).read_text()


def test_analyze_refuses_a_worker_that_cannot_see_the_store(reference, lone_scheduler, tmp_path):
    with workers(lone_scheduler, 1, prefix=_with_unshare(reference.parent)) as started:
        process = run_cli(
            "analyze",
            reference,
            "--output",
            tmp_path / "out",
            "--quiet",
            "--scheduler-file",
            lone_scheduler,
            env={"SAEZARR_CACHE": str(tmp_path / "cache")},
        )
    assert process.returncode == 2, process.stderr
    line = one_error_line(process.stderr)
    assert (
        f"--scheduler-file {lone_scheduler}: worker {started[0][1]} cannot see the store {reference} as the client does"
        in line
    )
    assert not (tmp_path / "out").exists()


def _imports_torch(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python, then fail (exit 3) if torch got imported."""
    check = (
        "\nimport sys\nif 'torch' in sys.modules:\n    print('torch was imported', file=sys.stderr)\n    sys.exit(3)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code + check],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**_env(), **(env or {})},
    )


def test_cluster_connection_code_imports_no_torch():
    process = _imports_torch(
        "import saezarr.execution.connect, saezarr.execution.checks, saezarr.execution.probe, saezarr.cli"
    )
    assert process.returncode == 0, process.stderr


def test_analyze_on_a_cluster_imports_no_torch(reference, lone_scheduler, tmp_path):
    """`analyze --scheduler-file` imports torch neither in the client nor on the workers (seconds, or not installed)."""
    from distributed import Client

    argv = [
        "analyze",
        str(reference),
        "--output",
        str(tmp_path / "out"),
        "--quiet",
        *LOOSE,
        "--scheduler-file",
        str(lone_scheduler),
    ]
    code = f"import sys, saezarr.cli\nrc = saezarr.cli.main({argv!r})\nif rc:\n    sys.exit(rc)"
    with workers(lone_scheduler, 1):
        process = _imports_torch(code, env={"SAEZARR_CACHE": str(tmp_path / "cache")})
        with Client(scheduler_file=str(lone_scheduler), timeout=30) as client:
            on_workers = client.run(lambda: "torch" in sys.modules)
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "out" / "ranked_features.csv").exists()
    assert on_workers and not any(on_workers.values()), f"a worker imported torch: {on_workers}"
