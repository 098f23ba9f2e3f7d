"""Example sentences for the top features: the most activating sentences per label, with per-token activations."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from saezarr.analysis.stats.blocks import LABELS
from saezarr.analysis.stats.pooling import SentenceLayout
from saezarr.analysis.traces import token_pieces
from saezarr.store.format import Store
from saezarr.store.shards import ChunkFiles

if TYPE_CHECKING:
    from saezarr.analysis.cache.files import AnalysisCache


TRACE_FEATURES = 8  # the report's token traces: the top features drawn, one line each
TRACE_SENTENCES = 4  # ... through the #1 feature's top example sentence of each label


class FeatureExamples(dict):
    """feature_examples.json's dict; `traces` holds the report's token traces (not part of the JSON file): each
    `{sentence_index, sentence, label, tokens, features: [{name, values}]}`."""

    traces: list[dict] = []


def example_key(config: str, layer: int, average_l0: float, feature_id: int) -> str:
    """The feature_examples.json key: the legacy `layer_12_l0_82.0_feature_1234` for an SAE with an average L0, else
    `{config}_feature_1234` (two SAEs of one layer whose L0 is unknown, -1, must not share keys)."""
    if average_l0 < 0:
        return f"{config}_feature_{int(feature_id)}"
    return f"layer_{int(layer)}_l0_{float(average_l0)}_feature_{int(feature_id)}"


def feature_examples(
    top: pd.DataFrame,
    cache: AnalysisCache,
    texts: np.ndarray,
    store: Store,
    layout: SentenceLayout,
    fragment_texts: np.ndarray | None,
    per_label: int,
) -> dict:
    """The feature_examples.json dict for the ranked rows in `top` (columns of ranked_features.csv plus `config_index`
    and `store_index`), from the cache's pooled activations (and its token columns); `texts` are the pooled
    sentences' texts, `layout` their labels and where their fragments lie, `fragment_texts` the store's fragment
    texts (None: no per-token activations)."""
    picks = _pick_sentences(top, cache.pooled(), layout.labels, per_label)
    tokens = {}
    if fragment_texts is not None:
        sentences = _example_sentences(top, picks)
        rows = {
            key: np.concatenate([np.arange(layout.starts[s], layout.stops[s]) for s in found])
            for key, found in sentences.items()
        }
        tokens = _token_activations(sentences, rows, cache.token_activations(store, rows), layout, fragment_texts)
    examples = FeatureExamples()
    if fragment_texts is not None:
        examples.traces = report_traces(top, picks, cache, store, layout, fragment_texts, texts)
    for row, chosen in zip(top.itertuples(index=False), picks):
        by_label = {
            str(k): [
                {
                    "sentence": str(texts[s]),
                    "activation": float(value),
                    "tokens": tokens.get((row.store_index, int(row.feature_id), s)),  # None without token fragments
                }
                for s, value in chosen[k]
            ]
            for k in LABELS
        }
        examples[example_key(row.config, row.layer, row.average_l0, row.feature_id)] = {
            "rank": int(row.rank),
            "layer": int(row.layer),
            "average_l0": float(row.average_l0),
            "feature_id": int(row.feature_id),
            "neuronpedia_url": row.neuronpedia_url,
            "interpretability_score": float(row.interpretability_score),
            "pearson_correlation": float(row.pearson_corr),
            "tpr": float(row.tpr),
            "fpr": float(row.fpr),
            "config": row.config,
            "examples_by_label": by_label,
        }
    return examples


def report_traces(
    top: pd.DataFrame,
    picks: list[dict],
    cache: AnalysisCache,
    store: Store,
    layout: SentenceLayout,
    fragment_texts: np.ndarray,
    texts: np.ndarray,
    n_features: int = TRACE_FEATURES,
    n_sentences: int = TRACE_SENTENCES,
) -> list[dict]:
    """Token traces of the top features through the #1 feature's top example sentence of each label (highest label
    first): per sentence, each feature's activation at each of its tokens."""
    if top.empty:
        return []
    sentences = list(dict.fromkeys(chosen[0][0] for k in reversed(LABELS) if (chosen := picks[0][k])))[:n_sentences]
    if not sentences:
        return []
    rows = np.concatenate([np.arange(layout.starts[s], layout.stops[s]) for s in sentences])
    shown = list(top.head(n_features).itertuples(index=False))
    keys = list(dict.fromkeys((int(row.store_index), int(row.feature_id)) for row in shown))
    values = cache.token_activations(store, {key: rows for key in keys})
    traces, offset = [], 0
    for s in sentences:
        n = int(layout.stops[s] - layout.starts[s])
        pieces = token_pieces([str(t) for t in fragment_texts[layout.starts[s] : layout.stops[s]]])
        features = [
            {
                "name": f"#{int(row.rank)} {row.config} f{int(row.feature_id)}",
                "values": values[(int(row.store_index), int(row.feature_id))][offset : offset + n].tolist(),
            }
            for row in shown
        ]
        traces.append(
            {
                "sentence_index": int(s),
                "sentence": str(texts[s]),
                "label": int(layout.labels[s]),
                "tokens": pieces,
                "features": features,
            }
        )
        offset += n
    return traces


def _pick_sentences(top: pd.DataFrame, pooled: ChunkFiles, labels: np.ndarray, per_label: int) -> list[dict]:
    """For each top row, per label, the (sentence, activation) pairs with the highest pooled activation."""
    step = pooled.chunks[2]
    columns = {}
    for (ci, part), group in top.groupby([top.config_index, top.feature_id // step]):
        block = pooled[int(ci) : int(ci) + 1, :, int(part) * step : (int(part) + 1) * step][0]  # one chunk
        # copies: a view would keep its whole chunk (sentences × 256 features) alive for every top feature
        columns.update({(ci, f): block[:, f - int(part) * step].copy() for f in group.feature_id.unique()})
    picks = []
    for row in top.itertuples(index=False):
        column = columns[(row.config_index, row.feature_id)]
        chosen = {}
        for k in LABELS:
            members = np.flatnonzero(labels == k)
            order = members[np.argsort(-column[members], kind="stable")][:per_label]
            chosen[k] = [(int(s), float(column[s])) for s in order]
        picks.append(chosen)
    return picks


def _example_sentences(top: pd.DataFrame, picks: list[dict]) -> dict[tuple[int, int], list[int]]:
    """(store config index, feature) -> its example sentences, ascending."""
    sentences: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for row, chosen in zip(top.itertuples(index=False), picks):
        sentences[(row.store_index, int(row.feature_id))].update(s for k in LABELS for s, _ in chosen[k])
    return {key: sorted(found) for key, found in sentences.items() if found}


def _token_activations(
    sentences: dict[tuple[int, int], list[int]],
    rows: dict[tuple[int, int], np.ndarray],
    values: dict[tuple[int, int], np.ndarray],
    layout: SentenceLayout,
    texts: np.ndarray,
) -> dict:
    """(store config index, feature, sentence) -> [{text, activation}] over the sentence's fragments, from each
    feature's activations (values) at its example sentences' fragments (rows)."""
    out = {}
    for (ci, feature), found in sentences.items():
        at = dict(zip(rows[(ci, feature)].tolist(), values[(ci, feature)].tolist()))
        for s in found:
            segments, previous = [], ""
            for r in range(layout.starts[s], layout.stops[s]):
                text = str(texts[r])
                piece = text.removeprefix(previous)
                segments.append({"text": piece, "activation": at[r]})
                previous = text
            out[(ci, feature, s)] = segments
    return out
