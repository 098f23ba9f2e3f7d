"""The analysis's tables: the analysed configs, features.parquet's rows, the ranked features and their links."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from saezarr.analysis.metrics import METRICS
from saezarr.analysis.outputs import LEGACY_COLUMNS
from saezarr.store.layout import Store

NEURONPEDIA = "https://www.neuronpedia.org"


@dataclass(frozen=True)
class ConfigTable:
    """The analysed configs: store indices, names, layers, average L0s and Neuronpedia sources ("" for none)."""

    indices: np.ndarray
    names: np.ndarray
    layer: np.ndarray
    average_l0: np.ndarray
    sources: np.ndarray | None  # None: the store predates recorded sources

    @classmethod
    def of(cls, store: Store, indices: list[int]) -> ConfigTable:
        """The table of the store's configs at indices."""
        sources = None
        if store.has_coordinate("neuronpedia_source"):
            sources = np.asarray(store.coordinate("neuronpedia_source"), dtype=object)[indices].astype(str)
        return cls(np.asarray(indices, dtype=np.int64), np.asarray(store.config_names, dtype=object)[indices],
                   store.coordinate("layer")[indices].astype(np.int64),
                   store.coordinate("average_l0")[indices].astype(np.int64), sources)


def features_table(metrics: dict[str, np.ndarray], passing: np.ndarray, configs: ConfigTable) -> pa.Table:
    """features.parquet: one row per (config, feature) with every metric, passes_filter and neuronpedia_url (an
    arrow table over the metrics' own memory, its per-config columns one chunk per config: no copy of configs ×
    features values)."""
    n_configs, width = passing.shape
    columns = {
        "config": _per_config([str(name) for name in configs.names], width, pa.string()),
        "layer": _per_config(configs.layer.tolist(), width, pa.int64()),
        "average_l0": _per_config(configs.average_l0.tolist(), width, pa.int64()),
        "feature_id": pa.chunked_array([pa.array(np.arange(width, dtype=np.int64))] * n_configs),
        **{name: metrics[name].ravel() for name in METRICS},
        "passes_filter": passing.ravel(),
        "neuronpedia_url": _urls(_sources(configs), width),
    }
    return pa.table(columns)


def _per_config(values: list, width: int, type_: pa.DataType) -> pa.ChunkedArray:
    """A column holding each config's value for its `width` rows: one chunk per config, shared by equal values."""
    chunks = {value: pa.repeat(pa.scalar(value, type_), width) for value in set(values)}
    return pa.chunked_array([chunks[value] for value in values], type_)


def _urls(sources: list[str], width: int) -> pa.ChunkedArray:
    """neuronpedia_url for `width` features of each source, "" where there is none: one chunk per config."""
    ids = pc.cast(pa.array(np.arange(width)), pa.string())
    unlinked = pa.repeat("", width)
    return pa.chunked_array([pc.binary_join_element_wise(_page(source), ids, "") if source else unlinked
                             for source in sources], pa.string())


def _sources(configs: ConfigTable) -> list[str]:
    return list(configs.sources) if configs.sources is not None else [""] * len(configs.names)


def _page(source: str) -> str:
    """The start of a Neuronpedia feature link, `https://www.neuronpedia.org/{source}/` (the feature id follows)."""
    return f"{NEURONPEDIA}/{source}/"


def ranked_table(features: pa.Table) -> pd.DataFrame:
    """ranked_features.csv: the passing features by interpretability_score descending, legacy columns first."""
    ranked = features.filter(features["passes_filter"]).drop_columns("passes_filter").to_pandas()
    ranked = ranked.sort_values("interpretability_score", ascending=False, kind="stable", ignore_index=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    ranked["average_l0"] = ranked.average_l0.astype(np.float64)  # the legacy files carry it as a float
    rest = [c for c in ranked.columns if c not in LEGACY_COLUMNS]
    return ranked[[*LEGACY_COLUMNS, *rest]]


def config_summary(configs: ConfigTable, score: np.ndarray, passing: np.ndarray) -> pd.DataFrame:
    """Per config (by layer, then average L0): the number of features passing, and the best interpretability_score
    [config, feature], its feature and link (NaN, <NA> and "" where every score is NaN)."""
    scored = ~np.isnan(score).all(axis=1)
    best = np.argmax(np.where(np.isnan(score), -np.inf, score), axis=1)  # the first of equal best scores
    best_score = np.where(scored, score[np.arange(len(score)), best], np.nan)
    links = [_page(source) + str(feature) if source else "" for source, feature in zip(_sources(configs), best)]
    summary = pd.DataFrame({
        "config": configs.names.astype(str),
        "layer": configs.layer,
        "average_l0": configs.average_l0,
        "passing": passing.sum(axis=1).astype(int),
        "best_score": best_score,
        "best_feature": pd.Series(best, dtype="Int64").where(scored),
        "best_url": np.where(scored, links, ""),
    })
    return summary.sort_values(["layer", "average_l0"], kind="stable", ignore_index=True)
