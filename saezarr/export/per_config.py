"""`saezarr export-npz`: one legacy `.npz` file per configuration, written atomically and in parallel."""

from __future__ import annotations

import os
import secrets
import tempfile
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from saezarr.durable.locking import process_alive
from saezarr.durable.npyzip import read_members
from saezarr.errors import InputError, OutOfMemory, OutputExists, StoreUnfinished, WriteFailed, call, option, render
from saezarr.machine import available_memory as _available_memory
from saezarr.machine import human_bytes, usable_cores
from saezarr.progress import progress_off
from saezarr.sites import site_tag
from saezarr.store.format import Store
from saezarr.store.reading import open_existing
from saezarr.store.selection import select_stored_configs

# npz key -> the store's coordinate on the fragment dimension
FRAGMENT_KEYS = {
    "fragments": "fragment_text",
    "original_sentences": "original_sentence",
    "concept_strength_labels": "concept_strength_label",
    "sentence_indices": "sentence_index",
    "token_positions": "token_position",
    "is_final_token": "is_final_token",
    "fragment_lengths": "fragment_length",
}
NPZ_KEYS = ("activations", *FRAGMENT_KEYS, "layer", "average_l0", "num_features")
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class ConfigTarget:
    """One configuration to export: its row in the store and its output file."""

    index: int
    name: str
    layer: int
    average_l0: int
    path: Path


@dataclass
class ExportSummary:
    """What an export did."""

    output: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    bytes_written: int = 0
    jobs: int = 1
    elapsed: float = 0.0
    unit: str = "configs"  # what each file holds: a config's, or a sentence's ("sentences")

    def line(self) -> str:
        """One summary line for the terminal."""
        skipped = (
            f"{len(self.skipped)} up-to-date files left as they were (use {option('overwrite', True)} to rewrite them)"
        )
        if not self.written:
            return f"nothing to export to {self.output}: {skipped}"
        text = (
            f"exported {len(self.written)} {self.unit} to {self.output} ({human_bytes(self.bytes_written)}, "
            f"{self.elapsed:.1f} s, {self.jobs} at a time)"
        )
        return f"{text}; {skipped}" if self.skipped else text

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(render(self.line()))  # in Jupyter: the summary line (options as keywords), not every path


def npz_name(layer: int, average_l0: int, config: str | None = None, hook: str | None = None) -> str:
    """The file name of a configuration's export: the legacy name for an SAE of the residual stream after its layer
    (`hook` None or resid_post), the site's kind after the layer for another site, so that two sites of one layer
    never collide; by the config's name where its average L0 is unknown (-1)."""
    if average_l0 < 0 and config is not None:
        return f"{config}_activations.npz"
    return f"layer_{layer}_{site_tag(hook)}l0_{average_l0}_activations.npz"


