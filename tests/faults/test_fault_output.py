"""The output path and flags are checked before anything is fetched; staging cleanup touches only its own names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from clitools import run_main
from faultkit import STATE, assert_same_store, build_args, copy_store, one_error_line, tree_digest

from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV

MISSING_MODEL = "no-such-org/no-such-model"  # resolving it offline fails; it must never be tried here


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub offline for the commands, which run in this process: HF_HUB_OFFLINE=1, and huggingface_hub's own
    setting, which it read from the environment at its import."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def kept(demo_reference, tmp_path_factory) -> Path:
    """A finished store that the refused builds point at."""
    return copy_store(demo_reference, tmp_path_factory.mktemp("kept") / "kept.zarr")


def _refused_before_fetching(args: list[str], cwd: Path, *expect: str) -> str:
    """The command line, offline, with a model that does not exist: the output's error must come first."""
    out = run_main(*args, "--model", MISSING_MODEL, cwd=cwd)
    assert out.returncode == 2, out.stderr
    line = one_error_line(out.stderr)
    assert MISSING_MODEL not in line, f"the model was resolved before the output was checked: {line}"
    for text in expect:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def test_the_missing_model_is_an_error_of_its_own(demo_config, tmp_path):
    """The control: on a fresh output, the same command fails on the model, so the tests below test the order."""
    out = run_main(*build_args(DEMO_CSV, tmp_path / "fresh.zarr", demo_config), "--model", MISSING_MODEL)
    assert out.returncode == 2, out.stderr
    assert f"--model {MISSING_MODEL}" in one_error_line(out.stderr)
    assert not (tmp_path / "fresh.zarr").exists()


def test_a_forgotten_resume_is_refused_before_the_model_is_fetched(kept, demo_config, tmp_path):
    before = tree_digest(kept)
    line = _refused_before_fetching(build_args(DEMO_CSV, kept, demo_config), tmp_path)
    assert line == (
        f"saezarr: error: --output {kept}: a store exists there; use --resume to continue it or "
        "--overwrite to replace it"
    )
    assert tree_digest(kept) == before


@pytest.mark.parametrize("target", ["a file", "a folder of other files"])
def test_an_output_that_is_no_store_is_refused_before_the_model_is_fetched(demo_config, tmp_path, target):
    output = tmp_path / "out.zarr"
    if target == "a file":
        output.write_text("keep me")
        expect = "is a file, not a store folder"
    else:
        output.mkdir()
        (output / "notes.txt").write_text("keep me")
        expect = "not a saezarr store"
    before = tree_digest(tmp_path)
    _refused_before_fetching(
        build_args(DEMO_CSV, output, demo_config, "--overwrite"), tmp_path, f"--output {output}", expect
    )
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        (
            "s3://saezarr-no-such-bucket/acts.zarr",
            "--output s3://saezarr-no-such-bucket/acts.zarr: the bucket does not exist",
        ),
        ("s3://saezarr-bucket", "--output s3://saezarr-bucket: a URL with no path; name the store inside the bucket"),
        ("ftp://example.org/acts.zarr", "--output ftp://example.org/acts.zarr: no storage handles ftp:// URLs"),
        (
            "http://127.0.0.1:9/acts.zarr",
            "--output http://127.0.0.1:9/acts.zarr: a read-only store (published over http)",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["new", "--resume", "--overwrite"])
def test_a_bad_url_output_is_refused_in_one_line_and_nothing_is_written(moto, demo_config, tmp_path, url, expect, mode):
    """A missing bucket, a URL with no path, a scheme nothing supports, a read-only http:// store: exit 2, one line
    naming the URL, before anything is fetched, and nothing written (no local folder such as `s3:` either)."""
    args = build_args(DEMO_CSV, Path("placeholder"), demo_config, *(() if mode == "new" else (mode,)))
    args[args.index("--output") + 1] = url
    line = _refused_before_fetching(args, tmp_path)
    assert line.startswith(f"saezarr: error: {expect}"), line
    assert list(tmp_path.iterdir()) == [], "a URL must not become a local folder (such as `s3:`)"


def test_overwrite_of_a_store_whose_state_folder_is_gone(demo_reference, demo_config, tmp_path):
    store = copy_store(demo_reference, tmp_path / "stateless.zarr")
    shutil.rmtree(store / STATE)
    assert main(build_args(DEMO_CSV, store, demo_config, "--overwrite")) == 0
    assert_same_store(store, demo_reference)


def _staging(parent: Path, name: str, pid: int) -> Path:
    """A half-created store as create_store makes it: `.NAME.PID.RANDOM.creating`, with some content."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.{pid}.", suffix=".creating", dir=parent))
    (staging / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    return staging


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_staging_cleanup_touches_only_this_outputs_own_names(demo_config, tmp_path):
    """`--output out` must not delete `.out.zarr.PID.RANDOM.creating`, the staging of a concurrent build of out.zarr."""
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        others = [
            _staging(tmp_path, "out.zarr", sleeper.pid),  # a live build of out.zarr
            _staging(tmp_path, "out.zarr", _dead_pid()),  # out.zarr's own business, not out's
            _staging(tmp_path, "out", sleeper.pid),  # out's, but its creator still runs
        ]
        stale = _staging(tmp_path, "out", _dead_pid())
        before = {p: tree_digest(p) for p in others}
        assert main(build_args(DEMO_CSV, tmp_path / "out", demo_config, "--max-chunks", "1")) == 0
        assert not stale.exists(), "the stale staging of this output should be removed"
        for staging in others:
            assert staging.is_dir() and tree_digest(staging) == before[staging], f"{staging.name} was touched"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / "out" / STATE / "done").is_dir()
    assert os.listdir(tmp_path / "out" / STATE / "done")
