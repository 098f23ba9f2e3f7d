"""The execution layer: store identity on warm workers, refused stale tasks, checked results, checked workers, TLS.

Clusters are real `distributed.LocalCluster`s with their worker in this process (`processes=False`), so that what
a warm worker keeps between builds is this process's, and CLI runs in subprocesses can reach them over TCP or TLS.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from clitools import run_cli
from clustertools import in_process_cluster
from faults.faultkit import compare_stores, one_error_line, tree_digest

from saezarr.analysis.run import AnalyzeOptions, analyze
from saezarr.build.pipeline import BuildOptions, build
from saezarr.build.planning import plan_build
from saezarr.build.runner import check_result
from saezarr.build.work import ComputeSpec, FragmentIndex, TaskResult, pending_work, run_task
from saezarr.durable.folders import write_durably
from saezarr.errors import SaezarrError
from saezarr.execution.checks import checked_call, code_digest
from saezarr.execution.connect import ClusterOptions
from saezarr.store.format import STORE_ID, Store, create_store, store_identity
from saezarr.testing.synthetic import DEMO_CSV

CHUNK = 16
LOOSE = dict(min_pearson=0.1, min_tpr=0.1, max_fpr=0.5)
TIMEOUT = 240


@pytest.fixture(scope="module")
def csvs(tmp_path_factory) -> tuple[Path, Path]:
    """The demo's first 36 sentences, and all 40: chunks of 16, 16 and 4, then of 16, 16 and 8 fragments."""
    folder = tmp_path_factory.mktemp("csvs")
    rows = pd.read_csv(DEMO_CSV)
    short, long = folder / "short.csv", folder / "long.csv"
    rows.head(36).to_csv(short, index=False)
    rows.to_csv(long, index=False)
    return short, long


def renew_store_id(path: Path) -> str:
    """Give the store at path a new store_id, as an --overwrite or --extend does meanwhile; return the new id."""
    meta_file = Path(path) / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta.setdefault("attributes", {})[STORE_ID] = new_id = uuid.uuid4().hex
    write_durably(meta_file, json.dumps(meta, indent=2).encode())
    return new_id


def _options(csv: Path, store: Path, config: Path, **extra) -> BuildOptions:
    return BuildOptions(
        input=csv, output=store, config_file=config, fragments="final", chunk_fragments=CHUNK, quiet=True, **extra
    )


@pytest.fixture(scope="module")
def long_reference(demo_config, csvs, tmp_path_factory) -> Path:
    """The long CSV built in this process, no cluster."""
    store = tmp_path_factory.mktemp("reference") / "long.zarr"
    build(_options(csvs[1], store, demo_config))
    return store


def test_store_id_is_new_on_each_create_and_renew(demo_config, csvs, tmp_path):
    plan = plan_build(_options(csvs[0], tmp_path / "s.zarr", demo_config))
    store = create_store(tmp_path / "s.zarr", plan.fragments.table, plan.configs, plan.saes[0].width, plan.attrs)
    first = store.identity
    assert len(first) == 32 and store_identity(store.path) == first
    replaced = create_store(
        store.path, plan.fragments.table, plan.configs, plan.saes[0].width, plan.attrs, replace=True
    )
    assert replaced.identity not in ("", first) and store_identity(store.path) == replaced.identity
    renewed = renew_store_id(store.path)
    assert renewed not in (first, replaced.identity) and Store(store.path).identity == renewed
    assert Store(store.path).attrs["configs"] == plan.attrs["configs"]  # the other attributes kept


def test_overwrite_on_a_warm_cluster_equals_a_fresh_build(demo_config, csvs, long_reference, tmp_path):
    """A warm worker that built a store must not write a store built again at its path with the old chunk bounds."""
    store = tmp_path / "store.zarr"
    with in_process_cluster() as (cluster, _):
        on_cluster = ClusterOptions(scheduler=cluster.scheduler_address)
        build(_options(csvs[0], store, demo_config, cluster=on_cluster))
        old = Store(store).identity
        summary = build(_options(csvs[1], store, demo_config, cluster=on_cluster, overwrite=True))
    assert summary.complete and Store(store).identity != old
    assert compare_stores(store, long_reference) == []