def export_npz(
    store: str | Path,
    output: str | Path,
    configs: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    compressed: bool = True,
    jobs: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> ExportSummary:
    """Export the selected, complete configurations of a store, one `.npz` each; refuse incomplete ones; `quiet`: no
    progress bar (there is one only on a terminal or in a notebook)."""
    started = time.perf_counter()
    opened = open_existing(store)
    targets = select_targets(opened, Path(output), configs, layers)
    refuse_incomplete(opened, targets)
    _refuse_foreign(Path(output), targets)
    prepare_output(Path(output))
    summary = ExportSummary(Path(output))
    todo = []
    for target in targets:
        if not overwrite and is_up_to_date(target, opened):
            summary.skipped.append(target.path)
        else:
            todo.append(target)
    summary.jobs = parallel_jobs(jobs, len(todo), opened.n_fragments * opened.width * 4)
    if todo:
        _export_all(opened, todo, compressed, summary, quiet)
    summary.elapsed = time.perf_counter() - started
    return summary


def select_targets(
    store: Store, output: Path, names: Sequence[str] | None, layers: Sequence[int] | None
) -> list[ConfigTarget]:
    """The configurations chosen by --configs and --layers (all by default), in store order."""
    targets = all_targets(store, output)
    return [targets[i] for i in select_stored_configs(store.config_names, [t.layer for t in targets], names, layers)]


def all_targets(store: Store, output: Path) -> list[ConfigTarget]:
    """Every configuration of the store, with its output file in the output folder."""
    layers, l0s = store.coordinate("layer").tolist(), store.coordinate("average_l0").tolist()
    hooks = store.coordinate("hook").tolist() if store.has_coordinate("hook") else [None] * len(layers)
    return [
        ConfigTarget(ci, name, layers[ci], l0s[ci], output / npz_name(layers[ci], l0s[ci], name, hooks[ci]))
        for ci, name in enumerate(store.config_names)
    ]


def refuse_incomplete(store: Store, targets: Sequence[ConfigTarget]) -> None:
    """Raise unless every chunk of every target configuration is marked complete."""
    done = store.done_matrix()
    missing = [t for t in targets if not done[t.index].all()]
    if not missing:
        return
    progress = ", ".join(f"{t.name} ({int(done[t.index].sum())}/{store.n_chunks} chunks)" for t in missing)
    complete = [t.name for t in targets if done[t.index].all()]
    hint = f"; complete ones can be exported with {option('configs', ','.join(complete))}" if complete else ""
    raise StoreUnfinished(
        f"{store.path}: not exported, the build is incomplete for {progress}; finish it with `{call('build', 'resume')}`"
        f"{hint}"
    )


def prepare_output(output: Path) -> None:
    """Create the output folder if needed and check that files can be created in it."""
    if output.exists() and not output.is_dir():
        raise InputError(f"{option('output', output)}: is a file, not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=output, prefix=".saezarr-probe-")
        os.close(fd)
        os.unlink(probe)
    except PermissionError:
        raise WriteFailed(f"{option('output', output)}: permission denied; cannot write files in this folder") from None
    except OSError as exc:
        raise WriteFailed(
            f"{option('output', output)}: cannot write files in this folder ({exc.strerror or exc})"
        ) from None


FIRST_MEMBER = b"activations.npy"  # np.savez writes the arrays in order: an export's first is its activations


def is_complete_npz(path: Path, n_fragments: int, width: int) -> bool:
    """True if path is a readable `.npz` with exactly the export's keys, dtypes and shapes (headers only)."""
    expected = _expected_headers(n_fragments, width)
    try:
        members = read_members(path)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
    if sorted(members) != sorted(expected):
        return False
    return all(
        members[key].shape == shape and members[key].dtype.kind == kind and members[key].complete
        for key, (kind, shape) in expected.items()
    )


def _refuse_foreign(output: Path, targets: Sequence[ConfigTarget]) -> None:
    """Refuse to replace a file under an export's name that does not begin as an export does."""
    for target in targets:
        if target.path.exists() and not _begins_as_export(target.path):
            raise OutputExists(
                f"{option('output', output)}: {target.path.name} exists and is not a per-config export; refusing to "
                f"overwrite it (move it away or choose another {option('output')})"
            )


def _begins_as_export(path: Path) -> bool:
    """True if path starts with the zip entry `activations.npy`, as every export does (a damaged one too)."""
    try:
        with open(path, "rb") as file:
            head = file.read(30 + len(FIRST_MEMBER))
    except OSError:
        return False
    # a zip local file header: signature, ..., the name's length at byte 26, the name at byte 30
    return (
        head[:4] == b"PK\x03\x04"
        and int.from_bytes(head[26:28], "little") == len(FIRST_MEMBER)
        and (head[30:] == FIRST_MEMBER)
    )


def _expected_headers(n: int, width: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    kinds = {"fragments": "U", "original_sentences": "U", "is_final_token": "b"}
    headers: dict[str, tuple[str, tuple[int, ...]]] = {"activations": ("f", (n, width))}
    headers.update({key: (kinds.get(key, "i"), (n,)) for key in FRAGMENT_KEYS})
    headers.update({"layer": ("i", ()), "average_l0": ("f", ()), "num_features": ("i", ())})
    return headers


def is_up_to_date(target: ConfigTarget, store: Store) -> bool:
    """True if the target file is a complete export written after the config's last chunk was built."""
    if not is_complete_npz(target.path, store.n_fragments, int(store.widths[target.index])):
        return False
    # a store rebuilt (--overwrite) after the export has newer completion marks: the file is stale
    newest = store.newest_mark_ns([target.index])
    return target.path.stat().st_mtime_ns >= newest


def parallel_jobs(requested: int | None, n_files: int, array_bytes: int) -> int:
    """Files written at once: as asked (default: one per usable core), but no more than there are files or memory for."""
    jobs = requested or usable_cores()
    available = _available_memory()
    if available is not None:
        # each job holds one output array, plus zlib's and the zip writer's small buffers
        jobs = min(jobs, max(1, int(available * 0.8) // max(array_bytes, 1)))
    return max(1, min(jobs, n_files))


def _export_all(
    store: Store, targets: Sequence[ConfigTarget], compressed: bool, summary: ExportSummary, quiet: bool
) -> None:
    fragment_arrays = read_fragment_arrays(store)
    with ThreadPoolExecutor(max_workers=summary.jobs, thread_name_prefix="saezarr-export") as pool:
        futures = {pool.submit(write_config_npz, store, t, fragment_arrays, compressed): t for t in targets}
        try:
            with tqdm(total=len(futures), unit="file", desc="saezarr export-npz", disable=progress_off(quiet)) as bar:
                for future in as_completed(futures):
                    target = futures[future]
                    _raise_write_error(future.exception(), target)
                    summary.written.append(target.path)
                    summary.bytes_written += target.path.stat().st_size
                    bar.update(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _raise_write_error(error: BaseException | None, target: ConfigTarget) -> None:
    if error is None:
        return
    if isinstance(error, MemoryError):
        raise OutOfMemory(
            f"out of memory while exporting {target.name}; try fewer files at a time with {option('jobs', 1)}",
            exit_code=1,
        )
    if isinstance(error, OSError):
        raise WriteFailed(
            f"{option('output', target.path.parent)}: writing {target.path.name} failed ({error.strerror or error}); "
            "nothing was left under that name, rerun the same command",
            exit_code=1,
        ) from error
    raise error


def read_fragment_arrays(store: Store) -> dict[str, np.ndarray]:
    """The per-fragment arrays shared by every configuration's file, under their npz keys."""
    arrays = {}
    for key, coordinate in FRAGMENT_KEYS.items():
        values = store.coordinate(coordinate)
        arrays[key] = _unicode(values) if values.dtype.kind in "OTU" else values
    return arrays


def _unicode(values: np.ndarray) -> np.ndarray:
    # fixed-width `<U` loads without allow_pickle; object or StringDType arrays do not
    return np.array(values.tolist(), dtype=str) if len(values) else np.array([], dtype="<U1")


def write_config_npz(
    store: Store, target: ConfigTarget, fragment_arrays: dict[str, np.ndarray], compressed: bool
) -> None:
    """Write one configuration's `.npz` under a temporary name in the output folder, then rename it."""
    arrays = {
        "activations": read_activations(store, target),
        **fragment_arrays,
        "layer": np.array(target.layer, dtype=np.int64),
        "average_l0": np.array(float(target.average_l0), dtype=np.float64),
        "num_features": np.array(store.widths[target.index], dtype=np.int64),
    }
    save = np.savez_compressed if compressed else np.savez
    remove_stale_partials(target.path)
    partial = target.path.with_name(f".{target.path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    # os.open with 0o666 lets the umask decide the final file's mode, as for any new file
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            save(file, **arrays)  # type: ignore[arg-type]  # numpy's stubs: ** might be allow_pickle
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, target.path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def read_activations(store: Store, target: ConfigTarget) -> np.ndarray:
    """One configuration's activations [fragment, its SAE's features], read chunk by chunk into one array."""
    width = int(store.widths[target.index])
    out = np.empty((store.n_fragments, width), dtype=np.float32)
    array = store.array  # opened outside the try: a store zarr cannot open says so itself (a StoreDamaged, an OSError)
    for chunk in range(store.n_chunks):
        start, stop = store.chunk_bounds(chunk)
        try:
            out[start:stop] = array[target.index, start:stop, :width]
        except (OSError, ValueError, RuntimeError) as exc:
            raise store.unreadable(target.index, chunk, exc) from None
    return out


def remove_stale_partials(path: Path) -> None:
    """Delete the temporary files that a killed export left for this file (their process is gone)."""
    for leftover in path.parent.glob(f".{path.name}.*{PARTIAL_SUFFIX}"):
        pid = leftover.name[len(path.name) + 2 :].split(".")[0]
        if pid.isdigit() and not process_alive(int(pid)):
            leftover.unlink(missing_ok=True)
