"""The checks a dask worker runs on itself; shipped by value, so a worker without saezarr (or with another one) can
still say so. Nothing here may import saezarr at module level."""

from __future__ import annotations

from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN_NAME = "saezarr-worker-check"


def probe_worker(expected: dict) -> str | None:
    """What keeps this worker from running the work described by `expected`, or None if nothing does."""
    try:
        import saezarr
    except Exception as exc:  # anything that stops the import: missing, broken, wrong Python
        return f"cannot import saezarr ({type(exc).__name__}: {exc})"
    try:
        from saezarr.execution.checks import check_worker
    except Exception as exc:
        return f"runs saezarr {getattr(saezarr, '__version__', '?')}, which cannot run this work ({type(exc).__name__}: {exc})"
    return check_worker(expected)


class WorkerCheck(WorkerPlugin):
    """Set up on every worker of the client's cluster, also on those that join later (adaptive, jobqueue): checks the
    worker's saezarr against the client's and keeps what it lacks in `problem` for each task to refuse on."""

    def __init__(self, expected: dict):
        self.expected = {**expected, "paths": []}  # paths are the command's, checked when it starts
        self.problem: str | None = None

    def setup(self, worker) -> None:
        """Check this worker's code (no exception: a worker that fails the check stays up and refuses saezarr tasks)."""
        self.problem = probe_worker(self.expected)
