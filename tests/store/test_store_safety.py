"""Refusals that protect an existing store: weights, resume options, damaged stores, the swap, the lock."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from saezarr.cli import main
from saezarr.durable.locking import StoreLock
from saezarr.testing.synthetic import DEMO_CSV


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _args(output: Path, config: Path, *extra: str) -> list[str]:
    return ["build", "--input", str(DEMO_CSV), "--output", str(output), "--config", str(config), "--quiet", *extra]


@pytest.fixture
def built(tmp_path, demo_config) -> Path:
    store = tmp_path / "kept.zarr"
    assert main(_args(store, demo_config, "--chunk-fragments", "128", "--max-chunks", "2")) == 0
    return store


def test_model_without_weights_is_refused_before_overwrite(built, demo_config, tmp_path, capsys):
    model = tmp_path / "no-weights"
    model.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_config.parent / "model" / name, model / name)
    before = _digest(built)
    assert main(_args(built, demo_config, "--overwrite", "--model", str(model))) == 2
    assert capsys.readouterr().err.strip() == f"saezarr: error: --model {model}: no *.safetensors weights in {model}"
    assert _digest(built) == before


@pytest.mark.parametrize(("option", "value", "kept"), [("--batch-size", "3", 16), ("--chunk-fragments", "64", 128)])
def test_resume_refuses_options_that_change_the_bits(built, demo_config, capsys, option, value, kept):
    before = _digest(built)
    assert main(_args(built, demo_config, "--resume", option, value)) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"saezarr: error: {option} {value}: the store at {built} was started with {kept}; a resumed store must "
        f"keep it to stay bitwise equal, so leave {option} out (or use --overwrite)"
    )
    assert _digest(built) == before


def test_damaged_store_cannot_resume_but_can_be_overwritten(built, demo_config, capsys):
    (built / "activations" / "zarr.json").unlink()
    before = _digest(built)
    assert main(_args(built, demo_config, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"saezarr: error: --resume {built}: the store is damaged and cannot be resumed (")
    assert err.endswith("rebuild it with --overwrite")
    assert _digest(built) == before
    assert main(_args(built, demo_config, "--overwrite")) == 0
    assert (built / "activations" / "zarr.json").is_file()


def test_a_failed_swap_puts_the_old_store_back(built, demo_config, monkeypatch, capsys):
    before = _digest(built)
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(src).endswith(".creating"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr("saezarr.store.format.os.rename", failing_rename)
    assert main(_args(built, demo_config, "--overwrite")) == 1
    assert "could not create the store (No space left on device)" in capsys.readouterr().err
    assert _digest(built) == before
    assert not list(built.parent.glob(".kept.zarr.*"))


def test_releasing_a_lock_taken_over_by_force_leaves_the_new_holders_file(tmp_path):
    path = tmp_path / "lock"
    first = StoreLock(path, tmp_path)
    first.acquire()
    second = StoreLock(path, tmp_path)
    second.acquire(force=True)
    first.release()
    assert path.exists() and second.holder()["pid"] == os.getpid()
    second.release()
    assert not path.exists()