def test_a_task_for_a_replaced_store_is_refused_and_writes_nothing(demo_config, csvs, tmp_path):
    options = _options(csvs[0], tmp_path / "s.zarr", demo_config)
    plan = plan_build(options)
    width = plan.saes[0].width
    old = create_store(options.output, plan.fragments.table, plan.configs, width, plan.attrs, CHUNK)
    new = create_store(options.output, plan.fragments.table, plan.configs, width, plan.attrs, CHUNK, replace=True)
    pass_, tasks = pending_work(new, plan.saes, 2**40)[0]
    spec = ComputeSpec(plan.model_info, "cpu", "float32", 16, new.path.resolve(), old.identity, False)
    before = tree_digest(new.path)
    with pytest.raises(SaezarrError) as refused:
        run_task(spec, FragmentIndex.of(plan.fragments), pass_, tasks[0])
    assert str(refused.value) == (
        f"{new.path.resolve()}: the store there was replaced (store_id {new.identity}) since this work was planned "
        f"for store_id {old.identity}; none of its units was marked done: rerun the command against the store as it is now"
    )
    assert tree_digest(new.path) == before
    current = ComputeSpec(plan.model_info, "cpu", "float32", 16, new.path.resolve(), new.identity, False)
    result = run_task(current, FragmentIndex.of(plan.fragments), pass_, tasks[0])  # the same task, for this store
    assert result.store_id == new.identity and result.bounds == new.chunk_bounds(tasks[0].chunk)
    assert all(new.shard_written(*unit) for unit in result.units)


def test_the_client_marks_only_what_matches_the_unit(demo_config, csvs, tmp_path):
    options = _options(csvs[0], tmp_path / "s.zarr", demo_config)
    plan = plan_build(options)
    store = create_store(options.output, plan.fragments.table, plan.configs, plan.saes[0].width, plan.attrs, CHUNK)
    _, tasks = pending_work(store, plan.saes, 2**40)[0]
    task = tasks[-1]  # the short last chunk
    units = [(row, task.chunk) for row in task.rows]
    cluster = ClusterOptions(scheduler="tcp://127.0.0.1:1")
    right = TaskResult(units, worker="w", store_id=store.identity, bounds=store.chunk_bounds(task.chunk))
    check_result(store, cluster.option, task, right)
    start, stop = store.chunk_bounds(task.chunk)
    wrong = {
        "store": (
            TaskResult(units, worker="w", store_id="0" * 32, bounds=(start, stop)),
            f"wrote into store_id {'0' * 32}, but the store at {store.path} is {store.identity}",
        ),
        "bounds": (
            TaskResult(units, worker="w", store_id=store.identity, bounds=(start, stop - 1)),
            f"wrote fragments {(start, stop - 1)} for chunk {task.chunk}, which holds {(start, stop)}",
        ),
        "units": (
            TaskResult(units[:1], worker="w", store_id=store.identity, bounds=(start, stop)),
            f"wrote units {units[:1]} for task units {units}",
        ),
    }
    for result, message in wrong.values():
        with pytest.raises(SaezarrError) as refused:
            check_result(store, cluster.option, task, result)
        assert str(refused.value) == (
            f"scheduler=tcp://127.0.0.1:1: worker w {message}; nothing of it was marked: rerun the same command "
            "with resume=True"
        )


def test_a_task_refuses_a_worker_running_other_code():
    with in_process_cluster() as (_, client):
        assert client.submit(checked_call, abs, code_digest(), -3).result() == 3
        with pytest.raises(SaezarrError) as refused:
            client.submit(checked_call, abs, "0" * 12, -3).result()
    assert f"runs saezarr code {code_digest()}, the client {'0' * 12}" in str(refused.value)


