"""Where the concept becomes linearly readable: per layer, out-of-fold scores of the best single SAE feature, of a
sparse ridge probe on the top-k SAE features and of a ridge probe on the residual stream, each beside its chance
level (the same procedure, folds included, under permuted labels).

Everything that selects (the best feature, the top-k features, the ridge penalty, the standardisation) is fit on
the training folds only; the held-out fold's predictions are pooled over the folds and scored once (Spearman ρ with
the 0-3 label, AUROC 3-vs-0). The best feature and the top-k are those of greatest training Pearson correlation
(|r| for the probes); the best feature's prediction is its activation standardised by the training folds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from saezarr.analysis.analyze_options import PROBE_PERMUTATIONS
from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.permutation import CHANCE_QUANTILE, Permutations
from saezarr.analysis.stats.pooling import SentenceLayout, pool_sentences
from saezarr.analysis.stats.probes import auroc_columns, ridge_predictions, spearman_columns, standardised
from saezarr.analysis.stats.validation import FoldSplit, fold_ids, fold_splits
from saezarr.execution.running import map_in_threads
from saezarr.sites import RESID_POST

if TYPE_CHECKING:
    import xarray as xr

SPARSE_KS = (1, 8, 64)
CURVES = ("best_feature", *(f"sparse_probe_k{k}" for k in SPARSE_KS), "probe")
SCORES = ("spearman", "auroc_3v0")


def columns() -> list[str]:
    """emergence.csv's columns: layer, each curve's held-out scores and chance levels, and the overall chance."""
    names = ["layer"]
    for curve in CURVES:
        names += [f"{curve}_heldout_{score}" for score in SCORES]
    names += [f"chance_{score}" for score in SCORES]
    for curve in CURVES:
        names += [f"{curve}_chance_{score}" for score in SCORES]
    return names


def layer_scores(
    splits: list[FoldSplit] | None, residuals: np.ndarray | None, targets: np.ndarray, folds: np.ndarray
) -> dict[str, float]:
    """One layer's row of emergence.csv (without `layer`); targets [sentences, 1 + permutations]: the labels, then
    permuted labellings; splits: the layer's SAE features split by the folds against those targets (None: none)."""
    predictions = {curve: np.full(targets.shape, np.nan) for curve in CURVES}
    for fold in range(int(folds.max()) + 1):
        train, test = folds != fold, folds == fold
        if splits is not None:
            _feature_predictions(splits[fold], targets, predictions)
        if residuals is not None:
            x_train, x_test = standardised(residuals[train], residuals[test])
            predictions["probe"][test] = ridge_predictions(x_train, targets[train].astype(np.float64), x_test)
    row = {}
    for curve in CURVES:
        if np.isnan(predictions[curve]).all():
            scores = {score: np.full(targets.shape[1], np.nan) for score in SCORES}
        else:
            scores = {
                "spearman": spearman_columns(predictions[curve], targets),
                "auroc_3v0": auroc_columns(predictions[curve], targets),
            }
        for score, values in scores.items():
            row[f"{curve}_heldout_{score}"] = float(values[0])
            null = values[1:][np.isfinite(values[1:])]
            row[f"{curve}_chance_{score}"] = float(np.percentile(null, CHANCE_QUANTILE)) if len(null) else np.nan
    for score in SCORES:
        chances = [row[f"{curve}_chance_{score}"] for curve in CURVES]
        row[f"chance_{score}"] = float(np.nanmax(chances)) if not np.isnan(chances).all() else np.nan
    return row


