"""The check each dask worker runs before it is used; shipped by value, so a worker without saezarr can still say so."""

from __future__ import annotations


def probe_worker(expected: dict) -> str | None:
    """What keeps this worker from running the work described by `expected`, or None if nothing does."""
    try:
        import saezarr
    except Exception as exc:  # anything that stops the import: missing, broken, wrong Python
        return f"cannot import saezarr ({type(exc).__name__}: {exc})"
    try:
        from saezarr.clients import check_worker
    except Exception as exc:
        return f"runs saezarr {getattr(saezarr, '__version__', '?')}, which cannot run this build ({type(exc).__name__}: {exc})"
    return check_worker(expected)
