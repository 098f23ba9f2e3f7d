"""The folders `analyze` and `compare` write, read back as Python objects (`Analysis`, `Comparison`): their tables,
plots and report, shown in Jupyter as their report's summary card."""

from __future__ import annotations

import functools
import html
import json
import re
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from saezarr.analysis.headline import Headline
from saezarr.analysis.outputs import FEATURES, INFO, RANKED
from saezarr.errors import InputError, option

if TYPE_CHECKING:
    import xarray as xr

REPORT = "report.html"
CARD_CLASS = "saezarr-card"
# the CSS rules of the report's stylesheet that compare's header card uses: scoped to the card, so that a notebook
# keeps its own styles (analyze's summary card carries its own)
CARD_SELECTORS = (":root", "h1", "code", ".sub", ".muted", ".facts", ".fact")


class Analysis:
    """An `analyze` output folder: its feature tables, held-out and emergence results, plots and report."""

    def __init__(self, folder: str | PathLike):
        self.folder = Path(folder)
        self.info = _read_json(self.folder, INFO, (FEATURES,), "saezarr analyze")

    def __repr__(self) -> str:
        return f"Analysis({str(self.folder)!r})"

    @property
    def report_path(self) -> Path:
        """The analysis's report.html."""
        return self.folder / REPORT

    @functools.cached_property
    def features(self) -> pd.DataFrame:
        """Every feature of every analysed SAE with its metrics, whether it passes the filter, and its p_value_fwer."""
        return pd.read_parquet(self.folder / FEATURES)

    @functools.cached_property
    def ranked(self) -> pd.DataFrame:
        """The features passing the filter, ranked by interpretability score (ranked_features.csv)."""
        return pd.read_csv(self.folder / RANKED)

    @property
    def headline(self) -> Headline:
        """What the analysis found, first what survives chance: the record behind its summary line and card."""
        if "headline" in self.info:
            return Headline.from_json(self.info["headline"])
        counts = self.info["counts"]  # an analysis written before analysis.json held its headline
        passing = (counts["configs"], counts["features"], counts["sentences"], counts["passing"])
        return Headline.of(*passing, self.info.get("permutation"))

    @property
    def significant(self) -> pd.DataFrame | None:
        """The features that beat chance (p_value_fwer at most the family-wise alpha: those `headline.beat_chance`
        counts), lowest p first; None when the analysis has no permutation null (permutations=0)."""
        from saezarr.analysis.stats.permutation import beats_chance

        if self.info.get("permutation") is None:
            return None
        features = self.features
        found = features[beats_chance(features["p_value_fwer"].to_numpy())]
        return found.sort_values(
            ["p_value_fwer", "pearson_corr"], ascending=[True, False], kind="stable", ignore_index=True
        )

    @functools.cached_property
    def heldout(self) -> pd.DataFrame | None:
        """Each feature some fold chose among its top features, with its held-out scores (None: folds=0)."""
        path = self.folder / "heldout.csv"
        return pd.read_csv(path) if path.is_file() else None

    @functools.cached_property
    def emergence(self) -> xr.Dataset | None:
        """Per layer, the held-out scores of the best SAE feature and of the probes, with their chance levels: a
        Dataset over `layer` (over `site` and `layer` where the SAEs read several kinds of site), as
        `saezarr.emergence` returns (None: folds=0)."""
        import xarray as xr

        table = self._emergence_table()
        if table is None:
            return None
        index = ["site", "layer"] if "site" in table else "layer"
        return xr.Dataset.from_dataframe(table.set_index(index)).assign_attrs(pool=self.info.get("pool"))

    def plot_emergence(self, ax=None):
        """Plot the emergence curves (the report's figure) with matplotlib; return the axes."""
        from saezarr.analysis.report.plots import draw_emergence

        table = self._emergence_table()
        if table is None:
            raise InputError(
                f"{self.folder}: the analysis has no emergence curves (it was made with {option('folds', 0)})"
            )
        if ax is None:
            ax = _figure(1, (10, 3.8))
        draw_emergence(ax, table)
        return ax

    def plot_null(self, axes=None):
        """Plot the best Pearson correlation and AUROC 3-vs-0 under permuted labels beside the real ones (the report's
        figure) with matplotlib; `axes`: two axes; return them."""
        from saezarr.analysis.report.plots import NULL_SCORES, draw_null

        permutation = self.info.get("permutation")
        if permutation is None:
            raise InputError(
                f"{self.folder}: the analysis has no permutation null (it was made with {option('permutations', 0)})"
            )
        if axes is None:
            axes = _figure(len(NULL_SCORES), (10, 3.2))
        for ax, name in zip(axes, NULL_SCORES):
            draw_null(ax, permutation, name)
        return axes

    def _emergence_table(self) -> pd.DataFrame | None:
        path = self.folder / "emergence.csv"
        return pd.read_csv(path) if path.is_file() else None

    def _repr_html_(self) -> str:
        from saezarr.analysis.report.summary_card import summary_card

        return f"{summary_card(self.headline)}{_report_line(self.report_path)}"


