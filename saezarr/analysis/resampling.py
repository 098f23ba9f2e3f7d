"""analyze's honest answers, from the cached per-sentence activations: the permutation null (family-wise p-values
and chance levels), held-out validation of the top features, and the per-layer emergence curves. One pass over the
cache, a layer at a time; the results are kept in the cache entry, so that a re-run with the same options reads
them back instead."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saezarr.analysis.cache.files import AnalysisCache
from saezarr.analysis.emergence import emergence_targets, layer_row, sentence_residuals
from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.permutation import ALPHA, Permutations, chance_level, fwer_p_values, null_maxima
from saezarr.analysis.stats.pooling import SentenceLayout
from saezarr.analysis.stats.validation import (
    CHOSEN,
    Thresholds,
    chosen_in_splits,
    fold_ids,
    fold_splits,
    top_of_each_fold,
)
from saezarr.analysis.tables import ConfigTable
from saezarr.durable.folders import replace_file
from saezarr.execution.running import map_in_threads
from saezarr.store.shards import ChunkFiles

FOLDER = "resampling"  # in the cache entry: one file per part and the options it depends on
RESIDUALS = "residuals"


@dataclass(frozen=True)
class ResamplingOptions:
    """What to resample: permutations of the null (0: none), folds (0: no held-out validation nor emergence),
    permuted labellings behind the emergence chance levels, the seed, and the filter behind the top features."""

    permutations: int
    folds: int
    probe_permutations: int
    seed: int
    thresholds: Thresholds


@dataclass
class Resampled:
    """The results: per-config permuted maxima [config, permutation] of Pearson and AUROC 3-vs-0 (None: off), the top
    features of each fold (a CHOSEN array; None: off) and emergence.csv's rows (None: off)."""

    null_pearson: np.ndarray | None
    null_auroc: np.ndarray | None
    heldout: np.ndarray | None
    emergence: list[dict] | None

    def p_values(self, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """p_value_fwer (of pearson_corr) and p_value_fwer_auroc (of auroc_3v0) per [config, feature]."""
        if self.null_pearson is None:
            return {}
        assert self.null_auroc is not None  # the two nulls are computed together
        return {
            "p_value_fwer": fwer_p_values(np.asarray(metrics["pearson_corr"]), self.null_pearson.max(axis=0)),
            "p_value_fwer_auroc": fwer_p_values(np.asarray(metrics["auroc_3v0"]), self.null_auroc.max(axis=0)),
        }

    def summary(self, metrics: dict[str, np.ndarray], names: np.ndarray) -> dict | None:
        """analysis.json's `permutation` part: the null's settings, chance levels overall and per SAE, the best real
        scores and the permuted maxima."""
        if self.null_pearson is None:
            return None
        assert self.null_auroc is not None  # the two nulls are computed together
        p = self.p_values(metrics)
        overall = {"pearson": self.null_pearson.max(axis=0), "auroc_3v0": self.null_auroc.max(axis=0)}
        best = {
            name: _nanmax(metrics[metric]) for name, metric in (("pearson", "pearson_corr"), ("auroc_3v0", "auroc_3v0"))
        }
        return {
            "permutations": int(self.null_pearson.shape[1]),
            "alpha": ALPHA,
            "significant_features": int(np.sum(p["p_value_fwer"] < ALPHA)),
            "significant_features_auroc": int(np.sum(p["p_value_fwer_auroc"] < ALPHA)),
            "best": best,
            "chance": {name: _finite(chance_level(values)) for name, values in overall.items()},
            "chance_per_sae": {
                str(name): {
                    "pearson": _finite(chance_level(self.null_pearson[i])),
                    "auroc_3v0": _finite(chance_level(self.null_auroc[i])),
                }
                for i, name in enumerate(names)
            },
            "null_maxima": {name: [_finite(v) for v in values] for name, values in overall.items()},
        }


def _nanmax(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmax(values)) if np.isfinite(values).any() else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def resample(
    cache: AnalysisCache,
    configs: ConfigTable,
    layout: SentenceLayout,
    pool: str,
    options: ResamplingOptions,
    residuals: Path | None,
) -> Resampled:
    """The results for these options: read back from the cache entry where it has them, else computed in one pass
    over its per-sentence activations (and the store's residual stream at `residuals`, if given) and kept there."""
    labels = layout.labels
    folder = cache.path / FOLDER
    keys = _keys(options, residuals)
    result = Resampled(None, None, None, None)
    wanted = {
        "null": options.permutations > 0,
        "heldout": options.folds > 0,
        "emergence": options.folds > 0,
    }
    missing = [part for part, on in wanted.items() if on and not _load(folder, part, keys[part], result)]
    if not missing:
        return result
    folds = fold_ids(labels, options.folds, options.seed) if options.folds else None
    permutations = Permutations.draw(labels, options.permutations, options.seed)
    probe_permutations = Permutations.draw(labels, options.probe_permutations, options.seed).all
    residual_of = _sentence_residuals(residuals, layout, pool) if "emergence" in missing and residuals else {}
    layers = sorted({*configs.layer.tolist(), *residual_of})
    pooled = cache.pooled()

    # the emergence curves select on the permuted labellings too; the held-out validation on the labels only
    targets = emergence_targets(labels, probe_permutations) if "emergence" in missing else labels[:, None]

    def one_layer(layer: int) -> tuple[list, list, list]:
        positions = np.flatnonzero(configs.layer == layer)
        matrices = [_pooled_matrix(pooled, position) for position in positions]
        nulls = []
        if "null" in missing:
            nulls = [
                (position, *null_maxima(matrix, labels, permutations)) for position, matrix in zip(positions, matrices)
            ]
        splits = None  # the layer's features split by the folds, shared by the held-out validation and emergence
        if folds is not None and sum(matrix.shape[1] for matrix in matrices) > 0:
            splits = fold_splits(FeatureMatrix.joined(matrices), targets, folds)
        chosen, rows = [], []
        if "heldout" in missing and splits is not None:
            owners = np.repeat(positions, [matrix.shape[1] for matrix in matrices])
            features = np.concatenate([np.arange(matrix.shape[1]) for matrix in matrices])
            chosen.append(chosen_in_splits(splits, labels, options.thresholds, owners, features))
        if "emergence" in missing:
            assert folds is not None  # emergence is wanted only with folds
            rows.append(layer_row(layer, splits, residual_of.get(layer), targets, folds))
        return nulls, chosen, rows

    n_configs, n = len(configs.names), options.permutations
    null_pearson, null_auroc = np.full((n_configs, n), np.nan), np.full((n_configs, n), np.nan)
    all_chosen, rows = [], []
    for nulls, layer_chosen, layer_rows in map_in_threads(one_layer, layers):
        for position, pearson, auroc in nulls:
            null_pearson[position], null_auroc[position] = pearson, auroc
        all_chosen += layer_chosen
        rows += layer_rows
    if "null" in missing:
        result.null_pearson, result.null_auroc = null_pearson, null_auroc
        _save(folder, "null", keys["null"], {"pearson": null_pearson, "auroc": null_auroc})
    if "heldout" in missing:
        chosen = np.concatenate(all_chosen) if all_chosen else np.empty(0, dtype=CHOSEN)
        result.heldout = top_of_each_fold(chosen, options.thresholds.top_n)
        _save(folder, "heldout", keys["heldout"], {"top": result.heldout})
    if "emergence" in missing:
        result.emergence = rows
        text = json.dumps(rows, allow_nan=False).encode()
        replace_file(_path(folder, "emergence", keys["emergence"]), lambda f: f.write(text), parents=False)
    return result


def _pooled_matrix(pooled: ChunkFiles, position: int | np.integer) -> FeatureMatrix:
    """One config's cached per-sentence activations, read a chunk (a block of features) at a time."""
    return FeatureMatrix.of_blocks([block[0] for _, block in pooled.blocks(np.s_[position : position + 1, :, :])])


def _keys(options: ResamplingOptions, residuals: Path | None) -> dict[str, str]:
    """Each part's cache key: a digest of the options it depends on."""
    t = options.thresholds
    residual_identity = None
    if residuals is not None:
        stat = (residuals / "zarr.json").stat()
        residual_identity = [str(residuals.resolve()), stat.st_mtime_ns, stat.st_size]
    parts = {
        "null": [options.permutations, options.seed],
        "heldout": [options.folds, options.seed, t.min_pearson, t.min_tpr, t.max_fpr, t.top_n],
        "emergence": [options.folds, options.seed, options.probe_permutations, residual_identity],
    }
    return {part: hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16] for part, v in parts.items()}


