"""SIGKILL a real `saezarr build --extend` inside the growth step and during its new units: rerunning the same command
ends bitwise equal to a build made in one go, and no shard of a full chunk of the old store is ever rewritten.

The store grows on both axes at once: more sentences (the old last chunk is partial, so its shards gain rows) and one
more SAE. The moments inside `grow_store` are microseconds apart, too close to hit by watching the files, so the
killed command runs as `python -c` with one saezarr function wrapped to SIGKILL its own process right before or after
its n-th call (the product code is unchanged); the kills among the new units watch the marks as test_fault_crash does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from faultkit import (
    CHUNK,
    REPORT,
    KillPoint,
    Run,
    assert_same_store,
    build_args,
    copy_store,
    count_marks,
    killed_at,
    marked_units_wrong,
    note,
    tree_digest,
)

from saezarr.cli import main
from saezarr.testing.synthetic import write_config_file

OLD_SENTENCES = 30
RESIDUALS = "0,12,25"  # the layers of the tiny SAEs: the new SAE reads the old sentences from the store
DATA_ARRAYS = ("activations", "residuals", "embeddings")
PARTIAL_MARKS = 4 + 1  # the old last chunk's marks that the growth removes: its four configs' and its residuals'

GROWTH_POINTS = [
    KillPoint("the extension record written, nothing else", "store.storage.local.write_durably", "after", 1),
    KillPoint(
        "the partial chunk's marks removed, no coordinate replaced", "store.growing._replace_coordinates", "before", 1
    ),
    KillPoint("the first coordinate moved aside, its new folder not yet in place", "mid-swap", "after", 1),
    KillPoint("two coordinates replaced, the others not", "durable.folders.swap_into_place", "after", 2),
    KillPoint("a coordinate moved aside midway through the coordinates", "mid-swap", "after", 5),
    KillPoint("the activations' shape grown, the residuals' not", "store.growing._set_shape", "after", 1),
    KillPoint(
        "every data array's shape grown, the root zarr.json not", "store.growing.write_consolidated", "before", 1
    ),
    KillPoint(
        "the root zarr.json written, the store id not yet renewed", "store.growing.write_consolidated", "after", 1
    ),
    KillPoint("the growth done, no new unit written", "store.format.Store.write_shard", "before", 1),
]


def _unit_marks(store: Path) -> int:
    """Completion marks of latent units and of residual units."""
    residual = store / "_saezarr" / "done_residuals"
    return count_marks(store) + (len(os.listdir(residual)) if residual.is_dir() else 0)


def _store_id(store: Path) -> str:
    return json.loads((store / "zarr.json").read_text())["attributes"]["store_id"]


def _shards(store: Path) -> dict[str, str]:
    """sha256 of every chunk file of the data arrays, by path."""
    return {
        f"{name}/{key}": digest
        for name in DATA_ARRAYS
        for key, digest in tree_digest(store / name).items()
        if key.startswith("c/") and "/." not in f"/{key}"
    }


def _chunk_of(key: str) -> int:
    """The fragment chunk of a data array's chunk file (`activations/c/CONFIG/CHUNK/0`, `embeddings/c/CHUNK/0`)."""
    return int(key.split("/")[-2])


