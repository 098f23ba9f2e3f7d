"""The ranked features (ranked_features.csv) and the per-config summary the report draws, as pandas tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from saezarr.analysis.outputs import LEGACY_COLUMNS
from saezarr.analysis.tables import ConfigTable


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
    links = [link + str(feature) if link else "" for link, feature in zip(configs.links(), best)]
    summary = pd.DataFrame(
        {
            "config": configs.names.astype(str),
            "layer": configs.layer,
            "average_l0": configs.average_l0,
            "passing": passing.sum(axis=1).astype(int),
            "best_score": best_score,
            "best_feature": pd.Series(best, dtype="Int64").where(scored),
            "best_url": np.where(scored, links, ""),
        }
    )
    return summary.sort_values(["layer", "average_l0"], kind="stable", ignore_index=True)
