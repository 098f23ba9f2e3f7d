"""saezarr: Gemma Scope SAE features of Gemma-2 on labeled sentences, in one resumable Zarr store."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray

try:
    __version__ = version("saezarr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def open_store(path: str | PathLike) -> xarray.Dataset:
    """Open a saezarr store as a lazy, dask-backed xarray Dataset."""
    from saezarr.store.reading import open_store as _open_store

    return _open_store(path)


def feature_metrics(ds: xarray.Dataset, pool: str = "final") -> xarray.Dataset:
    """Every feature's metrics against the concept labels: a lazy Dataset with dims config x feature."""
    from saezarr.analysis.lazy import feature_metrics as _feature_metrics

    return _feature_metrics(ds, pool)


__all__ = ["__version__", "feature_metrics", "open_store"]