class Comparison:
    """A `compare` output folder: each feature's score per concept, the concept-specific and shared features, the
    concepts' emergence curves and the report."""

    def __init__(self, folder: str | PathLike):
        self.folder = Path(folder)
        self.info = _read_json(self.folder, "comparison.json", ("features.parquet",), "saezarr compare")

    def __repr__(self) -> str:
        return f"Comparison({str(self.folder)!r})"

    @property
    def report_path(self) -> Path:
        """The comparison's report.html."""
        return self.folder / REPORT

    @property
    def concepts(self) -> list[str]:
        """The concepts compared, in order."""
        return [entry["concept"] for entry in self.info["concepts"]]

    @functools.cached_property
    def features(self) -> pd.DataFrame:
        """Every feature's pearson_<concept> (and p_value_fwer_<concept>), best_concept and specificity."""
        return pd.read_parquet(self.folder / "features.parquet")

    @functools.cached_property
    def concept_features(self) -> pd.DataFrame:
        """The features that count for some concept, `specific` to one or `shared`, most specific first."""
        return pd.read_csv(self.folder / "concept_features.csv")

    @functools.cached_property
    def emergence(self) -> pd.DataFrame | None:
        """The analyses' emergence rows, with a `concept` column first (None: no analysis has them)."""
        path = self.folder / "emergence.csv"
        return pd.read_csv(path) if path.is_file() else None

    def _repr_html_(self) -> str:
        from saezarr.analysis.report.compare_page import _header

        header = _header(self.info, self.concepts)
        return f'<div class="{CARD_CLASS}"><style>{_card_css()}</style>{header}{_report_line(self.report_path)}</div>'


def _read_json(folder: Path, name: str, others: tuple[str, ...], written_by: str) -> dict:
    """The folder's JSON summary file, refused in one line if the folder is not one `written_by` wrote."""
    if not all((folder / file).is_file() for file in (name, *others)):
        raise InputError(f"{folder}: not a {written_by} output (no {' and '.join((name, *others))})")
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: unreadable {name} ({type(exc).__name__}: {exc})") from None


def _figure(n_axes: int, size: tuple[float, float]):
    """A new pyplot figure of n axes side by side: one axes, or an array of them."""
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, n_axes, figsize=size, layout="constrained")
    return axes


def _report_line(report: Path) -> str:
    return f"<p>report: <code>{html.escape(str(report))}</code></p>"


@functools.cache
def _card_css() -> str:
    """The report CSS's rules for CARD_SELECTORS, each scoped to the card (`:root`'s variables set on it)."""
    from saezarr.analysis.report.assets import static_text

    rules = []
    for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", static_text("report.css")):
        names = [selector.strip() for selector in selectors.split(",")]
        if all(name.split()[0] in CARD_SELECTORS for name in names):
            scoped = [f".{CARD_CLASS}" if name == ":root" else f".{CARD_CLASS} {name}" for name in names]
            rules.append(f"{','.join(scoped)}{{{body}}}")
    return "".join(rules)
