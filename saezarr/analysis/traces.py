"""Token traces: how features fire token by token through one sentence (one line per feature), from any store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from saezarr.errors import InputError

if TYPE_CHECKING:
    import xarray as xr


def token_traces(ds: xr.Dataset, sentence_index: int, config: str, features: Sequence[int]) -> xr.DataArray:
    """The features' activations at each fragment of one sentence of a store Dataset: dims (feature, token), with the
    tokens' text pieces, token positions and fragment texts as coordinates."""
    sentences = np.asarray(ds.sentence_index.values)
    rows = np.flatnonzero(sentences == sentence_index)
    if not len(rows):
        raise InputError(f"sentence_index {sentence_index}: no such sentence in the store (0-{sentences.max()})")
    if config not in set(map(str, ds.config.values)):
        raise InputError(f"config {config!r}: not in the store")
    values = ds.activations.sel(config=config).isel(fragment=rows, feature=list(features))
    texts = [str(t) for t in ds.fragment_text.values[rows]]
    traces = values.transpose("feature", "fragment").rename(fragment="token")
    traces = traces.drop_vars([name for name in traces.coords if name not in ("feature", "config")])
    return traces.assign_coords(
        token=("token", token_pieces(texts)),
        token_position=("token", np.asarray(ds.token_position.values[rows])),
        fragment_text=("token", np.array(texts, dtype=object)),
        sentence_index=sentence_index,
    ).compute()


def token_pieces(fragment_texts: Sequence[str]) -> list[str]:
    """Each fragment's new text: what its token adds to the previous fragment of the sentence."""
    pieces, previous = [], ""
    for text in fragment_texts:
        pieces.append(text.removeprefix(previous))
        previous = text
    return pieces


def plot_token_traces(traces: xr.DataArray, ax=None):
    """Plot token traces (from `token_traces`) with matplotlib, one line per feature; return the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(6.0, 0.45 * traces.sizes["token"]), 3.5))
    x = np.arange(traces.sizes["token"])
    for feature in traces.feature.values:
        ax.plot(x, traces.sel(feature=feature).values, marker="o", markersize=3, label=f"feature {int(feature)}")
    ax.set_xticks(x, [str(t).strip() or "␣" for t in traces.token.values], rotation=60, ha="right")
    ax.set_ylabel("activation")
    ax.set_title(f"{traces.config.item() if 'config' in traces.coords else ''} sentence {int(traces.sentence_index)}")
    ax.legend(fontsize="small", ncols=2)
    return ax