@pytest.fixture(scope="module")
def built(demo_config, csvs, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("built") / "built.zarr"
    build(_options(csvs[1], store, demo_config))
    return store


def test_an_analysis_unit_for_a_replaced_store_is_refused(built, tmp_path):
    import shutil

    from saezarr.analysis.cache.units import feature_units, unit_function
    from saezarr.analysis.stats.pooling import SentenceLayout, pooled_dtype
    from saezarr.store.shards import ChunkFiles

    copy = tmp_path / "copy.zarr"
    shutil.copytree(built, copy)
    store = Store(copy)
    layout = SentenceLayout.of(
        *(store.coordinate(n) for n in ("sentence_index", "is_final_token", "concept_strength_label"))
    )
    shape = (1, layout.n_sentences, store.width)
    pooled = ChunkFiles(
        tmp_path / "pooled.zarr", shape, (1, layout.n_sentences, store.width), pooled_dtype("final", store.dtype)
    )
    compute = unit_function(store, layout, "final", pooled)
    unit = feature_units(store, [0])[0]
    assert compute(unit).shape[1] == unit.stop - unit.start  # for the store as it is
    renewed = renew_store_id(copy)
    with pytest.raises(SaezarrError) as refused:
        compute(unit)
    assert str(refused.value).startswith(
        f"{copy.resolve()}: the store there was replaced (store_id {renewed}) since this work was planned for store_id "
        f"{store.identity}; none of its units was marked done"
    )


def test_a_write_that_began_before_the_store_was_replaced_is_refused(built, tmp_path):
    """The identity is checked again right before each shard is written, not only when a task starts."""
    import numpy as np

    copy = tmp_path / "copy.zarr"
    shutil.copytree(built, copy)
    writer = Store(copy, mode="r+")
    shard = writer.shard_files(0, 0)[0]
    before = shard.read_bytes()
    renewed = renew_store_id(copy)  # what a --overwrite or --extend does to the store at this path meanwhile
    latents = np.zeros((writer.chunk_size(0), writer.width), dtype=np.float32)
    with pytest.raises(SaezarrError, match=rf"the store there was replaced \(store_id {renewed}\)"):
        writer.write_shard(0, 0, latents)
    assert shard.read_bytes() == before


def test_analyze_from_python_runs_on_a_given_cluster(built, tmp_path):
    local = analyze(AnalyzeOptions(built, tmp_path / "local", quiet=True, cache=tmp_path / "c1", **LOOSE))
    with in_process_cluster() as (cluster, client):
        on_cluster = ClusterOptions(scheduler=cluster.scheduler_address)
        clustered = analyze(
            AnalyzeOptions(built, tmp_path / "cluster", quiet=True, cache=tmp_path / "c2", cluster=on_cluster, **LOOSE)
        )
        ran = client.run_on_scheduler(
            lambda dask_scheduler: sorted(p for p in dask_scheduler.task_prefixes if p.startswith("compute_unit"))
        )
    assert ran == ["compute_unit"]
    assert local.n_passing == clustered.n_passing
    assert pd.read_parquet(tmp_path / "cluster" / "features.parquet").equals(
        pd.read_parquet(tmp_path / "local" / "features.parquet")
    )


def test_a_relative_cache_is_sent_to_workers_as_an_absolute_path(built, tmp_path):
    """The worker (here: this process) runs in another folder than the client; the cache lands at the client's."""
    client_folder = tmp_path / "client"
    client_folder.mkdir()
    with in_process_cluster() as (cluster, _):
        process = run_cli(
            "analyze",
            built,
            "--output",
            "out",
            "--quiet",
            "--scheduler",
            cluster.scheduler_address,
            env={"SAEZARR_CACHE": "relative-cache"},
            cwd=client_folder,
            timeout=TIMEOUT,
        )
    assert process.returncode == 0, process.stderr
    assert list((client_folder / "relative-cache" / "analysis").iterdir())
    assert not (Path.cwd() / "relative-cache").exists()


def test_analyze_on_a_scheduler_imports_neither_torch_nor_the_build_stage(built, tmp_path):
    argv = ["analyze", str(built), "--output", str(tmp_path / "out"), "--quiet"]
    code = (
        "import sys, saezarr.cli\n"
        f"rc = saezarr.cli.main({argv!r} + ['--scheduler', sys.argv[1]])\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('saezarr.build.', 'saezarr.models')) and m != 'saezarr.build.build_options')\n"
        "print(bad, file=sys.stderr)\n"
        "sys.exit(rc or (3 if bad else 0))\n"
    )
    with in_process_cluster() as (cluster, _):
        process = subprocess.run(
            [sys.executable, "-c", code, cluster.scheduler_address],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=_env(tmp_path),
        )
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "out" / "ranked_features.csv").exists()


