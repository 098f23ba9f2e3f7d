"""What a long step shows while it runs: a tqdm bar with an ETA where its work can be counted, else one line saying
what it is doing (an INFO record of the `saezarr` logger, which the command line prints as `saezarr: ...`). `quiet`
silences both."""

from __future__ import annotations

import logging

_log = logging.getLogger(__name__)


def progress_off(quiet: bool) -> bool | None:
    """tqdm's `disable`: off when quiet, else on only where it can be seen (a terminal or a notebook)."""
    return True if quiet else None


def say(quiet: bool, doing: str) -> None:
    """One line saying what a long step that shows no bar is doing (`loading model ...`), unless quiet."""
    if not quiet:
        _log.info(doing)
