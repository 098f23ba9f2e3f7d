"""Fixtures of the fault-injection suite: uninterrupted reference builds, made once per session, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import NOTES, REPORT, build_args

from saezarr.cli import main
from saezarr.synthetic import DEMO_CSV


@pytest.fixture(scope="session")
def demo_reference(demo_config, tmp_path_factory) -> Path:
    """An uninterrupted build of the demo CSV (540 fragments, 6 configs, 16-fragment chunks: 204 units)."""
    store = tmp_path_factory.mktemp("demo-reference") / "reference.zarr"
    assert main(build_args(DEMO_CSV, store, demo_config)) == 0
    assert not (store / "_saezarr" / "lock").exists()
    return store


def pytest_sessionfinish(session):
    """On a pytest-xdist worker: hand this worker's counts and notes to the controller (tests/conftest.py prints
    them all)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["saezarr_fault_report"] = dict(REPORT)
        workeroutput["saezarr_fault_notes"] = list(NOTES)


def pytest_terminal_summary(terminalreporter):
    if not REPORT and not NOTES:
        return
    terminalreporter.section("saezarr fault injection")
    for key in sorted(REPORT):
        terminalreporter.write_line(f"{key}: {REPORT[key]}")
    for line in NOTES:
        terminalreporter.write_line(line)