def _env(tmp_path: Path) -> dict:
    import os

    return {**os.environ, "SAEZARR_CACHE": str(tmp_path / "cache")}


# ----------------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A LocalCluster that speaks TLS only, with a temporary CA, and its PEM files for the client."""
    pytest.importorskip("cryptography")
    from distributed.security import Security

    security = Security.temporary()
    folder = tmp_path_factory.mktemp("tls")
    files = {"ca": security.tls_ca_file, "cert": security.tls_client_cert, "key": security.tls_client_key}
    for name, pem in files.items():
        (folder / f"{name}.pem").write_text(pem)
    with in_process_cluster(security=security, protocol="tls://") as (cluster, _):
        yield cluster.scheduler_address, folder


def test_analyze_over_tls(built, tls, tmp_path):
    address, pems = tls
    assert address.startswith("tls://")
    process = run_cli(
        "analyze",
        built,
        "--output",
        tmp_path / "out",
        "--quiet",
        "--scheduler",
        address,
        "--tls-ca-file",
        pems / "ca.pem",
        "--tls-cert",
        pems / "cert.pem",
        "--tls-key",
        pems / "key.pem",
        env={"SAEZARR_CACHE": str(tmp_path / "cache")},
        timeout=TIMEOUT,
    )
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "out" / "ranked_features.csv").exists()


def test_a_tls_scheduler_without_tls_files_is_one_line(built, tls, tmp_path):
    address, _ = tls
    process = run_cli(
        "analyze",
        built,
        "--output",
        tmp_path / "out",
        "--scheduler",
        address,
        "--worker-timeout",
        "5",
        env={"SAEZARR_CACHE": str(tmp_path / "cache")},
        timeout=TIMEOUT,
    )
    assert process.returncode == 2, process.stderr
    line = one_error_line(process.stderr)
    assert line.startswith(f"saezarr: error: --scheduler {address}: cannot reach the dask scheduler at {address}")
    assert "a tls:// scheduler needs --tls-ca-file, --tls-cert and --tls-key" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        (("--tls-cert", "c.pem"), "--tls-cert: TLS options secure the connection to a running scheduler"),
        (
            ("--scheduler", "tls://h:1", "--tls-ca-file", "ca.pem"),
            "--tls-ca-file: TLS needs --tls-cert, --tls-key too",
        ),
        (
            ("--scheduler", "tls://h:1", "--tls-ca-file", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem"),
            "--tls-ca-file ca.pem: no such file",
        ),
    ],
)
def test_tls_options_are_checked_before_anything_runs(built, tmp_path, options, message):
    before = tree_digest(built)
    process = run_cli("analyze", built, "--output", tmp_path / "out", *options, cwd=tmp_path, timeout=TIMEOUT)
    assert process.returncode == 2, process.stderr
    assert message in one_error_line(process.stderr)
    assert tree_digest(built) == before and not (tmp_path / "out").exists()


def test_tls_files_make_a_security_that_requires_encryption(tmp_path):
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("x")
    options = ClusterOptions(
        scheduler="tls://h:1",
        tls_ca_file=tmp_path / "ca.pem",
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
    )
    security = options.security()
    assert security.require_encryption
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == tuple(
        str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key")
    )
    assert ClusterOptions(scheduler="tls://h:1").security() is None  # dask's own config decides
