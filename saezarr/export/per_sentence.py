"""`saezarr export-npz --per-sentence`: one `sentence_{i+1:06d}.npz` per sentence, in the layout of the original
pipeline's per-sentence extractor, read from the store one fragment chunk at a time."""

from __future__ import annotations

import logging
import os
import secrets
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from saezarr.durable.npyzip import read_members
from saezarr.errors import InputError, LogText, OutputExists, StoreUnfinished, option
from saezarr.export.per_config import (
    PARTIAL_SUFFIX,
    ConfigTarget,
    ExportSummary,
    prepare_output,
    refuse_incomplete,
    remove_stale_partials,
    select_targets,
)
from saezarr.machine import usable_cores
from saezarr.progress import progress_off
from saezarr.sites import resid_post
from saezarr.store.format import Store
from saezarr.store.reading import open_existing
from saezarr.store.residual_arrays import EMBEDDINGS_HOOK, kept_residuals

# key -> (dtype kind, rank): `n` fragments, `c` configs, `w` width, `h` hidden
_log = logging.getLogger(__name__)
SENTENCE_KEYS = {
    "sentence": ("U", ""),
    "concept_strength_label": ("i", ""),
    "sentence_index": ("i", ""),
    "fragments": ("U", "n"),
    "token_positions": ("i", "n"),
    "is_final_token": ("b", "n"),
    "fragment_lengths": ("i", "n"),
    "activations": ("f", "cnw"),
    "hidden_states": ("f", "cnh"),
    "embeddings": ("f", "nh"),
    "layers": ("i", "c"),
    "average_l0s": ("f", "c"),
    "num_features": ("i", ""),
    "hidden_dim": ("i", ""),
}
RESIDUAL_KEYS = ("hidden_states", "embeddings")


def sentence_file(index: int) -> str:
    """The file name of a sentence (0-based index): `sentence_000001.npz` for the first."""
    return f"sentence_{index + 1:06d}.npz"


