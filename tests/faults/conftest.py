"""Fixtures of the fault-injection suite: uninterrupted reference builds, made once per session, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import NOTES, REPORT, build_args

from saezarr.cli import main
from saezarr.testing.synthetic import DEMO_CSV


@pytest.fixture(scope="session")
def demo_reference(demo_config, tmp_path_factory) -> Path:
    """An uninterrupted build of the demo CSV (540 fragments, 6 configs, 16-fragment chunks: 204 units)."""
    store = tmp_path_factory.mktemp("demo-reference") / "reference.zarr"
    assert main(build_args(DEMO_CSV, store, demo_config)) == 0
    assert not (store / "_saezarr" / "lock").exists()
    return store


def pytest_sessionfinish(session):
    """Hand this process's counts and notes to tests/conftest.py's summary (on a pytest-xdist worker, through the
    controller)."""
    results = {"report": dict(REPORT), "notes": list(NOTES)}
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["saezarr_faults"] = results
    else:
        session.config.saezarr_faults["report"].update(results["report"])
        session.config.saezarr_faults["notes"].extend(results["notes"])
