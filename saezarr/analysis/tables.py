"""The analysis's arrow tables: the analysed configs and features.parquet's rows, with their Neuronpedia links.

Arrays are built from numpy buffers, never from Python values: pyarrow imports pandas (0.2 s) the first time it
converts those, and features.parquet should be on its way before that import."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from saezarr.analysis.stats.metrics import METRICS
from saezarr.sites import RESID_POST, split_hook

NEURONPEDIA = "https://www.neuronpedia.org"


def arrow_pool() -> pa.MemoryPool:
    """The allocator for features.parquet's arrow buffers: the system's. Arrow's default (mimalloc) faults in 2 MiB
    huge pages for these one-off buffers, which made building the table take 0.05-0.1 s instead of 0.04 s."""
    return pa.system_memory_pool()


@dataclass(frozen=True)
class ConfigTable:
    """The analysed configs: store indices, names, layers, average L0s, Neuronpedia sources ("" for none) and the
    kind of site each reads (`hook_resid_post`, `hook_mlp_out`, ...: a layer's SAEs of two sites are two groups)."""

    indices: np.ndarray
    names: np.ndarray
    layer: np.ndarray
    average_l0: np.ndarray
    sources: np.ndarray | None  # None: the store predates recorded sources
    site: np.ndarray  # the site's kind; resid_post where the store predates its hook coordinate

    @classmethod
    def of(cls, names: Sequence[str], coordinates: Mapping[str, np.ndarray], indices: list[int]) -> ConfigTable:
        """The table of the configs at indices, given all config names and the store's coordinates by name."""
        sources, hooks = coordinates.get("neuronpedia_source"), coordinates.get("hook")
        layers = coordinates["layer"][indices].astype(np.int64)
        return cls(
            np.asarray(indices, dtype=np.int64),
            np.asarray(names, dtype=object)[indices],
            layers,
            coordinates["average_l0"][indices].astype(np.int64),
            None if sources is None else np.asarray(sources)[indices].astype(str),
            site_kinds(None if hooks is None else np.asarray(hooks)[indices], len(layers)),
        )

    @property
    def several_sites(self) -> bool:
        """True if the configs read more than one kind of site (then tables say each row's site)."""
        return len(set(self.site.tolist())) > 1

    def groups(self) -> list[tuple[int, str]]:
        """Each config's (layer, site kind): the groups that per-layer results are computed over."""
        return list(zip(self.layer.tolist(), self.site.tolist()))

    def links(self) -> list[str]:
        """Each config's Neuronpedia page prefix `https://www.neuronpedia.org/{source}/`, "" where it has none."""
        sources = self.sources if self.sources is not None else [""] * len(self.names)
        return [f"{NEURONPEDIA}/{source}/" if source else "" for source in sources]


def site_kinds(hooks: np.ndarray | None, count: int) -> np.ndarray:
    """The site kind of each hook (`blocks.5.hook_mlp_out`: `hook_mlp_out`); resid_post for each of `count` configs
    of a store without hooks."""
    if hooks is None:
        return np.full(count, RESID_POST, dtype=object)
    return np.array([split_hook(str(hook))[1] for hook in hooks], dtype=object)


def features_table(
    metrics: dict[str, np.ndarray],
    passing: np.ndarray,
    configs: ConfigTable,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """features.parquet: one row per (config, feature) with every metric, passes_filter, neuronpedia_url and the
    `extra` [config, feature] columns (an arrow table over the metrics' own memory, its per-config columns one chunk
    per config: no copy of configs × features values)."""
    n_configs, width = passing.shape
    columns = {
        "config": _per_config([str(name) for name in configs.names], width, _repeated_text),
        "layer": _per_config(configs.layer.tolist(), width, _repeated_number),
        "average_l0": _per_config(configs.average_l0.tolist(), width, _repeated_number),
        **({"site": _per_config(configs.site.tolist(), width, _repeated_text)} if configs.several_sites else {}),
        "feature_id": pa.chunked_array([_numbers(np.arange(width, dtype=np.int64))] * n_configs),
        **{name: _numbers(metrics[name].ravel()) for name in METRICS},
        "passes_filter": _numbers(passing.ravel()),
        "neuronpedia_url": _urls(configs.links(), width),
        **{name: _numbers(np.asarray(values).ravel()) for name, values in (extra or {}).items()},
    }
    # no column has missing values: declared so, the parquet writer need not encode a definition level per value
    schema = pa.schema([pa.field(name, column.type, nullable=False) for name, column in columns.items()])
    return pa.table(columns, schema=schema)


def within_widths(features: pa.Table, widths: np.ndarray) -> pa.Table:
    """The features table without the rows past each config's SAE width (a store of several widths pads the narrower
    SAEs' features to the widest); the table itself where every SAE is as wide as the table."""
    width = len(features) // max(len(widths), 1)
    if (widths == width).all():
        return features
    keep = (np.arange(width)[None, :] < widths[:, None]).ravel()
    return features.filter(pa.array(keep))


def _per_config(values: list, width: int, repeat) -> pa.ChunkedArray:
    """A column holding each config's value for its `width` rows: one chunk per config, shared by equal values."""
    chunks = {value: repeat(value, width) for value in set(values)}
    return pa.chunked_array([chunks[value] for value in values])


def _urls(links: list[str], width: int) -> pa.ChunkedArray:
    """neuronpedia_url for `width` features of each config, "" where it has no link: one chunk per config."""
    ids = pc.cast(_numbers(np.arange(width, dtype=np.int64)), pa.string(), memory_pool=arrow_pool())
    unlinked = _repeated_text("", width)
    return pa.chunked_array(
        [
            pc.binary_join_element_wise(_repeated_text(link, width), ids, unlinked, memory_pool=arrow_pool())
            if link
            else unlinked
            for link in links
        ],
        pa.string(),
    )


def _numbers(values: np.ndarray) -> pa.Array:
    """An arrow array of a 1-d numeric or boolean numpy array (over its memory, when numeric and contiguous)."""
    if values.dtype == bool:  # arrow packs booleans into bits
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _repeated_number(value: int, count: int) -> pa.Array:
    return _numbers(np.full(count, value, dtype=np.int64))


def _repeated_text(value: str, count: int) -> pa.Array:
    encoded = value.encode()
    offsets = np.arange(count + 1, dtype=np.int32) * len(encoded)
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(encoded * count)])
