"""The fault-injection suite's end-of-run report. Its uninterrupted reference build, `demo_reference`, is in
tests/conftest.py (other suites compare with the same store)."""

from __future__ import annotations

from faultkit import NOTES, REPORT


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
