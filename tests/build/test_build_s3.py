"""Every command on a store in a bucket (a real S3 server on loopback, moto) gives what it gives on local disk:
build, resume, overwrite, --residuals, --extend, dask workers writing straight to the bucket, info, export-npz,
analyze and open_store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clitools import run_cli, run_main
from s3tools import assert_same_objects

import saezarr
from saezarr.testing.synthetic import DEMO_CSV

CHUNK = "64"


def _build(demo_config: Path, output: str | Path, *extra: str, csv: Path = DEMO_CSV) -> str:
    args = ["build", "--input", csv, "--output", output, "--config", demo_config, "--chunk-fragments", CHUNK]
    done = run_main(*args, "--quiet", *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def local_demo(demo_config, tmp_path_factory) -> Path:
    """The demo built on local disk by the command line (`_build`): what the builds into the bucket must hold. Read
    only."""
    local = tmp_path_factory.mktemp("local-demo") / "demo.zarr"
    _build(demo_config, local)
    return local


def _exports_equal(store: str | Path, reference: str | Path, tmp_path: Path, *extra: str) -> None:
    ours, theirs = tmp_path / "npz-ours", tmp_path / "npz-theirs"
    for source, target in ((store, ours), (reference, theirs)):
        done = run_cli("export-npz", source, "--output", target, *extra)
        assert done.returncode == 0, done.stderr
    names = sorted(path.name for path in theirs.iterdir())
    assert names and sorted(path.name for path in ours.iterdir()) == names
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_build_info_export_analyze_and_open_store_on_s3(bucket, demo_config, local_demo, tmp_path):
    """A store built into a bucket holds the local build's objects byte for byte; info, export-npz, analyze and
    open_store read it as they read the local one; --resume finds it done; nothing local is made for the URL."""
    url = f"s3://{bucket}/runs/demo.zarr"
    local = local_demo
    _build(demo_config, url)
    assert_same_objects(url, local)

    info = run_cli("info", url)
    assert info.returncode == 0, info.stderr
    assert f"store        {url} " in info.stdout
    assert "6 complete" in info.stdout

    _exports_equal(url, local, tmp_path)

    analyses = {}
    for name, source in (("s3", url), ("local", local)):
        out = tmp_path / f"analysis-{name}"
        done = run_cli("analyze", source, "--output", out, "--min-pearson", "0.2", "--permutations", "20")
        assert done.returncode == 0, done.stderr
        analyses[name] = pd.read_parquet(out / "features.parquet")
    pd.testing.assert_frame_equal(analyses["s3"], analyses["local"])

    ours, theirs = saezarr.open_store(url), saezarr.open_store(local)
    np.testing.assert_array_equal(ours["activations"].values, theirs["activations"].values)
    assert list(ours["original_sentence"].values) == list(theirs["original_sentence"].values)

    resumed = run_main("build", "--input", DEMO_CSV, "--output", url, "--config", demo_config, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "chunks written 0, already done 54 of 54" in resumed.stdout
    assert_same_objects(url, local)
    assert not any(path.name.startswith("s3") for path in Path.cwd().iterdir())


def test_overwrite_residuals_and_extend_on_s3_equal_local(bucket, demo_config, tmp_path):
    """--overwrite of a store in a bucket, then a --residuals build of half the rows grown by --extend to all of
    them, holds the same objects as the same commands on disk."""
    half = tmp_path / "half.csv"
    lines = DEMO_CSV.read_text().splitlines()
    half.write_text("\n".join(lines[:21]) + "\n")
    url, local = f"s3://{bucket}/grown.zarr", tmp_path / "grown.zarr"
    _build(demo_config, url, "--max-chunks", "1")  # a store saezarr wrote, replaced below
    for output, first in ((url, "--overwrite"), (local, None)):
        _build(demo_config, output, "--residuals", *([first] if first else []), csv=half)
        _build(demo_config, output, "--extend")
    assert_same_objects(url, local)
    _exports_equal(url, local, tmp_path, "--per-sentence")


def test_dask_workers_write_straight_to_the_bucket(bucket, demo_config, local_demo, tmp_path):
    """--local-workers: the worker check asks each worker to reach the bucket (no shared folder is probed) and the
    workers' shards are the local build's."""
    url, local = f"s3://{bucket}/dask.zarr", local_demo
    summary = _build(demo_config, url, "--local-workers", "2")
    assert "2 workers" in summary
    assert_same_objects(url, local)
