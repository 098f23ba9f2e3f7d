"""The permutation null: each config's greatest Pearson correlation and AUROC 3-vs-0 under label permutations, behind
the family-wise p-values and the chance levels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from saezarr.analysis.resampled import LayerInputs, ResamplingContext, ResamplingOptions
from saezarr.analysis.stats.permutation import ALPHA, beats_chance, chance_level, fwer_p_values, null_maxima
from saezarr.store.storage import Location


@dataclass(frozen=True)
class NullMaxima:
    """Per-config permuted maxima [config, permutation] of Pearson correlation and AUROC 3-vs-0."""

    pearson: np.ndarray
    auroc: np.ndarray

    def p_values(self, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """p_value_fwer (of pearson_corr) and p_value_fwer_auroc (of auroc_3v0) per [config, feature]."""
        return {
            "p_value_fwer": fwer_p_values(np.asarray(metrics["pearson_corr"]), self.pearson.max(axis=0)),
            "p_value_fwer_auroc": fwer_p_values(np.asarray(metrics["auroc_3v0"]), self.auroc.max(axis=0)),
        }

    def summary(self, metrics: dict[str, np.ndarray], names: np.ndarray) -> dict:
        """analysis.json's `permutation` part: the null's settings, chance levels overall and per SAE, the best real
        scores and the permuted maxima."""
        p = self.p_values(metrics)
        overall = {"pearson": self.pearson.max(axis=0), "auroc_3v0": self.auroc.max(axis=0)}
        best = {
            name: _nanmax(metrics[metric]) for name, metric in (("pearson", "pearson_corr"), ("auroc_3v0", "auroc_3v0"))
        }
        return {
            "permutations": int(self.pearson.shape[1]),
            "alpha": ALPHA,
            "significant_features": int(beats_chance(p["p_value_fwer"]).sum()),
            "significant_features_auroc": int(beats_chance(p["p_value_fwer_auroc"]).sum()),
            "best": best,
            "chance": {name: _finite(chance_level(values)) for name, values in overall.items()},
            "chance_per_sae": {
                str(name): {
                    "pearson": _finite(chance_level(self.pearson[i])),
                    "auroc_3v0": _finite(chance_level(self.auroc[i])),
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


class PermutationNull:
    """The permutation null of every config (a NullMaxima), from `permutations` label permutations."""

    name = "null"
    extension = "npz"
    selects_on_permuted_labels = False

    def wanted(self, options: ResamplingOptions) -> bool:
        """On unless --permutations 0."""
        return options.permutations > 0

    def key_parts(self, options: ResamplingOptions, residuals: Location | None) -> list:
        """The number of permutations and their seed."""
        return [options.permutations, options.seed]

    def extra_layers(self, context: ResamplingContext) -> list[int]:
        """None: only the configs have a null."""
        return []

    def for_layer(self, inputs: LayerInputs) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(config position, permuted Pearson maxima, permuted AUROC maxima) of each of the layer's configs."""
        context = inputs.context
        return [
            (position, *null_maxima(matrix, context.labels, context.permutations))
            for position, matrix in zip(inputs.positions, inputs.matrices)
        ]

    def combine(self, shares: list, context: ResamplingContext) -> NullMaxima:
        """Every config's maxima in one [config, permutation] array each."""
        shape = (len(context.configs.names), context.options.permutations)
        pearson, auroc = np.full(shape, np.nan), np.full(shape, np.nan)
        for share in shares:
            for position, pearson_maxima, auroc_maxima in share:
                pearson[position], auroc[position] = pearson_maxima, auroc_maxima
        return NullMaxima(pearson, auroc)

    def save(self, file: BinaryIO, value: NullMaxima) -> None:
        """An .npz of `pearson` and `auroc`."""
        np.savez(file, pearson=value.pearson, auroc=value.auroc)

    def load(self, path: Path) -> NullMaxima:
        """The NullMaxima saved at path."""
        with np.load(path, allow_pickle=False) as data:
            return NullMaxima(data["pearson"], data["auroc"])
