"""The Python API, notebook first: one function per command, whose keyword arguments are the fields of that command's
options dataclass (their defaults live there), returning objects that display well in Jupyter.

Each command runs through one `run_*` function here, which takes its options dataclass: the command line calls it
and prints, the keyword function calls it and returns the store opened, an `Analysis`, a `StoreInfo`, ... Progress
bars are `tqdm.auto` bars (off with quiet=True). A cancelled cell (KeyboardInterrupt) stops a build as Ctrl-C does:
`saezarr.errors.Interrupted` is raised, the finished chunks are kept, and the same call with resume=True finishes the
store."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from saezarr.analysis.analyze_options import AnalyzeOptions
from saezarr.analysis.compare_options import CompareOptions
from saezarr.build.build_options import BuildOptions
from saezarr.export.export_options import ExportOptions
from saezarr.option_fields import from_keywords, keyword_signature
from saezarr.store_info import InfoOptions, StoreInfo

if TYPE_CHECKING:
    import xarray as xr

    from saezarr.analysis.results import Analysis, Comparison
    from saezarr.analysis.run import AnalyzeSummary
    from saezarr.build.pipeline import BuildSummary
    from saezarr.export.per_config import ExportSummary

__all__ = [
    "analyze",
    "build",
    "compare",
    "export_npz",
    "info",
    "run_analyze",
    "run_build",
    "run_compare",
    "run_export",
    "run_info",
]

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _takes(options: type, *positional: str) -> Callable[[_Function], _Function]:
    """Give the function the signature of a call with `options`' fields as keyword arguments (`positional` first)."""

    def decorate(function: _Function) -> _Function:
        returns = inspect.signature(function).return_annotation
        function.__signature__ = keyword_signature(options, positional).replace(return_annotation=returns)  # type: ignore[attr-defined]
        return function

    return decorate


@_takes(BuildOptions, "input", "output")
def build(input: Any = None, output: str | PathLike | None = None, **options: Any) -> xr.Dataset:
    """Build (or resume, or extend) a store as `saezarr build` does and return it opened (lazy, dask-backed).

    `input`: the labeled sentences (columns sentence, concept_strength_label): a CSV, TSV, Parquet or JSON Lines file,
    a pandas DataFrame, or any table with a `to_pandas()` method, such as a `datasets.Dataset` (saezarr does not
    depend on `datasets`). Every other keyword is a field of `BuildOptions`, e.g. config_file, layers, resume."""
    from saezarr.store.reading import open_store

    summary = run_build(from_keywords(BuildOptions, "build", {"input": input, "output": output, **options}))
    return open_store(summary.store)


@_takes(AnalyzeOptions, "store", "output")
def analyze(store: str | PathLike, output: str | PathLike | None = None, **options: Any) -> Analysis:
    """Rank every SAE feature of a store against the concept labels as `saezarr analyze` does and return the
    `Analysis`; `output` (default: STORE-analysis beside the store) and every other keyword as `AnalyzeOptions`."""
    from saezarr.analysis.results import Analysis

    summary = run_analyze(from_keywords(AnalyzeOptions, "analyze", {"store": store, "output": output, **options}))
    return Analysis(summary.output)


@_takes(ExportOptions, "store", "output")
def export_npz(store: str | PathLike, output: str | PathLike, **options: Any) -> ExportSummary:
    """Write the store's legacy .npz files as `saezarr export-npz` does: one per configuration, or with
    per_sentence=True one per sentence; return what was written."""
    return run_export(from_keywords(ExportOptions, "export_npz", {"store": store, "output": output, **options}))


def info(store: str | PathLike) -> StoreInfo:
    """What a store holds and how far its build is, as `saezarr info` shows it."""
    return run_info(from_keywords(InfoOptions, "info", {"store": store}))


@_takes(CompareOptions, "analyses", "output")
def compare(analyses: Sequence[Analysis | str | PathLike], output: str | PathLike, **options: Any) -> Comparison:
    """Compare analyses of several concepts on one model and set of SAEs as `saezarr compare` does (`analyses`:
    `Analysis` objects or their folders) and return the `Comparison`."""
    from saezarr.analysis.results import Analysis, Comparison

    folders = [analysis.folder if isinstance(analysis, Analysis) else analysis for analysis in analyses]
    keywords = {"analyses": folders, "output": output, **options}
    return Comparison(run_compare(from_keywords(CompareOptions, "compare", keywords)))


def run_build(options: BuildOptions) -> BuildSummary:
    """Run `saezarr build`: the code path of `build` and of the command line."""
    from saezarr.build.pipeline import build as build_store

    return build_store(options)


def run_analyze(options: AnalyzeOptions) -> AnalyzeSummary:
    """Run `saezarr analyze`: the code path of `analyze` and of the command line."""
    from saezarr.analysis.run import analyze as analyze_store

    return analyze_store(options)


def run_export(options: ExportOptions) -> ExportSummary:
    """Run `saezarr export-npz`: the code path of `export_npz` and of the command line."""
    from saezarr.export.export_options import export

    return export(options)


def run_info(options: InfoOptions) -> StoreInfo:
    """Run `saezarr info` (its `json` option is how the command line prints): the code path of `info` and of the
    command line."""
    return StoreInfo.of(options.store)


def run_compare(options: CompareOptions) -> Path:
    """Run `saezarr compare` and return its output folder: the code path of `compare` and of the command line."""
    from saezarr.analysis.compare import compare as compare_analyses

    return compare_analyses(options.analyses, options.output, options.overwrite)
