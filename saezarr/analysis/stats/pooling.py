"""Per-sentence activations from a store's fragments: the final token's, or the max or mean over a sentence."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import itemgetter

import numpy as np

from saezarr.analysis.analyze_options import POOLS
from saezarr.errors import InputError, StoreDamaged, option

# reads one fragment chunk of one config's feature range: read(chunk, reduce) is reduce(rows [fragment, feature])
ChunkReader = Callable[[int, Callable[[np.ndarray], np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class SentenceLayout:
    """Where each sentence's fragments lie among the fragments (small and picklable: sent to dask workers)."""

    starts: np.ndarray  # each sentence's first fragment
    stops: np.ndarray  # one past each sentence's last fragment
    finals: np.ndarray | None  # each sentence's final-token fragment (None: some sentence has not exactly one)
    labels: np.ndarray  # each sentence's concept_strength_label

    @classmethod
    def of(cls, sentence_index: np.ndarray, is_final_token: np.ndarray, labels: np.ndarray) -> SentenceLayout:
        """The layout of fragments given their sentence index (ordered), final-token flag and label."""
        sentence = np.asarray(sentence_index)
        if np.any(np.diff(sentence) < 0):
            raise StoreDamaged("the store's fragments are not ordered by sentence")
        starts = sentence_starts(sentence)
        stops = np.r_[starts[1:], len(sentence)]
        finals = np.flatnonzero(np.asarray(is_final_token, dtype=bool))
        one_each = len(finals) == len(starts) and not np.any(sentence[finals] != sentence[starts])
        return cls(starts, stops, finals if one_each else None, np.asarray(labels)[starts].astype(np.int64))

    @property
    def n_sentences(self) -> int:
        """The number of sentences."""
        return len(self.starts)

    def check(self, pool: str) -> None:
        """Refuse an unknown pool, and `final` where some sentence lacks exactly one final-token fragment."""
        check_pool(pool)
        if pool == "final" and self.finals is None:
            raise InputError(
                f"{option('pool', 'final')}: not every sentence has exactly one final-token fragment in the store"
            )


def sentence_starts(sentence_index: np.ndarray) -> np.ndarray:
    """The index of each sentence's first fragment, given the fragments' sentence index (ordered)."""
    return np.flatnonzero(np.r_[True, sentence_index[1:] != sentence_index[:-1]])


def check_pool(pool: str) -> None:
    """Refuse a pool that is not one of POOLS."""
    if pool not in POOLS:
        raise InputError(f"{option('pool')}: expected one of {', '.join(POOLS)}, got {pool!r}")


def pooled_dtype(pool: str, dtype: np.dtype) -> np.dtype:
    """The dtype of per-sentence activations pooled from activations of dtype (a mean is float64)."""
    return np.dtype(np.float64) if pool == "mean" else np.dtype(dtype)


def pool_sentences(
    read: ChunkReader, bounds: Sequence[tuple[int, int]], layout: SentenceLayout, pool: str, width: int, dtype: np.dtype
) -> np.ndarray:
    """Per-sentence activations [sentence, feature] of one config's `width` features, reading one fragment chunk
    (fragments bounds[i] = [start, stop)) at a time: memory is one chunk plus the result."""
    layout.check(pool)
    out = np.zeros((layout.n_sentences, width), dtype=pooled_dtype(pool, dtype))
    if pool == "max":
        out.fill(-np.inf)
    for chunk, (start, stop) in enumerate(bounds):
        if pool == "final":
            assert layout.finals is not None  # layout.check: every sentence has its final-token fragment
            first, last = np.searchsorted(layout.finals, (start, stop))
            rows = layout.finals[first:last] - start
            out[first:last] = read(chunk, itemgetter(rows))
            continue
        # the sentences with fragments in this chunk, and where each one's part of the chunk begins
        first, last = np.searchsorted(layout.stops, start, side="right"), np.searchsorted(layout.starts, stop)
        segments = np.maximum(layout.starts[first:last], start) - start
        if pool == "max":
            part = read(chunk, partial(np.maximum.reduceat, indices=segments, axis=0))
            np.maximum(out[first:last], part, out=out[first:last])
        else:
            out[first:last] += read(chunk, partial(np.add.reduceat, indices=segments, axis=0, dtype=np.float64))
    if pool == "mean":
        out /= (layout.stops - layout.starts).astype(np.float64)[:, None]
    return out