def export_per_sentence(
    store: str | Path,
    output: str | Path,
    configs: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    compressed: bool = True,
    jobs: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> ExportSummary:
    """Export one `.npz` per sentence holding the selected, complete configurations (and the residual stream, if the
    store keeps that of every selected config's layer); refuse incomplete ones and files saezarr did not write;
    `quiet`: no progress bar."""
    started = time.perf_counter()
    opened = open_existing(store)
    output = Path(output)
    targets = select_targets(opened, output, configs, layers)
    refuse_incomplete(opened, targets)
    _refuse_mixed_widths(opened, targets)
    with_residuals = _residuals_for(opened, targets)
    keys = [k for k in SENTENCE_KEYS if with_residuals or k not in RESIDUAL_KEYS]
    coords = {name: opened.coordinate(name) for name in ("sentence_index", "token_position", "fragment_length")}
    sentences = coords["sentence_index"]
    starts = np.flatnonzero(np.r_[True, sentences[1:] != sentences[:-1]])
    stops = np.r_[starts[1:], len(sentences)]
    names = [sentence_file(int(sentences[s])) for s in starts]
    _refuse_foreign(output, names)
    prepare_output(output)
    newest = _newest_mark(opened, targets)
    todo = [i for i, name in enumerate(names) if overwrite or not _up_to_date(output / name, keys, newest)]
    summary = ExportSummary(output, jobs=jobs or usable_cores(), unit="sentences")
    summary.skipped = [output / names[i] for i in range(len(names)) if i not in set(todo)]
    save = np.savez_compressed if compressed else np.savez
    wanted = set(todo)
    pending: deque = deque()

    def drain(keep: int) -> None:
        while len(pending) > keep:
            path = pending.popleft().result()
            summary.written.append(path)
            summary.bytes_written += path.stat().st_size
            bar.update(1)

    with (
        ThreadPoolExecutor(max_workers=summary.jobs, thread_name_prefix="saezarr-export") as pool,
        tqdm(total=len(todo), unit="file", desc="saezarr export-npz", disable=progress_off(quiet)) as bar,
    ):
        for i, arrays in _sentences(opened, targets, with_residuals, starts, stops, coords, wanted):
            pending.append(pool.submit(_write, output / names[i], arrays, save))
            drain(4 * summary.jobs)  # a few files per thread in memory at once
        drain(0)
    summary.elapsed = time.perf_counter() - started
    return summary


def _refuse_mixed_widths(store: Store, targets: Sequence[ConfigTarget]) -> None:
    """Refuse configs of several SAE widths: a sentence's file holds one activations array of one width."""
    widths: dict[int, str] = {}
    for target in targets:
        widths.setdefault(int(store.widths[target.index]), target.name)
    if len(widths) > 1:
        named = ", ".join(f"{width} ({name})" for width, name in sorted(widths.items()))
        raise InputError(
            f"export-npz {option('per_sentence', True)} {store.path}: the selected configs have SAEs of different "
            f"widths, {named}; a sentence's file holds one width: select configs of one width with {option('configs')} "
            f"or {option('layers')}"
        )


def _residuals_for(store: Store, targets: Sequence[ConfigTarget]) -> bool:
    """Whether the files get hidden_states and embeddings; if not, say why once."""
    residuals = store.residuals
    if residuals is None:
        _log.warning(
            LogText(
                f"{store.path} keeps no residual stream (build it with {option('residuals')}): the files hold "
                "everything but hidden_states and embeddings"
            )
        )
        return False
    missing = sorted({t.layer for t in targets} - set(residuals.layers))
    if missing:
        _log.warning(
            LogText(
                f"{store.path} keeps the residual stream of layers {','.join(map(str, residuals.layers))}, not of "
                f"layer {missing[0]} of a selected config: the files hold everything but hidden_states and embeddings "
                f"(select configs of kept layers with {option('layers')} to have them)"
            )
        )
        return False
    if not residuals.done().all():
        raise StoreUnfinished(
            f"{store.path}: not exported, the residual stream is not fully built; finish it with "
            f"{option('resume', True)}"
        )
    return True


def _refuse_foreign(output: Path, names: Sequence[str]) -> None:
    """Refuse to touch a file under a sentence file's name that saezarr did not write."""
    for name in names:
        path = output / name
        if path.exists() and not _is_sentence_file(path):
            raise OutputExists(
                f"{option('output', output)}: {name} exists and is not a per-sentence file saezarr wrote; refusing to "
                f"overwrite it (move it away or choose another {option('output')})"
            )


def _is_sentence_file(path: Path, keys: Sequence[str] | None = None) -> bool:
    """True if path is a readable `.npz` of the per-sentence layout (with exactly `keys`, if given), complete."""
    try:
        members = read_members(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
    allowed = set(SENTENCE_KEYS)
    expected = allowed - set(RESIDUAL_KEYS)
    if not expected <= set(members) <= allowed or (keys is not None and set(members) != set(keys)):
        return False
    return all(member.complete and member.dtype.kind == SENTENCE_KEYS[k][0] for k, member in members.items())


def _up_to_date(path: Path, keys: Sequence[str], newest: int) -> bool:
    return path.is_file() and _is_sentence_file(path, keys) and path.stat().st_mtime_ns >= newest


def _newest_mark(store: Store, targets: Sequence[ConfigTarget]) -> int:
    """The newest completion mark of the selected configs (and residual units): a file older than it is stale."""
    return store.newest_mark_ns([t.index for t in targets], residuals=True)


def _sentences(
    store: Store,
    targets: Sequence[ConfigTarget],
    with_residuals: bool,
    starts: np.ndarray,
    stops: np.ndarray,
    coords: dict[str, np.ndarray],
    wanted: set[int],
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Each wanted sentence's arrays, in order, reading each fragment chunk once."""
    texts = store.coordinate("fragment_text")
    originals = store.coordinate("original_sentence")
    labels = store.coordinate("concept_strength_label")
    finals = store.coordinate("is_final_token")
    config_arrays = {
        "layers": np.array([t.layer for t in targets], dtype=np.int64),
        "average_l0s": np.array([float(t.average_l0) for t in targets], dtype=np.float64),
        "num_features": np.array(store.widths[targets[0].index], dtype=np.int64),
    }
    hidden = store.residuals.hidden if store.residuals is not None else store.attrs.get("hidden_size", -1)
    config_arrays["hidden_dim"] = np.array(hidden, dtype=np.int64)
    rows = _RowWindow(store, targets, with_residuals)
    for i, (start, stop) in enumerate(zip(starts.tolist(), stops.tolist())):
        if i not in wanted:
            continue
        arrays = {
            "sentence": np.array(str(originals[start])),
            "concept_strength_label": np.array(int(labels[start]), dtype=np.int64),
            "sentence_index": np.array(int(coords["sentence_index"][start]), dtype=np.int64),
            "fragments": np.array([str(t) for t in texts[start:stop]], dtype=str),
            "token_positions": coords["token_position"][start:stop].astype(np.int64),
            "is_final_token": finals[start:stop].astype(bool),
            "fragment_lengths": coords["fragment_length"][start:stop].astype(np.int64),
            **rows.take(start, stop),
            **config_arrays,
        }
        yield i, arrays


class _RowWindow:
    """The selected configs' activations (and residuals) of a range of fragments, decoding each chunk once."""

    def __init__(self, store: Store, targets: Sequence[ConfigTarget], with_residuals: bool):
        self.store, self.targets, self.with_residuals = store, targets, with_residuals
        self.chunk, self.data = -1, dict[str, np.ndarray]()

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """{activations, and hidden_states and embeddings if kept} of fragments [start, stop)."""
        parts: dict[str, list[np.ndarray]] = {}
        for chunk in range(start // self.store.chunk_fragments, (stop - 1) // self.store.chunk_fragments + 1):
            self._load(chunk)
            first, _ = self.store.chunk_bounds(chunk)
            lo, hi = max(start, first) - first, min(stop, first + self.store.chunk_size(chunk)) - first
            for key, value in self.data.items():
                parts.setdefault(key, []).append(value[..., lo:hi, :])
        return {key: np.concatenate(values, axis=-2) for key, values in parts.items()}

    def _load(self, chunk: int) -> None:
        if chunk == self.chunk:
            return
        store = self.store
        activations = np.stack([store.read_chunk(t.index, chunk, lambda block: block.copy()) for t in self.targets])
        self.data = {"activations": activations.astype(np.float32, copy=False)}
        if self.with_residuals:
            start, stop = store.chunk_bounds(chunk)
            arrays = kept_residuals(store)
            kept = arrays.read({resid_post(t.layer) for t in self.targets} | {EMBEDDINGS_HOOK}, start, stop)
            self.data["hidden_states"] = np.stack([kept[resid_post(t.layer)] for t in self.targets]).astype(np.float32)
            self.data["embeddings"] = kept[EMBEDDINGS_HOOK].astype(np.float32)
        self.chunk = chunk


def _write(path: Path, arrays: dict[str, np.ndarray], save) -> Path:
    """Write one sentence's file under a temporary name beside it, then rename it into place."""
    remove_stale_partials(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            save(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path
