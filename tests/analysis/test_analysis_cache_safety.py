"""The analysis cache under concurrency and damage: entries in use are never evicted, an incomplete or damaged entry
is rebuilt (or named in one line), and an entry is keyed by the code that computed it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from analyzetools import build_store

import saezarr
from saezarr.analysis.cache.files import COMPLETE, METRICS_FILE, POOLED, AnalysisCache, fingerprint
from saezarr.analysis.run import AnalyzeOptions
from saezarr.analysis.run import analyze as analyze_here
from saezarr.store.format import Store

LOOSE = {"min_pearson": -1.0, "min_tpr": 0.0, "max_fpr": 1.0, "quiet": True, "top_n": 4}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny) -> Path:
    return build_store(tmp_path_factory.mktemp("cache-safety"), tiny.config_file, tiny.csv, "--layers", "0,12")


def run(store: Path, output: Path, cache: Path, pool: str = "final"):
    return analyze_here(AnalyzeOptions(store, output, pool=pool, cache=cache, **LOOSE))


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "analysis").iterdir() if not p.name.startswith("."))


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ("ranked_features.csv", "feature_examples.json")}


def test_an_entry_in_use_is_never_evicted_even_with_a_zero_cap(store, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = run(store, tmp_path / "a", cache, "final")
    in_use = AnalysisCache(first.cache.name, cache)  # holds a lease on the entry, as a running analysis does
    monkeypatch.setenv("SAEZARR_CACHE_MAX_BYTES", "0")
    run(store, tmp_path / "b", cache, "max")
    assert in_use.complete and first.cache in entries(cache)
    in_use.release()
    run(store, tmp_path / "c", cache, "mean")  # now nobody uses the final-pool entry: the zero cap evicts it
    assert first.cache not in entries(cache)


def test_two_concurrent_analyses_with_a_zero_cap_both_succeed(store, tmp_path):
    env = {**os.environ, "SAEZARR_CACHE": str(tmp_path / "cache"), "SAEZARR_CACHE_MAX_BYTES": "0"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "saezarr", "analyze", str(store), "--output", str(tmp_path / pool), "--pool", pool,
             "--min-pearson", "-1", "--min-tpr", "0", "--max-fpr", "1", "--quiet"],
            env=env, stderr=subprocess.PIPE, text=True,
        )
        for pool in ("final", "max")
    ]  # fmt: skip
    for process in runs:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    for pool in ("final", "max"):
        assert (tmp_path / pool / "report.html").is_file()


def test_a_stub_entry_is_rebuilt(store, tmp_path):
    cache = tmp_path / "cache"
    first = run(store, tmp_path / "a", cache)
    entry = first.cache
    for part in (POOLED, METRICS_FILE, COMPLETE):
        target = entry / part
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        else:
            target.unlink()
    assert (entry / "tokens").is_dir()  # what a run writing into an evicted entry used to leave: a stub
    again = run(store, tmp_path / "b", cache)
    assert not again.cache_reused and AnalysisCache(entry.name, cache).complete
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")


def test_a_removed_pooled_chunk_is_noticed_and_the_entry_rebuilt(store, tmp_path):
    cache = tmp_path / "cache"
    first = run(store, tmp_path / "a", cache)
    chunk = next(p for p in (first.cache / POOLED).rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    assert not AnalysisCache(first.cache.name, cache).complete
    again = run(store, tmp_path / "b", cache)
    assert not again.cache_reused and chunk.is_file()
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")


def test_a_pooled_chunk_that_does_not_decode_is_one_line_and_the_entry_goes(store, tmp_path):
    from clitools import run_cli

    cache = tmp_path / "cache"
    first = run(store, tmp_path / "a", cache)
    for chunk in (p for p in (first.cache / POOLED).rglob("*") if p.is_file() and p.name != "zarr.json"):
        chunk.write_bytes(b"not zstd")
    result = run_cli(
        "analyze", store, "--output", tmp_path / "b", "--min-pearson", "-1", "--min-tpr", "0", "--max-fpr", "1",
        "--quiet", env={"SAEZARR_CACHE": str(cache)},
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if not line.startswith("saezarr: note:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert f"analysis cache entry {first.cache} is damaged (chunk file" in result.stderr
    assert "running the same command again rebuilds it" in result.stderr
    assert not first.cache.exists() and not (tmp_path / "b").exists()
    assert run(store, tmp_path / "c", cache).cache_reused is False
    assert outputs(tmp_path / "a") == outputs(tmp_path / "c")


def test_the_key_changes_with_saezarrs_version_and_code(store, monkeypatch):
    opened = Store(store)
    key = fingerprint(opened, "final", [0, 1])
    monkeypatch.setattr(saezarr, "__version__", "99.0.0", raising=False)
    newer = fingerprint(opened, "final", [0, 1])
    assert newer != key
    from saezarr.execution import checks

    monkeypatch.setattr(checks, "code_digest", lambda: "0123456789ab")
    assert fingerprint(opened, "final", [0, 1]) not in (key, newer)


def test_a_relative_cache_root_is_made_absolute(tmp_path, monkeypatch):
    from saezarr.analysis.cache.files import cache_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAEZARR_CACHE", "rel/cache")
    assert cache_root() == tmp_path / "rel" / "cache"
    assert json.dumps(str(cache_root())).startswith('"/')