@pytest.fixture(scope="module")
def grow(tiny, tmp_path_factory):
    """An old store (the first sentences, the first four SAEs, residuals kept), the command that grows it to every
    sentence and five SAEs, and the store that command's inputs build in one go."""
    root = tmp_path_factory.mktemp("extend-kills")
    old_config = write_config_file(root / "old.json", str(tiny.model), str(tiny.saes), tiny.configs[:4])
    new_config = write_config_file(root / "new.json", str(tiny.model), str(tiny.saes), tiny.configs[:5])
    old_csv = root / "old.csv"
    pd.read_csv(tiny.csv).iloc[:OLD_SENTENCES].to_csv(old_csv, index=False)
    old, one_go = root / "old.zarr", root / "one-go.zarr"
    assert main(build_args(old_csv, old, old_config, "--residuals", RESIDUALS)) == 0
    assert main(build_args(tiny.csv, one_go, new_config, "--residuals", RESIDUALS)) == 0
    n_old = json.loads((old / "activations" / "zarr.json").read_text())["shape"][1]
    assert n_old % CHUNK, "the old store's last chunk must be partial, so that the extension rewrites it"
    extend = [
        "build",
        "--input",
        str(tiny.csv),
        "--output",
        "STORE",
        "--config",
        str(new_config),
        "--extend",
        "--quiet",
    ]
    return dict(old=old, one_go=one_go, extend=extend, partial=n_old // CHUNK)


def _wrong_marks(grow: dict, store: Path) -> list[str]:
    """Units marked done whose shard is neither the one-go build's nor, while the growth is not committed (the root
    attributes still the old store's), the old store's."""
    if not (store / "zarr.json").exists():
        return []
    wrong = marked_units_wrong(store, grow["one_go"])
    if json.loads((store / "zarr.json").read_text())["attributes"]["n_sentences"] == OLD_SENTENCES:
        wrong = [key for key in wrong if (store / key).read_bytes() != (grow["old"] / key).read_bytes()]
    return wrong


def _extend_args(grow: dict, store: Path) -> list[str]:
    return [str(store) if arg == "STORE" else arg for arg in grow["extend"]]


def _check_finished(grow: dict, store: Path, before: dict[str, str], old_id: str) -> None:
    """The store equals the one-go build, every old shard of a full chunk is as it was, the store id is new."""
    assert_same_store(store, grow["one_go"])
    after = _shards(store)
    changed = [key for key, digest in before.items() if _chunk_of(key) != grow["partial"] and after[key] != digest]
    assert not changed, f"shards of full chunks rewritten: {changed[:5]}"
    assert _store_id(store) != old_id, "the grown store kept the old store's id"
    assert not (store / "_saezarr" / "extend.json").exists()
    assert not (store / "_saezarr" / "lock").exists()
    assert not list(store.rglob(".*.replaced")), "a replaced coordinate was left in the store"


@pytest.mark.slow
@pytest.mark.parametrize("point", GROWTH_POINTS, ids=lambda p: f"{p.function}-{p.when}-{p.n}")
def test_sigkill_inside_the_growth_then_rerun_equals_a_one_go_build(grow, point, tmp_path):
    store = copy_store(grow["old"], tmp_path / "store.zarr")
    before, old_id = _shards(store), _store_id(store)
    args = _extend_args(grow, store)
    landed = killed_at(point, args, tmp_path / "killed.err")
    assert landed, f"{point.name}: the extension finished before the kill point"
    REPORT["extend: SIGKILLs landed inside the growth"] += 1
    damaged = _wrong_marks(grow, store)
    REPORT["extend: stores with a trusted mark on wrong data after a kill"] += bool(damaged)
    note(f"extend killed: {point.name}: {_unit_marks(store)} marks")
    assert main(args) == 0, f"{point.name}: the rerun failed"
    REPORT["extend: reruns that finished the extension"] += 1
    assert not damaged, f"{point.name}: marks trusted for wrong data: {damaged[:5]}"
    _check_finished(grow, store, before, old_id)


@pytest.mark.slow
def test_sigkill_among_the_new_units_then_rerun_equals_a_one_go_build(grow, tmp_path):
    """Killed by watching the marks (among the new units), then right before the last unit is marked."""
    store = copy_store(grow["old"], tmp_path / "store.zarr")
    before, old_id = _shards(store), _store_id(store)
    args = _extend_args(grow, store)
    run = Run(args, tmp_path / "logs")
    try:
        # the partial chunk's marks go first: as many more again than the old store had are new units'
        old_marks = _unit_marks(grow["old"])
        landed = run.wait_for(lambda: _unit_marks(store) >= old_marks + PARTIAL_MARKS) and run.kill()
    finally:
        run.close()
    if landed:
        REPORT["extend: SIGKILLs landed among the new units"] += 1
        assert not _wrong_marks(grow, store)
        left = _unit_marks(grow["one_go"]) - _unit_marks(store)  # the units the rerun marks
    else:  # the extension ended first: the last kill starts again from the old store
        note("extend kill among the new units not reached (the extension ended first)")
        shutil.rmtree(store)
        copy_store(grow["old"], store)
        left = _unit_marks(grow["one_go"]) - _unit_marks(store) + PARTIAL_MARKS
    last = KillPoint("one new unit before the end", "store.format.Store.mark_done", "before", left)
    assert killed_at(last, args, tmp_path / "last.err"), "the extension finished before its last unit"
    REPORT["extend: SIGKILLs landed among the new units"] += 1
    assert not _wrong_marks(grow, store)
    assert _unit_marks(store) == _unit_marks(grow["one_go"]) - 1
    assert main(args) == 0
    REPORT["extend: reruns that finished the extension"] += 1
    _check_finished(grow, store, before, old_id)