def _path(folder: Path, part: str, key: str) -> Path:
    return folder / f"{part}-{key}.{'json' if part == 'emergence' else 'npz'}"


def _save(folder: Path, part: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    # not parents: an entry evicted meanwhile must not come back as a stub holding only resampling/
    replace_file(_path(folder, part, key), lambda file: np.savez(file, **arrays), parents=False)  # type: ignore[arg-type]  # numpy's stubs: ** might be allow_pickle


def _load(folder: Path, part: str, key: str, result: Resampled) -> bool:
    """Fill result's part from the cache entry; False if it is not there (or unreadable: then it is computed)."""
    path = _path(folder, part, key)
    try:
        if part == "emergence":
            result.emergence = json.loads(path.read_text())
            return True
        with np.load(path, allow_pickle=False) as data:
            if part == "null":
                result.null_pearson, result.null_auroc = data["pearson"], data["auroc"]
            else:
                result.heldout = data["top"]
        return True
    except (OSError, ValueError, KeyError, EOFError):
        return False


def store_residuals(store_path: Path) -> Path | None:
    """The store's residual-stream array (`residuals`: residual_layer x fragment x hidden), if it holds one."""
    path = Path(store_path) / RESIDUALS
    return path if (path / "zarr.json").is_file() else None


def _sentence_residuals(path: Path, layout: SentenceLayout, pool: str) -> dict[int, np.ndarray]:
    """Each residual layer's per-sentence residuals [sentence, hidden], pooled like the activations."""
    import zarr

    array = zarr.open_array(path, mode="r")
    layers = zarr.open_array(path.parent / "residual_layer", mode="r")[:]
    return {int(layer): sentence_residuals(array[i], layout, pool) for i, layer in enumerate(layers.tolist())}  # type: ignore[arg-type, union-attr]  # zarr: an N-d array's [i] and [:] are ndarrays
