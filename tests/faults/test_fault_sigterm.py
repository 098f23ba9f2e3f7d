"""SIGTERM, as Slurm, Kubernetes and systemd stop a job: a clean stop like Ctrl-C, exit code 143, then --resume."""

from __future__ import annotations

import os
import signal

import pytest
from clitools import run_cli
from faultkit import REPORT, Run, assert_same_store, count_marks, marked_units_wrong, one_error_line, tree_digest

import saezarr.build.planning
from saezarr.cli import main

CHUNK = 8


def _args(tiny, store, *extra: str) -> list[str]:
    return [
        "build",
        "--input",
        str(tiny.csv),
        "--output",
        str(store),
        "--config",
        str(tiny.config_file),
        "--chunk-fragments",
        str(CHUNK),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_reference(tiny, tmp_path_factory):
    """An uninterrupted build of the tiny model, in a process of its own as the terminated build runs: the test
    process's state (torch's threads, set by earlier tests) may round the encoders' matmuls otherwise."""
    store = tmp_path_factory.mktemp("sigterm-reference") / "reference.zarr"
    done = run_cli(*_args(tiny, store))
    assert done.returncode == 0, done.stderr
    return store


def test_sigterm_stops_with_143_releases_the_lock_and_resume_finishes(tiny, tiny_reference, tmp_path):
    store = tmp_path / "terminated.zarr"
    run = Run(_args(tiny, store), tmp_path / "logs")
    try:
        assert run.wait_for(lambda: count_marks(store) >= 12), run.stderr
        run.signal(signal.SIGSTOP)  # hold it mid-build, whatever the machine's speed
        run.signal(signal.SIGTERM)
        run.signal(signal.SIGCONT)
        code = run.finish(timeout=60)
    finally:
        run.close()
    REPORT["builds stopped by SIGTERM"] += 1
    assert code == 143, run.stderr
    line = one_error_line(run.stderr)
    assert line.startswith("saezarr: error: terminated (SIGTERM): "), line
    assert f"chunks of {store} are done and kept" in line and "--resume" in line, line
    assert not (store / "_saezarr" / "lock").exists(), "the lock must be released on SIGTERM"
    assert 12 <= count_marks(store) < count_marks(tiny_reference)
    assert not marked_units_wrong(store, tiny_reference)
    resumed = run_cli(*_args(tiny, store, "--resume"))  # in a process of its own, as the reference was built
    assert resumed.returncode == 0, resumed.stderr
    assert_same_store(store, tiny_reference)


def test_sigterm_before_the_store_is_touched_leaves_it_as_it_was(tiny, tiny_reference, tmp_path, monkeypatch, capsys):
    """A SIGTERM while the model is being resolved (a long download): one line, 143, the old store untouched."""
    store = tmp_path / "kept.zarr"
    untouched = signal.getsignal(signal.SIGTERM)
    assert main(_args(tiny, store, "--max-chunks", "2")) == 0
    assert signal.getsignal(signal.SIGTERM) is untouched, "build() must restore the SIGTERM handler it found"
    before = tree_digest(store)
    resolve = saezarr.build.planning.resolve_model

    def terminated_while_resolving(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return resolve(*args, **kwargs)

    monkeypatch.setattr(saezarr.build.planning, "resolve_model", terminated_while_resolving)
    capsys.readouterr()
    previous = signal.getsignal(signal.SIGTERM)
    assert main(_args(tiny, store, "--resume")) == 143
    assert (
        one_error_line(capsys.readouterr().err) == f"saezarr: error: terminated (SIGTERM) before {store} was written to"
    )
    assert signal.getsignal(signal.SIGTERM) is previous
    assert tree_digest(store) == before
    assert not (store / "_saezarr" / "lock").exists()
