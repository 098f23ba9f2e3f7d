"""The reports' static files (their CSS and JS, in static/), read from the installed package."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def static_text(name: str) -> str:
    """A file of the report's static/ folder, read from the installed package."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
