"""saezarr: Gemma Scope SAE features of Gemma-2 on labeled sentences, in one resumable Zarr store."""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saezarr.compat import hide_zarr_codec_notice

if TYPE_CHECKING:
    import xarray

    from saezarr.analysis.results import Analysis, Comparison
    from saezarr.api import analyze, compare, export_npz, info
    from saezarr.store_info import StoreInfo

    __version__: str

# the API, imported on first use: `import saezarr` stays cheap (the options and what they import cost ~40 ms)
_LAZY = {
    "analyze": "saezarr.api",
    "compare": "saezarr.api",
    "export_npz": "saezarr.api",
    "info": "saezarr.api",
    "Analysis": "saezarr.analysis.results",
    "Comparison": "saezarr.analysis.results",
    "StoreInfo": "saezarr.store_info",
}

hide_zarr_codec_notice()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        found = getattr(import_module(_LAZY[name]), name)
        globals()[name] = found
        return found
    # looked up on first use: importlib.metadata costs every command ~10 ms of start-up
    if name != "__version__":
        raise AttributeError(f"module 'saezarr' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("saezarr")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+unknown"
    globals()["__version__"] = found
    return found


def open_store(path: str | PathLike) -> xarray.Dataset:
    """Open a saezarr store as a lazy, dask-backed xarray Dataset."""
    from saezarr.store.reading import open_store as _open_store

    return _open_store(Path(path))  # it takes Path(path) first anyway


def feature_metrics(ds: xarray.Dataset, pool: str = "final") -> xarray.Dataset:
    """Every feature's metrics against the concept labels: a lazy Dataset with dims config x feature."""
    from saezarr.analysis.lazy import feature_metrics as _feature_metrics

    return _feature_metrics(ds, pool)


def token_traces(ds: xarray.Dataset, sentence_index: int, config: str, features) -> xarray.DataArray:
    """The features' activations token by token through one sentence: a DataArray (feature, token)."""
    from saezarr.analysis.traces import token_traces as _token_traces

    return _token_traces(ds, sentence_index, config, features)


def plot_token_traces(traces: xarray.DataArray, ax=None):
    """Plot `token_traces` with matplotlib, one line per feature; return the axes."""
    from saezarr.analysis.traces import plot_token_traces as _plot

    return _plot(traces, ax)


def emergence(
    ds: xarray.Dataset, pool: str = "final", folds: int = 5, seed: int = 0, permutations: int = 20, layers=None
) -> xarray.Dataset:
    """Per layer, the held-out scores of the best SAE feature and of linear probes, with chance levels: a Dataset
    over `layer`."""
    from saezarr.analysis.emergence import emergence as _emergence

    return _emergence(ds, pool, folds, seed, permutations, layers)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


# `saezarr.build(...)`: the build package is callable as the API's build (saezarr/build/__init__.py)
from saezarr import build as build  # noqa: E402

__all__ = [
    "Analysis",
    "Comparison",
    "StoreInfo",
    "__version__",
    "analyze",
    "build",
    "compare",
    "emergence",
    "export_npz",
    "feature_metrics",
    "info",
    "open_store",
    "plot_token_traces",
    "token_traces",
]
