"""A cancelled notebook cell: SIGINT reaches a Python process inside `saezarr.build` as KeyboardInterrupt (as Jupyter's
interrupt does); the call raises `Interrupted` saying resume=True continues, and the same call with resume=True, made
in the test's own process, ends the store bitwise equal to an uninterrupted build."""

from __future__ import annotations

import signal

import pytest
from faultkit import CHUNK, Run, assert_same_store, count_marks, marked_units_wrong

import saezarr
from saezarr.testing.synthetic import DEMO_CSV

# a notebook cell's call, as a script: the store path, the config file and the chunk size as arguments
CELL = r"""
import sys

import saezarr
from saezarr.errors import Interrupted
from saezarr.testing.synthetic import DEMO_CSV

store, config, chunk = sys.argv[1:4]
try:
    saezarr.build(DEMO_CSV, store, config_file=config, chunk_fragments=int(chunk), quiet=True)
except Interrupted as stopped:
    print(f"{type(stopped).__name__}: {stopped}", file=sys.stderr)
    sys.exit(stopped.exit_code)
"""


@pytest.mark.slow
def test_a_cancelled_build_call_is_finished_by_the_same_call_with_resume(demo_config, demo_reference, tmp_path):
    store = tmp_path / "cancelled.zarr"
    run = Run(
        [str(store), str(demo_config), str(CHUNK)],
        tmp_path / "logs",
        program=CELL,
    )
    try:
        assert run.wait_for(lambda: count_marks(store) >= 12), run.stderr
        assert run.signal(signal.SIGINT), "the build ended before it could be interrupted"
        code = run.finish(timeout=60)
    finally:
        run.close()
    assert code == 130, run.stderr
    said = run.stderr.strip().splitlines()[-1]  # after transformers' own weight-loading bar
    assert said.startswith("Interrupted: interrupted: ") and "Traceback" not in run.stderr, run.stderr
    assert "rerun the same command with resume=True" in said, said  # the keyword, not the flag
    assert not (store / "_saezarr" / "lock").exists(), "the lock must be released"
    assert not marked_units_wrong(store, demo_reference)
    assert 12 <= count_marks(store) < count_marks(demo_reference)
    ds = saezarr.build(DEMO_CSV, store, config_file=demo_config, chunk_fragments=CHUNK, quiet=True, resume=True)
    assert_same_store(store, demo_reference)
    assert dict(ds.sizes) == {"config": 6, "fragment": 540, "feature": 512}
