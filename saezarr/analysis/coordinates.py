"""The store coordinates an analysis reads, memoized beside the analysis cache: a re-run takes them from one .npz
file instead of importing zarr (0.1 s) to decode them, so features.parquet is under way sooner."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saezarr.folders import replace_file
from saezarr.store.layout import Store

# each config's layer, L0 and Neuronpedia source; each fragment's sentence, final-token flag and label
NAMES = ("layer", "average_l0", "neuronpedia_source", "sentence_index", "is_final_token", "concept_strength_label")
FOLDER = "coordinates"  # under the cache root: one memo per store path, `<digest of the path>.npz`
_IDENTITY = "__identity__"


@dataclass
class AnalysisCoordinates:
    """The store's coordinates among NAMES (older stores lack some), by name, strings as `<U` arrays."""

    values: dict[str, np.ndarray]
    memo: Path
    identity: str
    memoized: bool

    @classmethod
    def of(cls, store: Store, root: Path) -> AnalysisCoordinates:
        """From the memo under root if the store's coordinate files are unchanged, else read with zarr."""
        names = [name for name in NAMES if store.has_coordinate(name)]
        identity = _identity(store, names)
        memo = root / FOLDER / f"{hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:32]}.npz"
        values = _load(memo, identity)
        if values is not None:
            return cls(values, memo, identity, memoized=True)
        return cls({name: _plain(store.coordinate(name)) for name in names}, memo, identity, memoized=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def memoize(self) -> None:
        """Write the memo unless it is there (called once the analysis's checks pass: bad input writes nothing)."""
        if not self.memoized:
            _save(self.memo, self.identity, self.values)
            self.memoized = True


def _identity(store: Store, names: list[str]) -> str:
    """The store's path and every file of the coordinates (name, size, mtime, inode): a rebuilt store differs."""
    files = []
    for name in names:
        for folder, _, entries in os.walk(store.path / name):
            for entry in sorted(entries):
                stat = os.stat(os.path.join(folder, entry))
                files.append([os.path.relpath(os.path.join(folder, entry), store.path), stat.st_size,
                              stat.st_mtime_ns, stat.st_ino])
    return json.dumps({"store": str(store.path.resolve()), "files": sorted(files)})


def _plain(values: np.ndarray) -> np.ndarray:
    """Strings (numpy's StringDType) as a fixed-width `<U` array, which .npz files hold without pickling."""
    return np.array(values.tolist(), dtype=str) if values.dtype.kind == "T" else values


def _load(memo: Path, identity: str) -> dict[str, np.ndarray] | None:
    """The memo's arrays if it was made for identity, else None (also when missing or unreadable)."""
    try:
        with np.load(memo) as npz:
            if str(npz[_IDENTITY]) != identity:
                return None
            return {name: npz[name] for name in npz.files if name != _IDENTITY}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _save(memo: Path, identity: str, values: dict[str, np.ndarray]) -> None:
    """Write the memo whole by rename, then delete those of deleted stores."""
    if replace_file(memo, lambda file: np.savez(file, **{_IDENTITY: np.array(identity)}, **values)):
        _remove_memos_of_stores_gone(memo.parent, keep=memo)


def _remove_memos_of_stores_gone(folder: Path, keep: Path) -> None:
    """Delete the memos (and unreadable ones) whose store has been deleted or moved."""
    for memo in folder.glob("*.npz"):
        if memo == keep:
            continue
        try:
            with np.load(memo) as npz:
                store = Path(json.loads(str(npz[_IDENTITY]))["store"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            store = None
        if store is None or not (store / "zarr.json").is_file():
            memo.unlink(missing_ok=True)
