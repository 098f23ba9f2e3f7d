"""The store coordinates an analysis reads, memoized beside the analysis cache: a re-run takes them from one .npz
file instead of importing zarr (0.1 s) to decode them, so features.parquet is under way sooner and a re-run that
shows the features it showed before needs no zarr at all."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saezarr.analysis.stats.pooling import sentence_starts
from saezarr.durable.folders import replace_file
from saezarr.store.format import Store
from saezarr.store.storage import absolute_location

# each config's layer, L0, Neuronpedia source and site; each fragment's sentence, final-token flag and label
NAMES = (
    "layer",
    "average_l0",
    "neuronpedia_source",
    "hook",
    "sentence_index",
    "is_final_token",
    "concept_strength_label",
)
# and the texts: `sentence_text`, each sentence's (original_sentence at its first fragment); each fragment's text
TEXTS = ("original_sentence", "fragment_text")
FOLDER = "coordinates"  # under the cache root: one memo per store path, `<digest of the path>.npz`
_IDENTITY = "__identity__"
_UTF8, _OFFSETS = "__utf8", "__offsets"  # texts as their UTF-8 bytes and offsets: .npz holds no str objects


@dataclass
class AnalysisCoordinates:
    """The store's coordinates among NAMES (older stores lack some), by name, strings as `<U` arrays; the texts as
    object arrays of str: `sentence_text`, and `fragment_text` unless the store has one fragment per sentence."""

    values: dict[str, np.ndarray]
    memo: Path
    identity: str
    memoized: bool

    @classmethod
    def of(cls, store: Store, root: Path) -> AnalysisCoordinates:
        """From the memo under root if the store's coordinate files are unchanged, else read with zarr."""
        names = [name for name in NAMES if store.has_coordinate(name)]
        identity = _identity(store, [*names, *TEXTS])
        memo = root / FOLDER / f"{hashlib.sha256(str(absolute_location(store.path)).encode()).hexdigest()[:32]}.npz"
        values = _load(memo, identity)
        if values is not None:
            return cls(values, memo, identity, memoized=True)
        return cls(_read(store, names), memo, identity, memoized=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def memoize(self) -> None:
        """Write the memo unless it is there (called once the analysis's checks pass: bad input writes nothing)."""
        if not self.memoized:
            _save(self.memo, self.identity, self.values)
            self.memoized = True


def _identity(store: Store, names: list[str]) -> str:
    """The store's location and every file of the coordinates (name, size, mtime, inode; in a key-value storage
    each object's key, size and time of writing): a rebuilt store differs."""
    files = []
    root = store.storage.folder
    for name in names:
        if root is None:
            for key, found in store.stats(f"{name}/").items():
                files.append([key, found.size, found.modified_ns, None])
            continue
        for folder, _, entries in os.walk(root / name):
            for entry in sorted(entries):
                stat = os.stat(os.path.join(folder, entry))
                files.append(
                    [
                        os.path.relpath(os.path.join(folder, entry), root),
                        stat.st_size,
                        stat.st_mtime_ns,
                        stat.st_ino,
                    ]
                )
    return json.dumps({"store": str(absolute_location(store.path)), "files": sorted(files)})


def _read(store: Store, names: list[str]) -> dict[str, np.ndarray]:
    values = {name: _plain(store.coordinate(name)) for name in names}
    firsts = sentence_starts(values["sentence_index"])
    values["sentence_text"] = np.asarray(store.coordinate("original_sentence"), dtype=object)[firsts]
    if store.attrs.get("fragments") != "final":
        values["fragment_text"] = np.asarray(store.coordinate("fragment_text"), dtype=object)
    return values


def _plain(values: np.ndarray) -> np.ndarray:
    """Strings (numpy's StringDType) as a fixed-width `<U` array, which .npz files hold without pickling."""
    return np.array(values.tolist(), dtype=str) if values.dtype.kind == "T" else values


def _load(memo: Path, identity: str) -> dict[str, np.ndarray] | None:
    """The memo's arrays if it was made for identity, else None (also when missing or unreadable)."""
    try:
        with np.load(memo) as npz:
            if str(npz[_IDENTITY]) != identity:
                return None
            values = {name: npz[name] for name in npz.files if name != _IDENTITY}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    for name in [name.removesuffix(_UTF8) for name in values if name.endswith(_UTF8)]:
        values[name] = _unpacked(values.pop(name + _UTF8), values.pop(name + _OFFSETS))
    return values


def _save(memo: Path, identity: str, values: dict[str, np.ndarray]) -> None:
    """Write the memo whole by rename, then delete those of deleted stores."""
    arrays = {_IDENTITY: np.array(identity)}
    for name, array in values.items():
        arrays.update(_packed(name, array) if array.dtype == object else {name: array})
    if replace_file(memo, lambda file: np.savez(file, **arrays)):  # type: ignore[arg-type]  # numpy's stubs: ** might be allow_pickle
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


def _packed(name: str, texts: np.ndarray) -> dict[str, np.ndarray]:
    encoded = [str(text).encode() for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return {name + _UTF8: np.frombuffer(b"".join(encoded), dtype=np.uint8), name + _OFFSETS: offsets}


def _unpacked(utf8: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    data = utf8.tobytes()
    texts = np.empty(len(offsets) - 1, dtype=object)
    texts[:] = [data[start:stop].decode() for start, stop in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    return texts
