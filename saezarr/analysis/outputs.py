"""The analysis files: features.parquet, ranked_features.csv, feature_examples.json, analysis.json (and the report),
written into a temporary folder beside DIR and renamed into place."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr.errors import SaezarrError
from saezarr.folders import make_staging, swap_into_place

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# the legacy ranked_features.csv columns, in the legacy order; saezarr's own columns follow
LEGACY_COLUMNS = (
    "rank",
    "layer",
    "average_l0",
    "feature_id",
    "neuronpedia_url",
    "interpretability_score",
    "pearson_corr",
    "spearman_corr",
    "separation_score",
    "tpr",
    "fpr",
    "mean_label_0",
    "mean_label_1",
    "mean_label_2",
    "mean_label_3",
    "monotonic",
)
FEATURES = "features.parquet"
RANKED = "ranked_features.csv"
EXAMPLES = "feature_examples.json"
INFO = "analysis.json"
STAGING_SUFFIX = ".analyzing"  # a folder being written beside DIR: `.DIR.PID.RANDOM.analyzing`
REPETITIVE = ["config", "layer", "average_l0"]  # features.parquet's columns that repeat one value per config
INDEXING = [*REPETITIVE, "feature_id", "passes_filter"]


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing DIR without --overwrite, and a DIR that is a file."""
    if path.exists() and not path.is_dir():
        raise SaezarrError(f"--output {path}: is a file, not a folder")
    if path.exists() and not overwrite:
        raise SaezarrError(f"--output {path}: already exists; use --overwrite to replace it")


class OutputWriter:
    """DIR's files, written into a temporary folder beside DIR that takes DIR's place when the `with` block ends
    without error; features.parquet is written on a thread (pyarrow works outside the GIL) while the rest is made."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> OutputWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = make_staging(self.path, STAGING_SUFFIX)
        self.background = ThreadPoolExecutor(max_workers=1)
        self.parquet = None
        return self

    def write_features(self, features: pa.Table) -> None:
        """Start writing features.parquet."""
        import pyarrow.parquet as pq

        from saezarr.analysis.tables import arrow_pool

        # dictionary encoding for the repetitive columns only (trying it on every float column costs a third more),
        # and min/max statistics for the columns readers filter row groups on (those of 19 float columns cost 15%)
        self.parquet = self.background.submit(
            pq.write_table,
            features,
            self.staging / FEATURES,
            use_dictionary=REPETITIVE,
            write_statistics=INDEXING,
            memory_pool=arrow_pool(),
        )

    def write_rest(
        self,
        ranked: pd.DataFrame,
        summary: pd.DataFrame,
        examples: dict,
        info: dict,
        plot_memo: Path | None = None,
        tables: dict[str, pd.DataFrame] | None = None,
    ) -> None:
        """Write ranked_features.csv, feature_examples.json, analysis.json, each of `tables` as NAME.csv (heldout,
        emergence) and the report."""
        from saezarr.analysis.report import write_report

        ranked.to_csv(self.staging / RANKED, index=False)
        for name, table in (tables or {}).items():
            table.to_csv(self.staging / f"{name}.csv", index=False)
        _write_json(self.staging / EXAMPLES, examples, indent=None)  # the largest: no indent, json's C encoder
        _write_json(self.staging / INFO, info)
        write_report(self.staging, summary, ranked, examples, info, plot_memo, tables)

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            self.background.shutdown(wait=True)  # the parquet thread must be done with the folder either way
            if exc_type is None:
                if self.parquet is not None:
                    self.parquet.result()
                swap_into_place(self.staging, self.path)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


def _write_json(path: Path, data: dict, indent: int | None = 2) -> None:
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False), encoding="utf-8")
