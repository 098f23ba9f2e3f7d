"""analyze's honest answers, from the cached per-sentence activations: the resampled statistics (the permutation
null, held-out validation of the top features, the per-layer emergence curves; saezarr.analysis.resampled) run
through one pass over the cache, a layer at a time; each one's results are kept in the cache entry, so that a re-run
with the same options reads them back instead."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saezarr.analysis.cache.files import AnalysisCache
from saezarr.analysis.emergence import emergence_targets, sentence_residuals
from saezarr.analysis.resampled import LayerInputs, ResampledStatistic, ResamplingContext, ResamplingOptions
from saezarr.analysis.resampled.emergence_curves import EmergenceCurves
from saezarr.analysis.resampled.heldout import HeldoutValidation
from saezarr.analysis.resampled.permutation_null import NullMaxima, PermutationNull
from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.permutation import Permutations
from saezarr.analysis.stats.pooling import SentenceLayout
from saezarr.analysis.stats.validation import fold_ids
from saezarr.analysis.tables import ConfigTable
from saezarr.durable.folders import replace_file
from saezarr.execution.running import map_in_threads
from saezarr.sites import RESID_POST
from saezarr.store.residual_arrays import RESIDUAL_LAYER, RESIDUALS
from saezarr.store.shards import ChunkFiles
from saezarr.store.storage import Location, open_storage

__all__ = ["STATISTICS", "Resampled", "ResamplingOptions", "resample", "store_residuals"]

FOLDER = "resampling"  # in the cache entry: one file per statistic and the options it depends on
# the statistics analyze computes, in this order (a new one: a class implementing ResampledStatistic, added here)
STATISTICS: tuple[ResampledStatistic, ...] = (PermutationNull(), HeldoutValidation(), EmergenceCurves())


@dataclass
class Resampled:
    """The results of each statistic by name (absent: off): `null` a NullMaxima, `heldout` the top features of each
    fold (a CHOSEN array), `emergence` emergence.csv's rows."""

    values: dict[str, Any]

    @property
    def null(self) -> NullMaxima | None:
        """The permutation null (None: off)."""
        return self.values.get("null")

    @property
    def heldout(self) -> np.ndarray | None:
        """The top features of each fold, with their held-out scores (None: off)."""
        return self.values.get("heldout")

    @property
    def emergence(self) -> list[dict] | None:
        """emergence.csv's rows (None: off)."""
        return self.values.get("emergence")

    def p_values(self, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """p_value_fwer (of pearson_corr) and p_value_fwer_auroc (of auroc_3v0) per [config, feature] ({}: off)."""
        return {} if self.null is None else self.null.p_values(metrics)

    def summary(self, metrics: dict[str, np.ndarray], names: np.ndarray) -> dict | None:
        """analysis.json's `permutation` part (None: off)."""
        return None if self.null is None else self.null.summary(metrics, names)


def resample(
    cache: AnalysisCache,
    configs: ConfigTable,
    layout: SentenceLayout,
    pool: str,
    options: ResamplingOptions,
    residuals: Location | None,
    statistics: Sequence[ResampledStatistic] | None = None,
    quiet: bool = False,
) -> Resampled:
    """The results of the statistics (None: STATISTICS) for these options: read back from the cache entry where it
    has them, else computed in one pass over its per-sentence activations (and the store's residual stream at
    `residuals`, if given), with a progress bar over the layers unless quiet, and kept there."""
    statistics = STATISTICS if statistics is None else statistics
    folder = cache.path / FOLDER
    paths = {s.name: _path(folder, s, _key(s.key_parts(options, residuals))) for s in statistics if s.wanted(options)}
    result = Resampled({})
    missing = [s for s in statistics if s.name in paths and not _load(s, paths[s.name], result)]
    if not missing:
        return result
    context = _context(configs, layout, pool, options, residuals, missing)
    # each statistic's groups (layer, site kind): the configs', and its own others (whichever others are computed in
    # the same pass: the residual stream's layers, as resid_post)
    groups_of = [{*configs.groups(), *((layer, RESID_POST) for layer in s.extra_layers(context))} for s in missing]
    groups = sorted(set().union(*groups_of))
    pooled = cache.pooled()

    def one_group(group: tuple[int, str]) -> list:
        layer, site = group
        positions = np.flatnonzero((configs.layer == layer) & (configs.site == site))
        inputs = LayerInputs(layer, positions, [_pooled_matrix(pooled, p) for p in positions], context, site)
        return [s.for_layer(inputs) if group in covered else None for s, covered in zip(missing, groups_of)]

    from tqdm.auto import tqdm  # only now: a re-run that reads every result back need not import it

    names = ", ".join(statistic.name for statistic in missing)
    with tqdm(
        total=len(groups), desc=f"saezarr: resampling ({names})", unit="layer", leave=False, disable=quiet
    ) as bar:
        shares = []
        for share in map_in_threads(one_group, groups):
            shares.append(share)
            bar.update()
    for i, (statistic, covered) in enumerate(zip(missing, groups_of)):
        own = [group_shares[i] for group, group_shares in zip(groups, shares) if group in covered]
        value = statistic.combine(own, context)
        result.values[statistic.name] = value
        # not parents: an entry evicted meanwhile must not come back as a stub holding only resampling/
        replace_file(paths[statistic.name], functools.partial(statistic.save, value=value), parents=False)
    return result


def _context(
    configs: ConfigTable,
    layout: SentenceLayout,
    pool: str,
    options: ResamplingOptions,
    residuals: Location | None,
    missing: list[ResampledStatistic],
) -> ResamplingContext:
    """What the statistics to compute share: the folds, the null's permutations, and the targets of the fold splits
    (the permuted labellings too where a statistic selects on them)."""
    labels = layout.labels
    folds = fold_ids(labels, options.folds, options.seed) if options.folds else None
    targets = labels[:, None]
    if any(statistic.selects_on_permuted_labels for statistic in missing):
        targets = emergence_targets(labels, Permutations.draw(labels, options.probe_permutations, options.seed).all)
    read_residuals = functools.partial(_sentence_residuals, residuals, layout, pool) if residuals else dict
    permutations = Permutations.draw(labels, options.permutations, options.seed)
    return ResamplingContext(configs, labels, options, folds, permutations, targets, read_residuals)


def _pooled_matrix(pooled: ChunkFiles, position: int | np.integer) -> FeatureMatrix:
    """One config's cached per-sentence activations, read a chunk (a block of features) at a time."""
    return FeatureMatrix.of_blocks([block[0] for _, block in pooled.blocks(np.s_[position : position + 1, :, :])])


def _key(parts: list) -> str:
    """A cache key: a digest of the options a statistic depends on."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _path(folder: Path, statistic: ResampledStatistic, key: str) -> Path:
    return folder / f"{statistic.name}-{key}.{statistic.extension}"


def _load(statistic: ResampledStatistic, path: Path, result: Resampled) -> bool:
    """Fill result's statistic from the cache entry; False if it is not there (or unreadable: then it is computed)."""
    try:
        result.values[statistic.name] = statistic.load(path)
        return True
    except (OSError, ValueError, KeyError, EOFError):
        return False


def store_residuals(store: Location) -> Location | None:
    """The store itself if it holds a residual stream (`residuals`: residual_layer x fragment x hidden), else None."""
    return store if open_storage(store).exists(f"{RESIDUALS}/zarr.json") else None


def _sentence_residuals(store: Location, layout: SentenceLayout, pool: str) -> dict[int, np.ndarray]:
    """Each residual layer's per-sentence residuals [sentence, hidden], pooled like the activations."""
    import zarr

    from saezarr.store.zarr_adapter import zarr_location

    storage = open_storage(store)
    array = zarr.open_array(zarr_location(storage, RESIDUALS, read_only=True), mode="r")
    layers = zarr.open_array(zarr_location(storage, RESIDUAL_LAYER, read_only=True), mode="r")[:]
    return {int(layer): sentence_residuals(array[i], layout, pool) for i, layer in enumerate(layers.tolist())}  # type: ignore[arg-type, union-attr]  # zarr: an N-d array's [i] and [:] are ndarrays
