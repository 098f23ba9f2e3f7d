"""The resampled statistics' protocol: every built-in one satisfies it, and a new statistic plugged into the list runs
through analyze's resampling loop on the shared fold splits, its results kept in the cache entry and read back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

import numpy as np
import zarr
from analyzetools import reference_pooled

from saezarr.analysis import resampling
from saezarr.analysis.resampled import LayerInputs, ResampledStatistic, ResamplingContext, ResamplingOptions
from saezarr.analysis.run import AnalyzeOptions, AnalyzeSummary, analyze
from saezarr.analysis.stats.validation import fold_ids

LOOSE = {"min_pearson": 0.1, "min_tpr": 0.0, "max_fpr": 1.0, "quiet": True}
FOLDS = 3


class SilentPerFold:
    """A toy statistic: per layer, how many of its configs' features are constant on each fold's training rows, read
    off the fold splits the built-in statistics share."""

    name = "silent"
    extension = "json"
    selects_on_permuted_labels = False

    def __init__(self) -> None:
        self.layers_computed: list[int] = []
        self.loaded: list[dict] = []
        self.computed: list[dict] = []

    def wanted(self, options: ResamplingOptions) -> bool:
        return options.folds > 0

    def key_parts(self, options: ResamplingOptions, residuals: Path | None) -> list:
        return [options.folds, options.seed]

    def extra_layers(self, context: ResamplingContext) -> list[int]:
        return []

    def for_layer(self, inputs: LayerInputs) -> tuple[int, list[int]]:
        self.layers_computed.append(inputs.layer)
        return inputs.layer, [int(split.constant.sum()) for split in inputs.splits]

    def combine(self, shares: list, context: ResamplingContext) -> dict:
        value = {str(layer): counts for layer, counts in shares}
        self.computed.append(value)
        return value

    def save(self, file: BinaryIO, value: dict) -> None:
        file.write(json.dumps(value).encode())

    def load(self, path: Path) -> dict:
        value = json.loads(path.read_text())
        self.loaded.append(value)
        return value


def test_every_built_in_statistic_satisfies_the_protocol():
    assert [statistic.name for statistic in resampling.STATISTICS] == ["null", "heldout", "emergence"]
    for statistic in resampling.STATISTICS:
        assert isinstance(statistic, ResampledStatistic), statistic
    assert isinstance(SilentPerFold(), ResampledStatistic)
    assert not isinstance(object(), ResampledStatistic)


def _silent_per_fold(store: Path, seed: int) -> dict:
    """The toy's value, independently: from the store's activations pooled by a plain loop and the folds."""
    pooled, labels, _ = reference_pooled(store, "final")
    folds = fold_ids(labels, FOLDS, seed)
    layer_of_config = zarr.open_group(store, mode="r")["layer"][:]
    expected = {}
    for layer in np.unique(layer_of_config).tolist():
        x = np.concatenate(list(pooled[layer_of_config == layer]), axis=1)  # [sentence, every config's features]
        expected[str(layer)] = [int((np.ptp(x[folds != fold], axis=0) == 0).sum()) for fold in range(FOLDS)]
    return expected


def _cache_file(entry: Path, statistic: SilentPerFold, seed: int) -> Path:
    """Where the toy's results for this seed are kept in the cache entry."""
    options = ResamplingOptions(5, FOLDS, 4, seed, None)
    key = hashlib.sha256(json.dumps(statistic.key_parts(options, None)).encode()).hexdigest()[:16]
    return entry / resampling.FOLDER / f"{statistic.name}-{key}.{statistic.extension}"


def test_a_toy_statistic_runs_through_the_resampling_loop_and_is_cached(planted, tmp_path, monkeypatch):
    toy = SilentPerFold()
    monkeypatch.setattr(resampling, "STATISTICS", (*resampling.STATISTICS, toy))
    cache = tmp_path / "cache"

    def run(name: str, seed: int = 0) -> AnalyzeSummary:
        options = AnalyzeOptions(
            planted.cued, tmp_path / name, cache=cache, permutations=5, folds=FOLDS, probe_permutations=4, seed=seed
        )
        return analyze(AnalyzeOptions(**{**vars(options), **LOOSE}))

    first = run("first")
    expected = _silent_per_fold(planted.cued, seed=0)
    # the configs' layers only: not layer 1, whose residuals the emergence curves have a row for in the same pass
    assert sorted(toy.layers_computed) == [0, 2]
    assert toy.computed == [expected]
    assert any(counts and min(counts) > 0 for counts in expected.values())  # some features silent: a real count
    saved = _cache_file(first.cache, toy, seed=0)
    assert json.loads(saved.read_text()) == toy.computed[0]

    second = run("second")  # the same options: read back, nothing recomputed
    assert sorted(toy.layers_computed) == [0, 2] and toy.loaded == toy.computed
    for name in ("emergence.csv", "heldout.csv", "ranked_features.csv"):
        assert (first.output / name).read_bytes() == (second.output / name).read_bytes()

    saved.write_text("{not json")  # unreadable: computed again (alone in its pass) and rewritten
    run("third")
    assert sorted(toy.layers_computed) == [0, 0, 2, 2]
    assert len(toy.computed) == 2 and toy.computed[1] == toy.computed[0]
    assert json.loads(saved.read_text()) == toy.computed[0]

    run("other-seed", seed=1)  # other folds: another key, another file
    assert toy.computed[2] == _silent_per_fold(planted.cued, seed=1)
    assert toy.computed[2] != toy.computed[0]
    assert json.loads(_cache_file(first.cache, toy, seed=1).read_text()) == toy.computed[2]
    assert saved.is_file()


def test_a_statistic_the_options_turn_off_is_neither_computed_nor_cached(planted, tmp_path, monkeypatch):
    toy = SilentPerFold()
    monkeypatch.setattr(resampling, "STATISTICS", (*resampling.STATISTICS, toy))
    options = AnalyzeOptions(planted.cued, tmp_path / "out", cache=tmp_path / "cache", permutations=5, folds=0)
    entry = analyze(AnalyzeOptions(**{**vars(options), **LOOSE})).cache
    assert toy.layers_computed == [] and toy.computed == [] and toy.loaded == []
    assert [path.name.split("-")[0] for path in (entry / resampling.FOLDER).iterdir()] == ["null"]