def _feature_predictions(split: FoldSplit, targets: np.ndarray, predictions: dict) -> None:
    """Fill the held-out rows of the best-feature and sparse-probe predictions of every target."""
    kept, r = split.varying, split.r  # the features that correlate on the training rows: the others rank last
    if len(kept) < max(SPARSE_KS):  # too few: constant ones fill the probes (they standardise to zero), never NaN ones
        constant = np.flatnonzero(split.constant)[: max(SPARSE_KS) - len(kept)]
        kept, r = np.concatenate([kept, constant]), np.vstack([r, np.full((len(constant), r.shape[1]), np.nan)])
    k_max = min(max(SPARSE_KS), len(kept))
    if not k_max:
        return  # every feature is NaN on the training rows: no prediction
    best_kept = np.argmax(np.where(np.isnan(r), -np.inf, r), axis=0)
    best = kept[best_kept]
    strength = np.ascontiguousarray(np.where(np.isnan(r), -1.0, np.abs(r)).T)  # [targets, kept]
    top = kept[strongest(strength, k_max)]  # [targets, k], strongest first
    # every target's columns gathered from one dense copy of the columns any target uses
    used, position = np.unique(np.concatenate([best, top.ravel()]), return_inverse=True)
    columns = split.matrix.columns(used)
    training, testing = columns[split.train], columns[split.test]
    where_best, where_top = position[: len(best)], position[len(best) :].reshape(top.shape)
    _, x_test = standardised(training[:, where_best], testing[:, where_best])
    scored = np.isfinite(r[best_kept, np.arange(len(best))])
    predictions["best_feature"][split.test] = np.where(scored, x_test, 0.0)  # no feature varies: no signal
    # standardised once for the k_max strongest: each column on its own, so the first k are the top k's
    x_train, x_test = (np.ascontiguousarray(np.moveaxis(x[:, where_top], 0, 1)) for x in (training, testing))
    x_train, x_test = standardised(x_train, x_test)  # [targets, rows, k]
    y = targets[split.train].T.astype(np.float64)[:, :, None]  # [targets, rows, 1]
    for k in SPARSE_KS:
        used_k = min(k, k_max)
        k_train, k_test = (np.ascontiguousarray(x[:, :, :used_k]) for x in (x_train, x_test))
        fitted = ridge_predictions(k_train, y, k_test)
        predictions[f"sparse_probe_k{k}"][split.test] = fitted[:, :, 0].T


