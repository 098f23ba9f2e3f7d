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
    "rank", "layer", "average_l0", "feature_id", "neuronpedia_url", "interpretability_score", "pearson_corr",
    "spearman_corr", "separation_score", "tpr", "fpr", "mean_label_0", "mean_label_1", "mean_label_2",
    "mean_label_3", "monotonic",
)
FEATURES = "features.parquet"
RANKED = "ranked_features.csv"
EXAMPLES = "feature_examples.json"
INFO = "analysis.json"
STAGING_SUFFIX = ".analyzing"
REPETITIVE = ["config", "layer", "average_l0"]  # features.parquet's columns that repeat one value per config  # a folder being written beside DIR: `.DIR.PID.RANDOM.analyzing`


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing DIR without --overwrite, and a DIR that is a file."""
    if path.exists() and not path.is_dir():
        raise SaezarrError(f"--output {path}: is a file, not a folder")
    if path.exists() and not overwrite:
        raise SaezarrError(f"--output {path}: already exists; use --overwrite to replace it")


def write_outputs(path: Path, features: pa.Table, ranked: pd.DataFrame, summary: pd.DataFrame, examples: dict,
                  info: dict, plot_memo: Path | None = None) -> None:
    """Write every output file into a temporary folder beside path, then put it in place of path."""
    import pyarrow.parquet as pq

    from saezarr.analysis.report import write_report

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging(path, STAGING_SUFFIX)
    try:
        # pyarrow encodes and compresses outside the GIL: the parquet file is written while the rest is
        with ThreadPoolExecutor(max_workers=1) as background:
            # dictionary-encoding only the repetitive columns: trying it on every float column costs a third more
            parquet = background.submit(pq.write_table, features, staging / FEATURES, use_dictionary=REPETITIVE)
            ranked.to_csv(staging / RANKED, index=False)
            _write_json(staging / EXAMPLES, examples, indent=None)  # the largest: no indent, json's C encoder
            _write_json(staging / INFO, info)
            write_report(staging, summary, ranked, examples, info, plot_memo)
            parquet.result()
        swap_into_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_json(path: Path, data: dict, indent: int | None = 2) -> None:
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False), encoding="utf-8")

