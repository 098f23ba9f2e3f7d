"""The report's matplotlib figures, rendered to PNG bytes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from saezarr.durable.folders import replace_file
from saezarr.sites import RESID_POST

SCORE_CMAP = "viridis"


def overview_png(summary: pd.DataFrame, memo: Path | None = None) -> bytes:
    """A layer × average-L0 map of each config's best interpretability score, as PNG bytes; kept in the folder
    `memo`, if given, and taken from there when the same map is asked again. The map shows nothing that depends on
    the thresholds, so a re-run with other thresholds need not import matplotlib (0.25 s) or draw (0.1 s)."""
    if memo is None:
        return _draw_overview(summary)
    plotted = summary[["layer", "average_l0", "best_score"]]
    return memoized_png(
        "overview",
        pd.util.hash_pandas_object(plotted, index=False).to_numpy().tobytes(),
        lambda: _draw_overview(summary),
        memo,
    )


def memoized_png(name: str, shown: bytes, draw, memo: Path | None) -> bytes:
    """draw()'s PNG bytes, kept in the folder memo as `NAME-<digest of shown>.png` and taken from there when the
    same data is drawn again (a re-run then need not import matplotlib)."""
    if memo is None:
        return draw()
    key = hashlib.sha256(shown).hexdigest()[:32]
    path = Path(memo) / f"{name}-{key}.png"
    if path.is_file():
        return path.read_bytes()
    png = draw()
    # never parents: a cache entry evicted meanwhile must not come back as a stub holding only plots/
    replace_file(path, lambda file: file.write(png), parents=False)  # whole or absent for a concurrent reader
    return png


def _draw_overview(summary: pd.DataFrame) -> bytes:
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    # fixed axes positions: constrained layout would cost more than everything else in the report together
    fig = Figure(figsize=(10, 4.2), dpi=110)
    ax = fig.add_axes((0.065, 0.22, 0.8, 0.7))
    summary = summary.assign(y=_y_values(summary))
    scored = summary[summary["best_score"].notna()]
    unscored = summary[summary["best_score"].isna()]
    if len(scored):
        norm = Normalize(scored["best_score"].min(), scored["best_score"].max())
        points = ax.scatter(
            scored["layer"],
            scored["y"],
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
            unscored["y"],
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


def _y_values(summary: pd.DataFrame) -> np.ndarray:
    """Each SAE's height on the map: its average L0, or where any is unknown (-1), its place among its layer's SAEs."""
    l0 = summary["average_l0"].to_numpy(dtype=float)
    if (l0 >= 0).all():
        return l0
    return summary.groupby("layer").cumcount().to_numpy(dtype=float) + 1


def _style_axes(ax, summary: pd.DataFrame) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    layers = np.unique(summary["layer"].to_numpy())
    ax.set_xticks(layers)
    ax.set_xlim(layers.min() - 0.7, layers.max() + 0.7)
    l0 = summary["y"].to_numpy(dtype=float)
    known = (summary["average_l0"].to_numpy(dtype=float) >= 0).all()
    if known and (l0 > 0).all():
        ax.set_yscale("log")
        ax.set_ylim(l0.min() / 1.35, l0.max() * 1.35)
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("layer")
    if known:
        ax.set_ylabel("average L0" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    else:
        ax.set_ylabel("SAE of the layer (average L0 unknown)")
    ax.set_title("Best interpretability score per SAE", fontsize=11, loc="left")
    ax.grid(True, which="major", color="#e5e7eb", linewidth=0.6, zorder=0)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def null_png(permutation: dict, memo: Path | None = None) -> bytes:
    """The permuted maxima of Pearson and AUROC 3-vs-0 (histograms) beside the best real score and the chance level."""
    shown = json.dumps({k: permutation[k] for k in ("null_maxima", "best", "chance")}, sort_keys=True).encode()
    return memoized_png("null", shown, lambda: _draw_null(permutation), memo)


NULL_SCORES = {"pearson": "Pearson correlation", "auroc_3v0": "AUROC 3 vs 0"}  # the null's scores, and their titles


def _draw_null(permutation: dict) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=110)
    for i, name in enumerate(NULL_SCORES):
        draw_null(fig.add_axes((0.06 + i * 0.5, 0.2, 0.4, 0.65)), permutation, name)
    return _png(fig)


def draw_null(ax, permutation: dict, name: str) -> None:
    """Draw on ax the permuted maxima of one score (`pearson` or `auroc_3v0`) as a histogram, with the best real score
    and the chance level; permutation: analysis.json's `permutation` part."""
    title = NULL_SCORES[name]
    null = np.array([v for v in permutation["null_maxima"][name] if v is not None], dtype=float)
    if len(null):
        ax.hist(null, bins=min(30, max(5, len(null) // 4)), color="#94a3b8", label="best under permuted labels")
    chance, best = permutation["chance"].get(name), permutation["best"].get(name)
    if chance is not None and np.isfinite(chance):
        ax.axvline(chance, color="#475569", linestyle="--", linewidth=1.2, label=f"chance (95th pct) {chance:.3f}")
    if best is not None:
        ax.axvline(best, color="#c2410c", linewidth=2, label=f"best real {best:.3f}")
    ax.set_title(f"Best {title} of any feature", fontsize=10, loc="left")
    ax.set_xlabel(title)
    ax.set_ylabel("permutations")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    _plain(ax)


def emergence_png(emergence: pd.DataFrame, memo: Path | None = None) -> bytes:
    """Per layer, the held-out Spearman ρ of the best feature and the probes, with the chance band."""
    shown = pd.util.hash_pandas_object(emergence, index=False).to_numpy().tobytes()
    return memoized_png("emergence", shown, lambda: _png(emergence_figure(emergence)), memo)


EMERGENCE_CURVES = {
    "best_feature": ("best single SAE feature", "#c2410c"),
    "sparse_probe_k8": ("sparse probe, top 8 SAE features", "#2563eb"),
    "sparse_probe_k64": ("sparse probe, top 64 SAE features", "#7c3aed"),
    "probe": ("ridge probe on the residual stream", "#059669"),
}


def emergence_figure(emergence: pd.DataFrame):
    """The emergence plot as a matplotlib Figure: every curve and the chance band inside its y-limits."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=110)
    draw_emergence(fig.add_axes((0.065, 0.15, 0.62, 0.75)), emergence)
    return fig


def draw_emergence(ax, emergence: pd.DataFrame) -> None:
    """Draw on ax, per layer, the held-out Spearman ρ of the best feature and the probes, with the chance band
    (emergence: emergence.csv's table); where its rows are of several sites, those of resid_post (else of the first
    site) as one set of curves, and each other site's best feature dashed."""
    table, main = main_site(emergence)
    others = [] if main is None else [site for site in dict.fromkeys(emergence["site"]) if site != main]
    layers = table["layer"].to_numpy()
    chance = table["chance_spearman"].to_numpy(dtype=float)
    known = np.isfinite(chance)
    if known.any():
        label = "chance (95th pct under permuted labels)"
        ax.fill_between(layers[known], -1, chance[known], color="#e2e8f0", label=label)
    shown = [chance]
    for curve, (label, color) in EMERGENCE_CURVES.items():
        values = table[f"{curve}_heldout_spearman"].to_numpy(dtype=float)
        shown += _curve(ax, layers, values, label, color)
    for other, dash in zip(others, SITE_DASHES):
        rows = emergence[emergence["site"] == other]
        values = rows["best_feature_heldout_spearman"].to_numpy(dtype=float)
        label = f"best feature, {other}"
        shown += _curve(ax, rows["layer"].to_numpy(), values, label, "#64748b", linestyle=dash)
    ax.set_xticks(sorted(set(emergence["layer"].tolist())))
    ax.set_ylim(*_spearman_limits(np.concatenate(shown)))
    ax.set_xlabel(f"layer (solid: SAEs of {main}; dashed: of other sites)" if others else "layer")
    ax.set_ylabel("held-out Spearman ρ")
    ax.set_title("Where the concept becomes linearly readable", fontsize=11, loc="left")
    ax.axhline(0, color="#94a3b8", linewidth=0.6)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1))
    _plain(ax)


def main_site(emergence: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """emergence.csv's rows of one site, and which: resid_post's (else the first site's) where the rows are of several
    sites; all rows and None where the table has no `site` column."""
    if "site" not in emergence:
        return emergence, None
    sites = list(dict.fromkeys(emergence["site"]))
    main = RESID_POST if RESID_POST in sites else sites[0]
    return emergence[emergence["site"] == main], main


SITE_DASHES = ["--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))] * 4  # the other sites' lines, in turn


def _curve(ax, layers: np.ndarray, values: np.ndarray, label: str, color: str, linestyle="-") -> list[np.ndarray]:
    """One curve where it has values (a layer without SAEs or residuals has no point: the line joins the others)."""
    known = np.isfinite(values)
    if not known.any():
        return []
    ax.plot(layers[known], values[known], marker="o", markersize=3.5, color=color, label=label, linestyle=linestyle)
    return [values]


MARGIN = 0.05  # room between the outermost point and the plot's edge, in Spearman ρ


def _spearman_limits(values: np.ndarray) -> tuple[float, float]:
    """y-limits for Spearman ρ: at least -0.2 to 1, widened to hold every finite value with a margin."""
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if len(finite) else (0.0, 0.0)
    return min(-0.2, float(low) - MARGIN), max(1.0, float(high) + MARGIN)


def _plain(ax) -> None:
    ax.grid(True, color="#e5e7eb", linewidth=0.6, zorder=0)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def concepts_png(emergence: pd.DataFrame, curve: str) -> bytes:
    """Per concept, one curve's held-out Spearman ρ by layer, with each concept's chance level dotted."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=110)
    ax = fig.add_axes((0.065, 0.15, 0.62, 0.75))
    colors = ["#c2410c", "#2563eb", "#059669", "#7c3aed", "#db2777", "#ca8a04", "#0891b2", "#4b5563"]
    for i, (concept, rows) in enumerate(emergence.groupby("concept", sort=False)):
        color = colors[i % len(colors)]
        rows = rows[rows[f"{curve}_heldout_spearman"].notna()]
        ax.plot(rows.layer, rows[f"{curve}_heldout_spearman"], marker="o", markersize=3.5, color=color, label=concept)
        ax.plot(rows.layer, rows["chance_spearman"], linestyle=":", linewidth=1, color=color)
    ax.set_xticks(sorted(emergence.layer.unique()))
    ax.axhline(0, color="#94a3b8", linewidth=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out Spearman ρ")
    ax.set_title(f"Emergence by concept ({curve.replace('_', ' ')}; dotted: chance)", fontsize=11, loc="left")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1))
    _plain(ax)
    return _png(fig)
