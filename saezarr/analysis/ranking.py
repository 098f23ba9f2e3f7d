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


def with_heldout(ranked: pd.DataFrame, top: np.ndarray, configs: ConfigTable) -> pd.DataFrame:
    """The ranked table with heldout_pearson, heldout_auroc_3v0 and folds_in_top_n (top: each fold's top features,
    a validation.CHOSEN array) after its other columns."""
    from saezarr.analysis.stats.validation import heldout_columns

    position = {str(name): i for i, name in enumerate(configs.names)}
    config = ranked.config.map(position).to_numpy(dtype=np.int64) if len(ranked) else np.empty(0, dtype=np.int64)
    columns = heldout_columns(top, config, ranked.feature_id.to_numpy(dtype=np.int64))
    return ranked.assign(**columns)


def heldout_table(top: np.ndarray, configs: ConfigTable, features: pa.Table) -> pd.DataFrame:
    """heldout.csv: every feature among some fold's top features, with how many folds chose it, its mean held-out
    scores and its in-sample ones; most often chosen first."""
    from saezarr.analysis.stats.validation import heldout_columns

    keys = np.unique(np.stack([top["config"], top["feature"]], axis=1), axis=0).reshape(-1, 2)
    config, feature = keys[:, 0], keys[:, 1]
    width = len(features) // max(len(configs.names), 1)
    rows = config * width + feature
    table = pd.DataFrame(
        {
            "config": configs.names[config].astype(str),
            "layer": configs.layer[config],
            "average_l0": configs.average_l0[config],
            "feature_id": feature,
            **heldout_columns(top, config, feature),
            **{
                f"insample_{name}": features[name].take(pa.array(rows)).to_numpy(zero_copy_only=False)
                for name in ("pearson_corr", "auroc_3v0", "interpretability_score", "passes_filter")
            },
        }
    )
    return table.sort_values(
        ["folds_in_top_n", "heldout_pearson"], ascending=False, kind="stable", ignore_index=True, na_position="last"
    )


def heldout_summary(top: np.ndarray, folds: int) -> dict:
    """analysis.json's `heldout` part: per fold, how many top features it chose and their mean held-out scores."""
    per_fold = []
    for fold in range(folds):
        rows = top[top["fold"] == fold]
        per_fold.append(
            {
                "fold": fold,
                "chosen": len(rows),
                "mean_heldout_pearson": _mean(rows["heldout_pearson"]),
                "mean_heldout_auroc_3v0": _mean(rows["heldout_auroc_3v0"]),
                "top1_heldout_pearson": _mean(rows["heldout_pearson"][:1]),
            }
        )
    return {
        "folds": folds,
        "per_fold": per_fold,
        "mean_heldout_pearson": _mean(top["heldout_pearson"]),
        "mean_heldout_auroc_3v0": _mean(top["heldout_auroc_3v0"]),
    }


def _mean(values: np.ndarray) -> float | None:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(finite.mean()) if len(finite) else None


def emergence_table(rows: list[dict]) -> pd.DataFrame:
    """emergence.csv: one row per layer (per layer and site, with a `site` column first, where the configs read
    several kinds of site), in emergence.columns() order."""
    from saezarr.analysis.emergence import columns

    sites = ["site"] if any("site" in row for row in rows) else []
    table = pd.DataFrame(rows, columns=sites + columns())
    return table.astype({name: np.float64 for name in columns()[1:]})
