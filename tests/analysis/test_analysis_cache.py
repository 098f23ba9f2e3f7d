"""The analysis cache keeps no debris of killed runs and stays under $SAEZARR_CACHE_MAX_BYTES, evicting LRU entries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from analyzetools import build_store, csv_without, dead_pid
from clitools import run_cli, run_main

from saezarr.machine import human_bytes

REUSED = "cached activations and metrics reused"


@pytest.fixture(scope="module")
def store(cli_store_chunk7):
    """`saezarr build` of the tiny model and the demo CSV in chunks of 7 fragments (tests/conftest.py): read only."""
    return cli_store_chunk7


def analyze(store, output, *args, cache, max_bytes=None):
    env = {"SAEZARR_CACHE": str(cache)}
    if max_bytes is not None:
        env["SAEZARR_CACHE_MAX_BYTES"] = str(max_bytes)
    return run_cli("analyze", store, "--output", output, "--quiet", *args, env=env)


def evictions(result: subprocess.CompletedProcess) -> list[str]:
    """The stderr lines about removed cache entries (the tiny SAEs also get a note about Neuronpedia links)."""
    return [line for line in result.stderr.splitlines() if "analysis cache" in line]


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "analysis").iterdir() if not p.name.startswith("."))


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def staging(cache: Path, key: str, pid: int) -> Path:
    """A staging folder as a fill by process pid leaves it, with a file in it."""
    folder = cache / "analysis" / f".{key}.{pid}.k3x_9q.filling"
    (folder / "pooled.zarr").mkdir(parents=True)
    (folder / "pooled.zarr" / "c0").write_bytes(b"x" * 1000)
    return folder


@pytest.fixture(scope="module")
def filled(store, tmp_path_factory) -> dict[str, Path]:
    """An entry of the store's analysis per pool, filled by real runs (each copied into the tests' own caches)."""
    folder = tmp_path_factory.mktemp("filled")
    made = {}
    for pool in ("final", "max", "mean"):
        result = analyze(store, folder / pool, "--pool", pool, cache=folder / "cache")
        assert result.returncode == 0 and evictions(result) == [], result.stderr
        [key] = set(entries(folder / "cache")) - {path.name for path in made.values()}
        made[pool] = folder / "cache" / "analysis" / key
    return made


def cache_with(cache: Path, *paths: Path) -> Path:
    """A cache holding copies of these entries."""
    for path in paths:
        shutil.copytree(path, cache / "analysis" / path.name)
    return cache


def test_a_killed_fill_of_any_entry_is_removed_by_the_next_run_a_live_one_kept(store, filled, tmp_path):
    cache = cache_with(tmp_path / "cache", filled["final"])
    key = filled["final"].name
    dead_same, dead_other = staging(cache, key, dead_pid()), staging(cache, "f" * 32, dead_pid())
    long_ago = time.time() - 2 * 24 * 3600
    for folder in (dead_same, dead_other):
        os.utime(folder, (long_ago, long_ago))
    live = staging(cache, "e" * 32, os.getpid())
    elsewhere = staging(cache, "d" * 32, dead_pid())  # just written by a PID this host lacks: another host's fill?
    result = analyze(store, tmp_path / "out", cache=cache)  # a cache hit: no fill, still tidies
    assert result.returncode == 0, result.stderr
    assert REUSED in result.stdout
    assert not dead_same.exists() and not dead_other.exists()
    assert live.is_dir() and (live / "pooled.zarr" / "c0").stat().st_size == 1000
    assert elsewhere.is_dir(), "a fill of the last day is spared: it may be another host's on a shared cache"
    assert entries(cache) == [key]
    assert evictions(result) == []


def test_over_the_cap_the_least_recently_used_entry_goes(store, filled, tmp_path):
    cache = cache_with(tmp_path / "cache", filled["max"], filled["final"])
    hit = analyze(store, tmp_path / "final", cache=cache)  # uses final's entry: max's is now the least recent
    assert REUSED in hit.stdout and evictions(hit) == []
    live = staging(cache, "e" * 32, os.getpid())
    sizes = {pool: size(path) for pool, path in filled.items()}
    cap = sizes["final"] + sizes["mean"] + sizes["max"] // 2  # room for two of the three entries

    fill = analyze(store, tmp_path / "mean", "--pool", "mean", cache=cache, max_bytes=cap)
    assert fill.returncode == 0, fill.stderr
    assert REUSED not in fill.stdout
    assert entries(cache) == sorted([filled["final"].name, filled["mean"].name])
    line = (
        f"saezarr: removed 1 old analysis cache entry ({human_bytes(sizes['max'])}) to stay under "
        f"{human_bytes(cap)}; see SAEZARR_CACHE_MAX_BYTES"
    )
    assert evictions(fill) == [line]
    assert live.is_dir()  # a live fill's staging folder is never evicted
    assert not any(p.name.startswith(f".{filled['max'].name}.") for p in (cache / "analysis").iterdir())

    again = analyze(store, tmp_path / "mean-again", "--pool", "mean", cache=cache, max_bytes=cap)
    assert again.returncode == 0 and evictions(again) == []
    assert REUSED in again.stdout
    assert entries(cache) == sorted([filled["final"].name, filled["mean"].name])


def test_a_cap_of_zero_keeps_only_the_entry_in_use(store, filled, tmp_path):
    cache = cache_with(tmp_path / "cache", filled["final"], filled["mean"])
    result = analyze(store, tmp_path / "max", "--pool", "max", cache=cache, max_bytes=0)
    assert result.returncode == 0, result.stderr
    assert entries(cache) == [filled["max"].name]
    [line] = evictions(result)
    assert line.startswith("saezarr: removed 2 old analysis cache entries (") and line.endswith(
        "to stay under 0 B; see SAEZARR_CACHE_MAX_BYTES"
    )


@pytest.mark.parametrize("value", ["lots", "-1GiB", "20 GB of it"])
def test_a_bad_cap_is_one_line_before_anything_is_written(store, tmp_path, value):
    cache = tmp_path / "cache"
    result = analyze(store, tmp_path / "out", cache=cache, max_bytes=value)
    assert result.returncode == 2
    assert result.stderr == (
        f"saezarr: error: SAEZARR_CACHE_MAX_BYTES: expected a size such as 8GiB or 500MB, got {value!r}\n"
    )
    assert not (tmp_path / "out").exists() and not cache.exists()


def test_a_store_rebuilt_in_place_is_read_anew_by_the_same_process(tmp_path, tiny, cli_store_chunk7):
    # the units open their store once per process (a cluster worker runs many); a notebook or a long-lived worker
    # that analyses a store, which is then rebuilt at the same path with other chunks, must read the new one
    from saezarr.analysis.run import AnalyzeOptions
    from saezarr.analysis.run import analyze as analyze_here

    store = shutil.copytree(cli_store_chunk7, tmp_path / "store.zarr")  # as build_store(tmp_path, ..., "7") makes it
    analyze_here(AnalyzeOptions(store, tmp_path / "before", cache=tmp_path / "cache", quiet=True))
    rebuilt = run_main(
        "build",
        "--input",
        tiny.csv,
        "--output",
        store,
        "--config",
        tiny.config_file,
        "--quiet",
        "--overwrite",
        "--chunk-fragments",
        "5",
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    analyze_here(AnalyzeOptions(store, tmp_path / "after", cache=tmp_path / "cache", quiet=True))
    fresh = analyze(store, tmp_path / "fresh", cache=tmp_path / "fresh-cache")  # a new process
    assert fresh.returncode == 0, fresh.stderr
    after, expected = (pd.read_parquet(tmp_path / name / "features.parquet") for name in ("after", "fresh"))
    pd.testing.assert_frame_equal(after, expected)


def memos(cache: Path) -> list[Path]:
    return sorted((cache / "coordinates").glob("*.npz"))


def test_coordinates_are_memoized_per_store_and_read_anew_once_it_changes(tmp_path, tiny, cli_store):
    # a re-run takes the coordinates from the memo (no zarr before features.parquet: test_analyze_cli); a store
    # rebuilt in place from other sentences gets its own coordinates, equal to a fresh cache's analysis of it
    store = shutil.copytree(cli_store, tmp_path / "a" / "store.zarr")  # as build_store(tmp_path / "a", ...) makes it
    cache = tmp_path / "cache"
    assert analyze(store, tmp_path / "first", cache=cache).returncode == 0
    [memo] = memos(cache)
    written = memo.stat().st_mtime_ns
    assert analyze(store, tmp_path / "again", "--min-pearson", "0.1", cache=cache).returncode == 0
    assert memos(cache) == [memo] and memo.stat().st_mtime_ns == written  # read, not rewritten
    rebuilt = run_main(
        "build",
        "--input",
        csv_without(tmp_path, 3),
        "--output",
        store,
        "--config",
        tiny.config_file,
        "--quiet",
        "--overwrite",
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = analyze(store, tmp_path / "after", cache=cache)
    fresh = analyze(store, tmp_path / "fresh", cache=tmp_path / "fresh-cache")
    assert after.returncode == 0 and fresh.returncode == 0, after.stderr + fresh.stderr
    assert "no label-3 sentences" in after.stderr  # the new labels, not the memo's
    for name in ("features.parquet", "ranked_features.csv"):
        assert (tmp_path / "after" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_a_damaged_memo_is_rewritten_and_the_memos_of_deleted_stores_go(tmp_path, tiny):
    kept, gone = (build_store(tmp_path / name, tiny.config_file, tiny.csv) for name in ("kept", "gone"))
    cache = tmp_path / "cache"
    for store in (kept, gone):
        assert analyze(store, tmp_path / f"out-{store.parent.name}", cache=cache).returncode == 0
    assert len(memos(cache)) == 2
    shutil.rmtree(gone)
    for memo in memos(cache):
        memo.write_bytes(b"not a memo")
    result = analyze(kept, tmp_path / "again", cache=cache)
    assert result.returncode == 0, result.stderr
    [memo] = memos(cache)  # the deleted store's is gone, the damaged one written anew
    with np.load(memo) as npz:
        assert npz["layer"].tolist() == zarr.open_array(kept / "layer", mode="r")[:].tolist()
    assert (tmp_path / "again" / "features.parquet").read_bytes() == (
        tmp_path / "out-kept" / "features.parquet"
    ).read_bytes()


def test_token_activations_of_features_shown_are_kept_and_a_rerun_reads_no_shard(
    tmp_path, cli_store_chunk7, monkeypatch
):
    from saezarr.analysis.run import AnalyzeOptions
    from saezarr.analysis.run import analyze as analyze_here
    from saezarr.store.format import Store

    store = shutil.copytree(cli_store_chunk7, tmp_path / "store.zarr")  # as build_store(tmp_path, ..., "7") makes it
    cache = tmp_path / "cache"
    loose = dict(min_pearson=-1.0, min_tpr=0.0, max_fpr=1.0, quiet=True, cache=cache)
    analyze_here(AnalyzeOptions(store, tmp_path / "first", top_n=6, **loose))
    [entry] = [cache / "analysis" / name for name in entries(cache)]
    kept = sorted((entry / "tokens").glob("*.npy"))
    assert len(kept) == 6
    activations = zarr.open_array(store / "activations", mode="r")

    def equal_to_the_store(path: Path) -> None:  # the feature's activations at whole fragment chunks of 7
        config, feature = map(int, path.stem.split("_"))
        tokens = np.load(path)
        rows = tokens["row"]
        assert len(rows) and np.all(np.diff(rows) > 0)
        assert all(
            np.count_nonzero(rows // 7 == c) == min(7, activations.shape[1] - 7 * c) for c in np.unique(rows // 7)
        )
        np.testing.assert_array_equal(tokens["value"], activations[config, :, feature][rows])

    for path in kept:
        equal_to_the_store(path)
    kept[0].write_bytes(b"damaged")  # read from the store again, and rewritten

    def no_shard(self, *args):
        raise AssertionError("a re-run showing the same features read a shard")

    analyze_here(AnalyzeOptions(store, tmp_path / "again", top_n=6, **loose))
    equal_to_the_store(kept[0])
    monkeypatch.setattr(Store, "read_columns", no_shard)
    analyze_here(AnalyzeOptions(store, tmp_path / "fewer", top_n=3, **loose))
    first, fewer = (json.loads((tmp_path / name / "feature_examples.json").read_text()) for name in ("first", "fewer"))
    assert len(fewer) == 3 and all(fewer[key] == {**first[key], "rank": fewer[key]["rank"]} for key in fewer)
