"""The analysis files: features.parquet, ranked_features.csv, feature_examples.json, analysis.json (and the report),
written into a temporary folder beside DIR and renamed into place."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr.durable.folders import make_staging, swap_into_place
from saezarr.errors import InputError, OutputExists, option
from saezarr.store.storage import Location

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


WRITTEN_BY = "saezarr analyze"  # analysis.json's signature: the folder is one that analyze wrote
# what analyze wrote before it signed its folders (saezarr 0.1.0 up to December 2026)
_BEFORE_SIGNATURES = {FEATURES, RANKED, EXAMPLES, INFO, "report.html"}


def check_output(path: Path, overwrite: bool, store: Location | None = None) -> None:
    """Refuse a DIR that is a file, is or holds the input store, or exists without --overwrite; with --overwrite,
    refuse any DIR but an empty one or one that analyze wrote and nobody added to."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option('output', path)}: is a file, not a folder")
    if isinstance(store, Path):  # a store at a URL cannot overlap a local folder
        _refuse_store_overlap(path, store)
    if not path.exists():
        return
    if not overwrite:
        raise OutputExists(f"{option('output', path)}: already exists; use {option('overwrite', True)} to replace it")
    reason = foreign_content(path, WRITTEN_BY)
    if reason:
        raise OutputExists(
            f"{option('output', path)}: {reason}; {option('overwrite', True)} replaces only a folder that saezarr "
            f"analyze wrote (or an empty one), so nothing was touched: choose another {option('output')}"
        )


def _refuse_store_overlap(path: Path, store: Path) -> None:
    output, store = path.resolve(), store.resolve()
    if output == store:
        raise InputError(f"{option('output', path)}: is the input store; choose another folder")
    if store in output.parents:
        raise InputError(f"{option('output', path)}: is inside the input store {store}; choose a folder outside it")
    if output in store.parents:
        raise InputError(f"{option('output', path)}: holds the input store {store}; choose a folder that does not")


def foreign_content(path: Path, written_by: str) -> str | None:
    """Why folder `path` is not one that a saezarr command signing its manifest `written_by` wrote whole, or None if
    it is (or is empty)."""
    files = _files_in(path)
    if not files:
        return None
    if (path / "zarr.json").exists():
        return "is a Zarr store"
    try:
        info = json.loads((path / INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"has no {INFO} written by saezarr, so saezarr did not write it"
    if not isinstance(info, dict):
        return f"its {INFO} is not one saezarr wrote"
    if info.get("written_by") == written_by and isinstance(info.get("files"), list):
        written = set(info["files"])
    elif written_by == WRITTEN_BY and {"saezarr_version", "store", "pool"} <= info.keys():
        written = {file for file in files if file in _BEFORE_SIGNATURES or file.startswith("plots/")}
    else:
        return f"its {INFO} is not signed by {written_by}, so saezarr did not write the folder"
    foreign = sorted(set(files) - written)
    if foreign:
        return f"holds {len(foreign)} file(s) {written_by} did not write (e.g. {foreign[0]})"
    return None


def _files_in(path: Path) -> list[str]:
    return [str(file.relative_to(path).as_posix()) for file in path.rglob("*") if not file.is_dir()]


def sign_manifest(folder: Path, written_by: str) -> None:
    """Add to folder's analysis.json the signature `written_by` and the list of every file in the folder."""
    info_path = folder / INFO
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["written_by"] = written_by
    info["files"] = sorted({*_files_in(folder), INFO})
    _write_json(info_path, info)


class OutputWriter:
    """DIR's files, written into a temporary folder beside DIR that takes DIR's place when the `with` block ends
    without error; features.parquet is written on a thread (pyarrow works outside the GIL) while the rest is made."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> OutputWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.staging = make_staging(self.path, STAGING_SUFFIX)
        self.background = ThreadPoolExecutor(max_workers=1)
        self.parquet: Future | None = None
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
        from saezarr.analysis.report.page import write_report

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
                sign_manifest(self.staging, WRITTEN_BY)
                check_output(self.path, overwrite=True)  # again: the folder may have changed during the run
                swap_into_place(self.staging, self.path)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)


def _write_json(path: Path, data: dict, indent: int | None = 2) -> None:
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False), encoding="utf-8")
