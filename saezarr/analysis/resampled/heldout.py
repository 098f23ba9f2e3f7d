"""The held-out validation: in each fold, the top features chosen on the other folds with the analysis's own filter
and score, and scored on the held-out sentences."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from saezarr.analysis.resampled import LayerInputs, ResamplingContext, ResamplingOptions
from saezarr.analysis.stats.validation import CHOSEN, chosen_in_splits, top_of_each_fold
from saezarr.store.storage import Location


class HeldoutValidation:
    """Each fold's top features with their held-out scores (a CHOSEN array)."""

    name = "heldout"
    extension = "npz"
    selects_on_permuted_labels = False

    def wanted(self, options: ResamplingOptions) -> bool:
        """On unless --folds 0."""
        return options.folds > 0

    def key_parts(self, options: ResamplingOptions, residuals: Location | None) -> list:
        """The folds, their seed and the filter."""
        t = options.thresholds
        return [options.folds, options.seed, t.min_pearson, t.min_tpr, t.max_fpr, t.top_n]

    def extra_layers(self, context: ResamplingContext) -> list[int]:
        """None: only the configs have features to choose."""
        return []

    def for_layer(self, inputs: LayerInputs) -> list[np.ndarray]:
        """The top features of each fold and of each of the layer's configs (none without features)."""
        if inputs.splits is None:
            return []
        owners = np.repeat(inputs.positions, [matrix.shape[1] for matrix in inputs.matrices])
        features = np.concatenate([np.arange(matrix.shape[1]) for matrix in inputs.matrices])
        context = inputs.context
        return [chosen_in_splits(inputs.splits, context.labels, context.options.thresholds, owners, features)]

    def combine(self, shares: list, context: ResamplingContext) -> np.ndarray:
        """Each fold's top_n over every config."""
        chosen = [rows for share in shares for rows in share]
        everything = np.concatenate(chosen) if chosen else np.empty(0, dtype=CHOSEN)
        return top_of_each_fold(everything, context.options.thresholds.top_n)

    def save(self, file: BinaryIO, value: np.ndarray) -> None:
        """An .npz of `top`."""
        np.savez(file, top=value)

    def load(self, path: Path) -> np.ndarray:
        """The CHOSEN array saved at path."""
        with np.load(path, allow_pickle=False) as data:
            return data["top"]
