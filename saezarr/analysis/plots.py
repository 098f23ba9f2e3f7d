"""The report's matplotlib figures, rendered to PNG bytes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from saezarr.folders import replace_file

SCORE_CMAP = "viridis"


def overview_png(summary: pd.DataFrame, memo: Path | None = None) -> bytes:
    """A layer × average-L0 map of each config's best interpretability score, as PNG bytes; kept in the folder
    `memo`, if given, and taken from there when the same map is asked again. The map shows nothing that depends on
    the thresholds, so a re-run with other thresholds need not import matplotlib (0.25 s) or draw (0.1 s)."""
    if memo is None:
        return _draw_overview(summary)
    plotted = summary[["layer", "average_l0", "best_score"]]
    key = hashlib.sha256(pd.util.hash_pandas_object(plotted, index=False).to_numpy().tobytes()).hexdigest()[:32]
    path = Path(memo) / f"overview-{key}.png"
    if path.is_file():
        return path.read_bytes()
    png = _draw_overview(summary)
    # never parents: a cache entry evicted meanwhile must not come back as a stub holding only plots/
    replace_file(path, lambda file: file.write(png), parents=False)  # whole or absent for a concurrent reader
    return png


def _draw_overview(summary: pd.DataFrame) -> bytes:
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    # fixed axes positions: constrained layout would cost more than everything else in the report together
    fig = Figure(figsize=(10, 4.2), dpi=110)
    ax = fig.add_axes((0.065, 0.22, 0.8, 0.7))
    scored = summary[summary["best_score"].notna()]
    unscored = summary[summary["best_score"].isna()]
    if len(scored):
        norm = Normalize(scored["best_score"].min(), scored["best_score"].max())
        points = ax.scatter(
            scored["layer"],
            scored["average_l0"],
            c=scored["best_score"],
            cmap=SCORE_CMAP,
            norm=norm,
            marker="s",
            s=60,
            edgecolors="white",
            linewidths=0.6,
            zorder=2,
        )
        fig.colorbar(points, cax=fig.add_axes((0.885, 0.22, 0.015, 0.7)), label="best interpretability score")
    if len(unscored):
        ax.scatter(
            unscored["layer"],
            unscored["average_l0"],
            marker="x",
            s=40,
            color="#9ca3af",
            zorder=2,
            label="no score (NaN)",
        )
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.13), frameon=False, fontsize=8)
    _style_axes(ax, summary)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _style_axes(ax, summary: pd.DataFrame) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    layers = np.unique(summary["layer"].to_numpy())
    ax.set_xticks(layers)
    ax.set_xlim(layers.min() - 0.7, layers.max() + 0.7)
    l0 = summary["average_l0"].to_numpy(dtype=float)
    if (l0 > 0).all():
        ax.set_yscale("log")
        ax.set_ylim(l0.min() / 1.35, l0.max() * 1.35)
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("layer")
    ax.set_ylabel("average L0" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title("Best interpretability score per SAE", fontsize=11, loc="left")
    ax.grid(True, which="major", color="#e5e7eb", linewidth=0.6, zorder=0)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
