"""The resampled statistics behind analyze's honest answers, each one `ResampledStatistic`: the permutation null,
the held-out validation and the emergence curves (this package's modules). resampling.py runs a list of them in one
pass over the cached per-sentence activations, a layer at a time, and keeps each one's results in the cache entry
under a key of the options they depend on; a new resampled statistic is one new class.

What the statistics computed in one pass share is in a `ResamplingContext` (the labels, the folds, the targets the
fold splits select on, the residual stream) and, per layer, a `LayerInputs` (its configs' activations and their fold
splits, computed once for all statistics that use them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np

from saezarr.analysis.stats.features import FeatureMatrix
from saezarr.analysis.stats.permutation import Permutations
from saezarr.analysis.stats.validation import FoldSplit, Thresholds, fold_splits
from saezarr.analysis.tables import ConfigTable
from saezarr.sites import RESID_POST
from saezarr.store.storage import Location


@dataclass(frozen=True)
class ResamplingOptions:
    """What to resample: permutations of the null (0: none), folds (0: no held-out validation nor emergence),
    permuted labellings behind the emergence chance levels, the seed, and the filter behind the top features."""

    permutations: int
    folds: int
    probe_permutations: int
    seed: int
    thresholds: Thresholds


@dataclass
class ResamplingContext:
    """What the statistics computed in one pass share: the configs, each sentence's label, the options, each
    sentence's fold (None: folds off), the label permutations of the null, the targets [sentences, targets] the fold splits select on (the labels, then
    any permuted labellings a statistic selects on) and a reader of each residual layer's per-sentence residuals."""

    configs: ConfigTable
    labels: np.ndarray
    options: ResamplingOptions
    folds: np.ndarray | None
    permutations: Permutations
    targets: np.ndarray
    read_residuals: Callable[[], dict[int, np.ndarray]] = field(default=dict, repr=False)

    @cached_property
    def residual_of(self) -> dict[int, np.ndarray]:
        """Each residual layer's per-sentence residuals [sentence, hidden] (read on first use; empty: none kept)."""
        return self.read_residuals()


@dataclass
class LayerInputs:
    """One layer's share of the pass: its configs' positions and per-sentence activations, and (on first use) their
    features split by the folds, shared by the statistics that select on the folds."""

    layer: int
    positions: np.ndarray
    matrices: list[FeatureMatrix]
    context: ResamplingContext
    site: str = RESID_POST  # the kind of site the configs read: a layer's SAEs of two sites are two shares

    @cached_property
    def splits(self) -> list[FoldSplit] | None:
        """The layer's features (every config's, side by side) split by the folds against the context's targets
        (None: folds off, or no features on this layer)."""
        if self.context.folds is None or not sum(matrix.shape[1] for matrix in self.matrices):
            return None
        return fold_splits(FeatureMatrix.joined(self.matrices), self.context.targets, self.context.folds)


@runtime_checkable
class ResampledStatistic(Protocol):
    """One resampled statistic: computed a layer at a time (each layer's share on its own thread), then combined;
    kept in the cache entry as `NAME-KEY.EXTENSION`, KEY a digest of key_parts."""

    name: str  # its results' name in Resampled, and its cache file's stem
    extension: str  # its cache file's extension
    selects_on_permuted_labels: bool  # its fold splits also take the permuted labellings as targets

    def wanted(self, options: ResamplingOptions) -> bool:
        """Whether these options ask for it."""
        ...

    def key_parts(self, options: ResamplingOptions, residuals: Location | None) -> list:
        """What its results depend on beyond the cache entry (JSON values): the options, and the residual stream's
        identity where it reads that."""
        ...

    def extra_layers(self, context: ResamplingContext) -> Iterable[int]:
        """The layers it has results on beyond the analysed configs' layers."""
        ...

    def for_layer(self, inputs: LayerInputs) -> Any:
        """Its share of one layer's results (on a worker thread)."""
        ...

    def combine(self, shares: list, context: ResamplingContext) -> Any:
        """Its results, from every layer's share in layer order."""
        ...

    def save(self, file: BinaryIO, value: Any) -> None:
        """Write its results into the cache file."""
        ...

    def load(self, path: Path) -> Any:
        """Its results read back from the cache file (OSError, ValueError, KeyError or EOFError if unreadable)."""
        ...
