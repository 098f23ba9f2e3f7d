"""The report's figures: the emergence plot's y-axis holds every curve it draws and the chance band."""

from __future__ import annotations

import numpy as np
import pandas as pd

from saezarr.analysis.report.plots import EMERGENCE_CURVES, emergence_figure


def test_the_emergence_plot_shows_every_curve(demo_analysis):
    folder, _ = demo_analysis
    table = pd.read_csv(folder / "emergence.csv")
    below = table.copy()
    below.loc[0, "sparse_probe_k64_heldout_spearman"] = -0.9  # far under the axis' usual bottom, -0.2
    above = table.assign(chance_spearman=table.chance_spearman.where(table.layer != table.layer.iloc[-1], 0.99))
    for emergence in (table, below, above):
        ax = emergence_figure(emergence).axes[0]
        low, high = ax.get_ylim()
        drawn = {line.get_label() for line in ax.get_lines()}
        shown = [emergence.chance_spearman.to_numpy(dtype=float)]
        for curve, (label, _) in EMERGENCE_CURVES.items():
            values = emergence[f"{curve}_heldout_spearman"].to_numpy(dtype=float)
            assert (label in drawn) == bool(np.isfinite(values).any()), curve
            shown.append(values)
        values = np.concatenate(shown)
        values = values[np.isfinite(values)]
        assert len(values) and low < values.min() and values.max() < high, (low, high, values.min(), values.max())
        assert low <= -0.2 and high >= 1.0  # the usual range, widened only where a curve needs it