def strongest(strength: np.ndarray, k: int) -> np.ndarray:
    """Each row's k columns of largest strength [rows, columns], strongest first, ties going to the earlier column
    (argpartition alone picks among ties at the k-th value differently across numpy versions)."""
    kth = -np.partition(-strength, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th largest value
    above, tied = strength > kth, strength == kth
    tied &= np.cumsum(tied, axis=1) <= k - above.sum(axis=1, keepdims=True)  # the earliest ties fill up to k
    top = np.nonzero(above | tied)[1].reshape(len(strength), k)  # each row's k columns, in column order
    order = np.lexsort((top, -np.take_along_axis(strength, top, axis=1)), axis=1)
    return np.take_along_axis(top, order, axis=1)


def emergence_targets(labels: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """The labels and their permuted labellings (permutations [P, sentences]) as columns [sentences, 1 + P]."""
    return np.column_stack([labels, *(labels[p] for p in permutations)])


def layer_row(
    layer: int, splits: list[FoldSplit] | None, residuals: np.ndarray | None, targets: np.ndarray, folds: np.ndarray
) -> dict:
    """One layer's row of emergence.csv (None where it has no value), from layer_scores."""
    row = layer_scores(splits, residuals, targets, folds)
    return {"layer": int(layer), **{name: None if np.isnan(v) else v for name, v in row.items()}}


def emergence_rows(
    groups: Sequence[tuple[int, str]],
    features_of: dict[tuple[int, str], FeatureMatrix],
    residuals_of: dict[tuple[int, str], np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    permutations: np.ndarray,
) -> list[dict]:
    """emergence.csv's rows, one per group (layer, site kind; None for what a group lacks), from each group's SAE
    features and residuals (either may be absent); permutations [P, sentences] give the chance levels."""
    targets = emergence_targets(labels, permutations)

    def row(group: tuple[int, str]) -> dict:
        features = features_of.get(group)
        splits = fold_splits(features, targets, folds) if features is not None and features.shape[1] else None
        return layer_row(group[0], splits, residuals_of.get(group), targets, folds)

    return list(map_in_threads(row, groups))


def sentence_residuals(values: np.ndarray, layout: SentenceLayout, pool: str) -> np.ndarray:
    """One layer's residual stream per sentence [sentence, hidden] (float64), from its fragments' [fragment, hidden],
    pooled like the activations."""
    values = np.asarray(values)

    def read(chunk, reduce):
        return reduce(values)

    return pool_sentences(read, [(0, len(values))], layout, pool, values.shape[1], values.dtype).astype(np.float64)


def emergence_groups(
    config_layers: Sequence[int], sites: Sequence[str], residual_layers: Sequence[int], wanted: Sequence[int]
) -> list[tuple[int, str]]:
    """The (layer, site kind) groups of the wanted layers: each config's, each kept residual layer's (resid_post), and
    a wanted layer that has neither under the store's one site kind (resid_post where it has several), as a row of
    nothing."""
    found = {*zip(config_layers, sites), *((layer, RESID_POST) for layer in residual_layers)}
    kinds = {site for _, site in found}
    empty = kinds.pop() if len(kinds) == 1 else RESID_POST
    covered = {layer for layer, _ in found}
    return sorted(
        {group for group in found if group[0] in wanted} | {(layer, empty) for layer in wanted if layer not in covered}
    )


def emergence(
    ds: xr.Dataset,
    pool: str = "final",
    folds: int = 5,
    seed: int = 0,
    permutations: int = PROBE_PERMUTATIONS,
    layers: Sequence[int] | None = None,
) -> xr.Dataset:
    """Per layer, the out-of-fold Spearman ρ and AUROC 3-vs-0 of the best SAE feature, sparse probes on the top-k SAE
    features and a ridge probe on the residual stream (where ds holds `residuals`), with their chance levels: a
    Dataset over `layer` with emergence.csv's columns."""
    import xarray as xr

    from saezarr.analysis.lazy import sentence_activations
    from saezarr.analysis.ranking import emergence_table
    from saezarr.analysis.tables import site_kinds

    layout = SentenceLayout.of(ds.sentence_index.values, ds.is_final_token.values, ds.concept_strength_label.values)
    layout.check(pool)
    config_layers = np.asarray(ds.layer.values, dtype=np.int64)
    sites = site_kinds(ds.hook.values if "hook" in ds.coords else None, len(config_layers))
    residual_layers = ds.residual_layer.values.astype(np.int64).tolist() if "residuals" in ds else []
    wanted = sorted({*config_layers.tolist(), *residual_layers}) if layers is None else sorted(layers)
    groups = emergence_groups(config_layers.tolist(), sites.tolist(), residual_layers, wanted)
    features_of, residuals_of = {}, {}
    for layer, site in groups:
        chosen = np.flatnonzero((config_layers == layer) & (sites == site))
        if len(chosen):
            pooled = sentence_activations(ds.isel(config=chosen), pool).values
            features_of[(layer, site)] = FeatureMatrix.joined([FeatureMatrix.of(part) for part in pooled])
        if site == RESID_POST and layer in residual_layers:
            residuals_of[(layer, site)] = sentence_residuals(
                ds.residuals.sel(residual_layer=layer).values, layout, pool
            )
    fold = fold_ids(layout.labels, folds, seed)
    null = Permutations.draw(layout.labels, permutations, seed).all
    rows = emergence_rows(groups, features_of, residuals_of, layout.labels, fold, null)
    attrs = {"pool": pool, "folds": folds, "seed": seed, "permutations": permutations}
    several = len({site for _, site in groups}) > 1
    table = emergence_table([{"site": site, **row} if several else row for (_, site), row in zip(groups, rows)])
    return xr.Dataset.from_dataframe(table.set_index(["site", "layer"] if several else "layer")).assign_attrs(attrs)
