"""The analysis's tables: the analysed configs, features.parquet's rows, the ranked features and their links."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from saezarr.analysis.metrics import METRICS, passes_filter
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


def features_table(metrics: dict[str, np.ndarray], configs: ConfigTable, min_pearson: float, min_tpr: float,
                   max_fpr: float) -> pd.DataFrame:
    """features.parquet: one row per (config, feature) with every metric, passes_filter and neuronpedia_url."""
    passing = passes_filter(metrics, min_pearson, min_tpr, max_fpr)
    n_configs, width = passing.shape
    feature_id = np.tile(np.arange(width, dtype=np.int64), n_configs)
    sources = configs.sources if configs.sources is not None else np.full(n_configs, "", dtype=object)
    table = pd.DataFrame({
        "config": np.repeat(configs.names.astype(str), width),
        "layer": np.repeat(configs.layer, width),
        "average_l0": np.repeat(configs.average_l0, width),
        "feature_id": feature_id,
        **{name: metrics[name].ravel() for name in METRICS},
        "passes_filter": passing.ravel(),
    })
    table["neuronpedia_url"] = neuronpedia_urls(np.repeat(sources.astype(object), width), feature_id)
    return table


def neuronpedia_urls(sources: np.ndarray, feature_ids: np.ndarray) -> np.ndarray:
    """`https://www.neuronpedia.org/{source}/{feature_id}`, or "" where the SAE has no source."""
    sources = np.asarray(sources, dtype=object)
    urls = np.full(len(sources), "", dtype=object)
    linked = sources != ""  # only these need a string built (most SAEs have no source)
    urls[linked] = NEURONPEDIA + "/" + sources[linked] + "/" + np.asarray(feature_ids)[linked].astype(str).astype(object)
    return urls


def ranked_table(features: pd.DataFrame) -> pd.DataFrame:
    """ranked_features.csv: the passing features by interpretability_score descending, legacy columns first."""
    ranked = features[features.passes_filter].sort_values("interpretability_score", ascending=False, kind="stable")
    ranked = ranked.drop(columns="passes_filter").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    ranked["average_l0"] = ranked.average_l0.astype(np.float64)  # the legacy files carry it as a float
    rest = [c for c in ranked.columns if c not in LEGACY_COLUMNS]
    return ranked[[*LEGACY_COLUMNS, *rest]]
