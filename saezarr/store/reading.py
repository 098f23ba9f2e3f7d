"""Reading a finished (or partial) store: the lazy xarray view, and the `saezarr info` summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saezarr.compat import check_xarray_reads_zarr
from saezarr.errors import InputError, StoreDamaged, StoreNotFound
from saezarr.machine import human_bytes
from saezarr.store.format import Store, array_unreadable, read_attrs
from saezarr.store.storage import Storage, open_storage

if TYPE_CHECKING:
    import xarray as xr

# coordinates on `config` that are short names, exposed as fixed-width str rather than numpy's StringDType
_CONFIG_STRINGS = ("config", "sae_path")


def open_store(path: str | Path, dask: bool = True) -> xr.Dataset:
    """Open a saezarr store as a lazy Dataset whose coordinates are in memory; its activations are dask-backed, or
    with dask=False a lazily indexed zarr array (no graph to build: for readers of the shard files)."""
    import xarray as xr

    from saezarr.store.zarr_adapter import zarr_location

    storage = _existing_store(path)
    read_attrs(storage)
    check_xarray_reads_zarr()
    root = zarr_location(storage, read_only=True)
    ds = xr.open_zarr(root) if dask else xr.open_zarr(root, chunks=None)
    # boolean masks such as `ds.where(ds.is_final_token, drop=True)` need in-memory coordinates
    ds = ds.assign_coords({name: ds[name].compute() for name in ds.coords if name not in ds.indexes})
    return ds.assign_coords({name: _fixed_width(ds[name]) for name in _CONFIG_STRINGS})


def open_existing(path: str | Path) -> Store:
    """Open a saezarr store read-only, with one-line errors for a missing, foreign or broken folder (zarr itself
    opens the activations array on first use)."""
    read_attrs(_existing_store(path))
    try:
        return Store(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreDamaged(f"{path}: {array_unreadable(exc)}") from None


def _existing_store(path: str | Path) -> Storage:
    """The storage of the store at path; a local one must be a folder that exists."""
    storage = open_storage(path)
    folder = storage.folder
    if folder is not None and not folder.exists():
        raise StoreNotFound(f"{path}: no such store")
    if folder is not None and not folder.is_dir():
        raise InputError(f"{path}: is a file, not a store folder")
    return storage


def _fixed_width(strings: xr.DataArray) -> xr.DataArray:
    """The strings as a `<U` array just wide enough for the longest."""
    return strings.astype(f"<U{max([1, *(len(str(v)) for v in strings.values.ravel())])}")


def store_info(path: str | Path) -> dict:
    """A JSON-serialisable summary of a store: provenance, sizes, and completion per configuration."""
    store = open_existing(path)
    done = store.done_matrix()
    layers, l0s = store.coordinate("layer"), store.coordinate("average_l0")
    chunk_sizes = np.array([store.chunk_size(chunk) for chunk in range(store.n_chunks)])
    dense_done = int(((done * chunk_sizes).sum(axis=1) * store.widths).sum()) * 4
    on_disk = store.bytes_on_disk()
    attrs = store.attrs
    return {
        "store": str(store.path),
        "saezarr_version": attrs.get("saezarr_version"),
        "model": attrs.get("model"),
        "model_revision": attrs.get("model_revision"),
        "model_dtype": attrs.get("model_dtype"),
        "sae_repo": attrs.get("sae_repo"),
        "sae_revision": attrs.get("sae_revision"),
        "fragments": attrs.get("fragments"),
        "input_file": attrs.get("input_file"),
        "input_sha256": attrs.get("input_sha256"),
        "n_sentences": attrs.get("n_sentences"),
        "n_fragments": store.n_fragments,
        "n_features": store.width,
        "chunk_fragments": store.chunk_fragments,
        "n_chunks": store.n_chunks,
        "complete": bool(done.all()),
        "configs": [
            {
                "name": name,
                "layer": int(layers[ci]),
                "average_l0": int(l0s[ci]),
                "width": int(store.widths[ci]),
                "done_chunks": int(done[ci].sum()),
                "total_chunks": store.n_chunks,
            }
            for ci, name in enumerate(store.config_names)
        ],
        "residuals": residuals_info(store),
        "bytes_on_disk": on_disk,
        "dense_float32_bytes": dense_done,
        "compression_ratio": round(dense_done / on_disk, 2) if on_disk else None,
    }


def residuals_info(store: Store) -> dict | None:
    """What the store keeps of the residual stream (None: nothing): layers, hidden size, dtype, done chunks, bytes,
    and the other sites kept."""
    residuals = store.residuals
    if residuals is None:
        return None
    return {
        "layers": list(residuals.layers),
        "hidden": residuals.hidden,
        "dtype": str(residuals.dtype),
        "done_chunks": int(residuals.done().sum()),
        "total_chunks": residuals.n_chunks,
        "bytes_on_disk": sum(store.bytes_on_disk(name) for name in residuals.arrays),
        "sites": [{"kind": s.kind, "layers": list(s.layers), "width": s.width} for s in residuals.sites],
    }


def _features(configs: list[dict], n_features: int) -> str:
    """The feature axis in words: its length, and the SAE widths where they differ."""
    widths = sorted({c.get("width", n_features) for c in configs})
    if len(widths) <= 1:
        return f"{n_features} features"
    return f"{n_features} features (SAE widths {', '.join(map(str, widths))}; NaN past a narrower SAE's width)"


def _sites(residuals: dict) -> str:
    """The other sites kept, as the residuals line adds them: ` + hook_mlp_out (1,2) + attn.hook_z (1; 64 wide)`."""
    return "".join(
        f" + {site['kind']} ({_layer_list(site['layers'])}"
        + ("" if site["width"] == residuals["hidden"] else f"; {site['width']} wide")
        + ")"
        for site in residuals.get("sites", [])
    )


def _layer_list(layers: list[int]) -> str:
    """Layers as the info lines show them: all of up to 8, else the first and last."""
    return ",".join(map(str, layers)) if len(layers) <= 8 else f"{layers[0]}-{layers[-1]}"


def format_info(info: dict) -> str:
    """The human form of `saezarr info`: a few labelled lines."""
    configs = info["configs"]
    n_complete = sum(c["done_chunks"] == c["total_chunks"] for c in configs)
    lines = [
        f"store        {info['store']} (saezarr {info['saezarr_version']})",
        f"model        {info['model']} @ {info['model_revision']} ({info['model_dtype']})",
        f"SAE repo     {info['sae_repo']} @ {info['sae_revision']}",
        f"input        {info['input_file']}, sha256 {info['input_sha256']}",
        f"fragments    {info['fragments']}: {info['n_sentences']} sentences, {info['n_fragments']} fragments, "
        f"{_features(configs, info['n_features'])}; {info['n_chunks']} chunks of {info['chunk_fragments']} fragments",
        f"configs      {len(configs)}, {n_complete} complete (done/total chunks):",
    ]
    for layer in sorted({c["layer"] for c in configs}):
        entries = [f"{c['name']} {c['done_chunks']}/{c['total_chunks']}" for c in configs if c["layer"] == layer]
        lines.append(f"  layer {layer:<5}{', '.join(entries)}")
    residuals = info.get("residuals")
    if residuals:
        layers = residuals["layers"]
        lines.append(
            f"residuals    {len(layers)} layers ({_layer_list(layers)}) + embeddings{_sites(residuals)}, "
            f"{residuals['hidden']} hidden, {residuals['dtype']}; "
            f"{residuals['done_chunks']}/{residuals['total_chunks']} chunks, "
            f"{human_bytes(residuals['bytes_on_disk'])} on disk"
        )
    ratio = info["compression_ratio"]
    lines.append(
        f"on disk      {human_bytes(info['bytes_on_disk'])}; dense float32 of the done chunks "
        f"{human_bytes(info['dense_float32_bytes'])}" + (f", {ratio:.1f}x compression" if ratio else "")
    )
    return "\n".join(lines)
