"""The Zarr store layout: one `activations[config, fragment, feature]` array, coordinates, completion marks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import ZstdCodec

from saezarr.configs import SAEConfig
from saezarr.errors import SaezarrError
from saezarr.store.locking import StoreLock, process_alive
from saezarr.store.shards import ShardEncoder

ACTIVATIONS = "activations"
STATE_GROUP = "_saezarr"
DEFAULT_CHUNK_FRAGMENTS = 512
DEFAULT_FEATURE_CHUNK = 2048
STAGING_SUFFIX = ".creating"
ZSTD_LEVEL = 1  # on SAE latents level 1 is both smaller and faster than 3 (USAGE.md)
# fields a resumed build must share with the build that started the store
RESUME_FIELDS = ("input_sha256", "configs", "model", "model_revision", "sae_repo", "sae_revision", "model_dtype", "fragments")


class Store:
    """An open saezarr store: its layout, and the completion marks of its (config, fragment-chunk) units."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        self.attrs = read_saezarr_attrs(self.path)
        # every unit is written whole, so zarr need not test chunks for being all fill value
        self.array = zarr.open_array(self.path / ACTIVATIONS, mode=mode).with_config({"write_empty_chunks": True})
        self.n_configs, self.n_fragments, self.width = self.array.shape
        self.chunk_fragments = (self.array.shards or self.array.chunks)[1]
        self.n_chunks = -(-self.n_fragments // self.chunk_fragments)
        self.config_names: list[str] = list(self.attrs["configs"])
        self.marks = self.path / STATE_GROUP / "done"
        self._shard_encoder = ShardEncoder.for_array(self.array)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """Fragment index range [start, stop) of a fragment chunk."""
        start = chunk * self.chunk_fragments
        return start, min(start + self.chunk_fragments, self.n_fragments)

    def chunk_size(self, chunk: int) -> int:
        """Number of fragments in a fragment chunk."""
        start, stop = self.chunk_bounds(chunk)
        return stop - start

    def _mark(self, config_index: int, chunk: int) -> Path:
        return self.marks / self.config_names[config_index] / str(chunk)

    def _shard_file(self, config_index: int, chunk: int) -> Path:
        key = self.array.metadata.encode_chunk_key((config_index, chunk, 0))
        return self.path / ACTIVATIONS / key

    def is_done(self, config_index: int, chunk: int) -> bool:
        """True if the unit is marked complete and the data file it marks is there."""
        return self._mark(config_index, chunk).exists() and self._shard_written(config_index, chunk)

    def _shard_written(self, config_index: int, chunk: int) -> bool:
        shard = self._shard_file(config_index, chunk)
        return shard.is_file() and shard.stat().st_size > 0

    def done_matrix(self) -> np.ndarray:
        """Completion of every (config, chunk) unit, as a boolean [n_configs, n_chunks] array."""
        done = np.zeros((self.n_configs, self.n_chunks), dtype=bool)
        for ci, name in enumerate(self.config_names):
            folder = self.marks / name
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                if entry.name.isdigit() and int(entry.name) < self.n_chunks:
                    done[ci, int(entry.name)] = self._shard_written(ci, int(entry.name))
        return done

    def write_chunk(self, config_index: int, chunk: int, latents: np.ndarray) -> None:
        """Write one unit's latents, then mark it complete."""
        expected = (self.chunk_size(chunk), self.width)
        if latents.shape != expected:
            raise ValueError(f"unit ({config_index}, {chunk}) takes latents of shape {expected}, got {latents.shape}")
        shard = self._shard_file(config_index, chunk)
        if self._shard_encoder is not None:
            # zarr's array API merges each inner chunk into a fill-value buffer on one event-loop thread;
            # encoding the whole shard here runs at the codec's speed on every writer thread
            _write_durably(shard, b"".join(self._shard_encoder.encode(latents)))
        else:
            start, stop = self.chunk_bounds(chunk)
            # an unmarked unit may have a torn shard from a crash, which zarr would read back to merge into
            shard.unlink(missing_ok=True)
            self.array[config_index, start:stop, :] = latents
            _fsync(shard)  # durable before marked, even across a power cut
        mark = self._mark(config_index, chunk)
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()

    def discard_partial_writes(self) -> None:
        """Delete the temporary files of writes that a killed build left."""
        for path in (self.path / ACTIVATIONS).rglob("*.partial"):
            path.unlink(missing_ok=True)

    def lock(self) -> StoreLock:
        """The store's writer lock (not yet acquired)."""
        return store_lock(self.path)

    def bytes_on_disk(self) -> int:
        """Total size of the store's files."""
        return directory_bytes(self.path)


def _write_durably(path: Path, data: bytes) -> None:
    """Write a file's whole content and fsync it, creating its folder if needed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        exc.filename = exc.filename or str(path)  # a failed write() (disk full) names no file by itself
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def directory_bytes(path: Path) -> int:
    """Total size of the files below a folder."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_saezarr_attrs(path: Path) -> dict:
    """The store's root attributes, or an error if the folder is not a saezarr store."""
    meta = Path(path) / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        attrs = {}
    if "saezarr_version" not in attrs:
        raise SaezarrError(f"{path}: not a saezarr store (no saezarr attributes in zarr.json)")
    return attrs


def check_output_path(path: Path) -> bool:
    """Return whether a saezarr store already exists at path; refuse files and foreign folders."""
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise SaezarrError(f"--output {path}: is a file, not a store folder")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    try:
        read_saezarr_attrs(path)
    except SaezarrError as exc:
        raise SaezarrError(f"--output {exc}; refusing to touch it") from None
    return True


def check_resume(path: Path, attrs: dict) -> None:
    """Refuse to resume a store started with a different input, config selection, model, SAEs or options."""
    stored = read_saezarr_attrs(path)
    for field in RESUME_FIELDS:
        if stored.get(field) != attrs.get(field):
            raise SaezarrError(
                f"--resume {path}: the store was started with a different {field.replace('_', ' ')} "
                f"({_brief(stored.get(field))}, now {_brief(attrs.get(field))}); use --overwrite to start over"
            )


def _brief(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def create_store(
    path: Path,
    fragments: pd.DataFrame,
    configs: Sequence[SAEConfig],
    width: int,
    attrs: dict,
    chunk_fragments: int = DEFAULT_CHUNK_FRAGMENTS,
    replace: bool = False,
) -> Store:
    """Create the store with its coordinates and an unwritten activations array, atomically by rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=STAGING_SUFFIX, dir=path.parent))
    try:
        _write_layout(staging, fragments, configs, width, attrs, chunk_fragments)
        if replace:
            _swap(staging, path)
        else:
            os.rename(staging, path)
    except OSError as exc:
        raise SaezarrError(f"--output {path}: could not create the store ({exc.strerror or exc})", exit_code=1) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Store(path, mode="r+")


def _swap(staging: Path, path: Path) -> None:
    """Put the staged store in place of the old one; if that fails, the old one goes back."""
    trash = path.with_name(f".{path.name}.replaced")
    shutil.rmtree(trash, ignore_errors=True)
    os.rename(path, trash)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(trash, path)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def store_lock(path: Path) -> StoreLock:
    """The writer lock of the store at path (not yet acquired), usable even if the store is damaged."""
    return StoreLock(Path(path) / STATE_GROUP / "lock", Path(path))


def open_for_resume(path: Path) -> Store:
    """Open an existing store for writing, or say in one line that it is too damaged to resume."""
    try:
        return Store(path, mode="r+")
    except (OSError, ValueError, KeyError, zarr.errors.BaseZarrError) as exc:
        raise SaezarrError(
            f"--resume {path}: the store is damaged and cannot be resumed ({type(exc).__name__}: {exc}); "
            "rebuild it with --overwrite"
        ) from None


def remove_stale_staging(path: Path) -> None:
    """Delete half-created stores (`.NAME.PID.*.creating`) whose creating process is gone."""
    for staging in Path(path).parent.glob(f".{Path(path).name}.*{STAGING_SUFFIX}"):
        pid = staging.name[len(Path(path).name) + 2 :].split(".")[0]
        if not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(staging, ignore_errors=True)


def _write_layout(path: Path, fragments: pd.DataFrame, configs, width, attrs, chunk_fragments) -> None:
    n_configs, n_fragments = len(configs), len(fragments)
    chunk_fragments = max(1, min(chunk_fragments, n_fragments))
    activations = da.zeros((n_configs, n_fragments, width), dtype=np.float32, chunks=(1, chunk_fragments, width))
    coords = {
        "config": ("config", _strings(c.name for c in configs)),
        "layer": ("config", np.array([c.layer for c in configs], dtype=np.int64)),
        "average_l0": ("config", np.array([c.average_l0 for c in configs], dtype=np.int64)),
        "sae_path": ("config", _strings(c.path for c in configs)),
        "neuronpedia_source": ("config", _strings(c.neuronpedia or "" for c in configs)),
        "feature": ("feature", np.arange(width, dtype=np.int64)),
    }
    for field in fragments.columns:
        values = fragments[field].to_numpy()
        coords[field] = ("fragment", _strings(values) if values.dtype.kind in "OUT" or field.endswith(("text", "sentence")) else values)
    dataset = xr.Dataset({ACTIVATIONS: (("config", "fragment", "feature"), activations)}, coords=coords, attrs=attrs)
    encoding = {
        ACTIVATIONS: {
            "chunks": (1, chunk_fragments, _feature_chunk(width)),
            "shards": (1, chunk_fragments, width),
            "compressors": (ZstdCodec(level=ZSTD_LEVEL, checksum=True),),  # a damaged chunk fails to decode
            "fill_value": np.nan,
        }
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        dataset.to_zarr(path, mode="w-", compute=False, encoding=encoding, zarr_format=3, consolidated=True)
    zarr.open_group(path, mode="r+").create_group(STATE_GROUP)
    (path / STATE_GROUP / "done").mkdir()


def _strings(values: Iterable) -> np.ndarray:
    # variable-length UTF-8 has a Zarr v3 spec; fixed-width numpy unicode does not
    return np.array(list(values), dtype=object)


def _feature_chunk(width: int) -> int:
    """Largest divisor of width not above DEFAULT_FEATURE_CHUNK, so inner chunks tile the shard."""
    return next(c for c in range(min(DEFAULT_FEATURE_CHUNK, width), 0, -1) if width % c == 0)
