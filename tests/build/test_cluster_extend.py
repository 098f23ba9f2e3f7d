"""build --extend on dask clusters: the growth happens in the client before any task, the new units run on the workers,
and the store equals the same extension run in this process, bitwise; with the model, without it (new SAEs read from
the stored residuals), and on a warm cluster that built the store before it grew.

Clusters are real: a `LocalCluster` of two worker processes (`--local-workers 2`), and a cluster whose worker runs in
this process, kept warm between a build and the extension (tests/execution/test_execution.py).
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from clitools import run_cli
from clustertools import in_process_cluster
from faults.faultkit import KillPoint, compare_stores, killed_at

from saezarr.build.pipeline import BuildOptions, build
from saezarr.execution.connect import ClusterOptions
from saezarr.store.format import Store
from saezarr.testing.synthetic import write_config_file

CHUNK = 16
OLD_SENTENCES = 30
RESIDUALS = [0, 12, 25]  # the layers of the tiny SAEs: a new SAE reads the old sentences from the store
TIMEOUT = 300


def options(input, output, config, **extra) -> BuildOptions:
    return BuildOptions(input=input, output=output, config_file=config, chunk_fragments=CHUNK, quiet=True, **extra)


@pytest.fixture(scope="module")
def assets(tiny, tmp_path_factory):
    """A copy of the tiny model (a test takes it away), the first four SAEs and five, the old rows, and an old store
    of them with its residuals; and that store extended in this process by every row and five SAEs (`both`), and by
    the fifth SAE alone (`saes`)."""
    root = tmp_path_factory.mktemp("cluster-extend")
    model = root / "model"
    shutil.copytree(tiny.model, model)
    old_config = write_config_file(root / "old.json", str(model), str(tiny.saes), tiny.configs[:4])
    new_config = write_config_file(root / "new.json", str(model), str(tiny.saes), tiny.configs[:5])
    old_csv = root / "old.csv"
    pd.read_csv(tiny.csv).iloc[:OLD_SENTENCES].to_csv(old_csv, index=False)
    old = root / "old.zarr"
    build(options(old_csv, old, old_config, residuals=RESIDUALS))
    both, saes = shutil.copytree(old, root / "both.zarr"), shutil.copytree(old, root / "saes.zarr")
    assert build(options(tiny.csv, both, new_config, extend=True)).complete
    assert build(options(None, saes, new_config, extend=True)).complete
    return dict(
        root=root, model=model, old_config=old_config, new_config=new_config, old_csv=old_csv, csv=tiny.csv, old=old,
        both=both, saes=saes,
    )  # fmt: skip


def test_an_extension_on_a_local_cluster_equals_one_in_this_process(assets, tmp_path):
    """Both axes grow: the model runs on the workers for the new rows, the new SAE reads the old rows' residuals."""
    store = shutil.copytree(assets["old"], tmp_path / "store.zarr")
    old_id = Store(store).identity
    summary = build(
        options(assets["csv"], store, assets["new_config"], extend=True, cluster=ClusterOptions(local_workers=2))
    )
    assert summary.complete and summary.forward_batches > 0
    assert len(summary.workers) == 2 and all(worker.startswith("tcp://") for worker in summary.workers)
    assert summary.units_written == summary.units_total - summary.units_skipped > 0
    assert compare_stores(store, assets["both"]) == []
    assert Store(store).identity != old_id
    assert not (store / "_saezarr" / "extend.json").exists()


def test_new_saes_from_stored_residuals_run_on_the_cluster_without_the_model(assets, tmp_path):
    store = shutil.copytree(assets["old"], tmp_path / "store.zarr")
    moved = assets["root"] / "model-away"
    assets["model"].rename(moved)  # neither the client nor a worker can load, or even find, the model
    try:
        result = run_cli(
            "build", "--output", store, "--config", assets["new_config"], "--chunk-fragments", CHUNK, "--extend",
            "--quiet", "--local-workers", 2, timeout=TIMEOUT,
        )  # fmt: skip
    finally:
        moved.rename(assets["model"])
    assert result.returncode == 0, result.stderr
    assert "workers: tcp://" in result.stdout
    assert compare_stores(store, assets["saes"]) == []


def test_an_extension_on_a_warm_cluster_that_built_the_store(assets, tmp_path):
    """The worker keeps the store (by its identity), the model and the encoders of the build; the extension renews
    the identity, so its tasks open the grown store."""
    store = tmp_path / "store.zarr"
    with in_process_cluster() as (cluster, client):
        on_cluster = ClusterOptions(scheduler=cluster.scheduler_address)
        built = build(options(assets["old_csv"], store, assets["old_config"], residuals=RESIDUALS, cluster=on_cluster))
        assert compare_stores(store, assets["old"]) == []
        summary = build(options(assets["csv"], store, assets["new_config"], extend=True, cluster=on_cluster))
    assert summary.complete and summary.workers == built.workers and len(built.workers) == 1
    assert compare_stores(store, assets["both"]) == []


def test_a_growth_killed_at_its_commit_finishes_on_the_warm_cluster_that_built_the_store(assets, tmp_path):
    """The growth is committed (the root zarr.json written) and the command SIGKILLed at once: the store has its new
    identity already, so the warm worker, which keeps the store as it was under the old identity, opens it afresh."""
    store = tmp_path / "store.zarr"
    with in_process_cluster() as (cluster, _):
        on_cluster = ClusterOptions(scheduler=cluster.scheduler_address)
        build(options(assets["old_csv"], store, assets["old_config"], residuals=RESIDUALS, cluster=on_cluster))
        old_id = Store(store).identity
        extend = ["build", "--input", str(assets["csv"]), "--output", str(store), "--config", str(assets["new_config"])]
        extend += ["--chunk-fragments", str(CHUNK), "--extend", "--quiet", "--scheduler", cluster.scheduler_address]
        commit = KillPoint("the growth committed", "store.growing.write_consolidated", "after", 1)
        assert killed_at(commit, extend, tmp_path / "killed.err")
        assert Store(store).attrs["configs"] == Store(assets["both"]).attrs["configs"]  # committed, no unit written
        assert build(options(assets["csv"], store, assets["new_config"], extend=True, cluster=on_cluster)).complete
    assert Store(store).identity != old_id
    assert compare_stores(store, assets["both"]) == []


def test_cluster_options_are_checked_before_the_store_is_touched(assets, tmp_path):
    """An unreachable scheduler is one line; the store is as it was (its lock released)."""
    store = shutil.copytree(assets["old"], tmp_path / "store.zarr")
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    result = run_cli(
        "build", "--input", assets["csv"], "--output", store, "--config", assets["new_config"], "--extend", "--quiet",
        "--scheduler", "tcp://127.0.0.1:9", "--worker-timeout", "2", timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the dask scheduler at tcp://127.0.0.1:9" in lines[0], lines
    assert {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()} == before
