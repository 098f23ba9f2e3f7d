"""Placeholder report (replaced at merge by the report helper's version): a plain report.html."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd


def write_report(directory: Path, features: pd.DataFrame, ranked: pd.DataFrame, examples: dict, info: dict) -> Path:
    """Write report.html and plots/*.png into directory; return the report's path."""
    (Path(directory) / "plots").mkdir(exist_ok=True)
    body = ranked.head(50).to_html(index=False, escape=True)
    page = f"<!doctype html><meta charset='utf-8'><title>saezarr analysis</title><h1>saezarr analysis of {html.escape(str(info.get('store')))}</h1>{body}"
    path = Path(directory) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
