"""`saezarr compare`: analyses of several concepts on the same model and SAEs side by side: each feature's score per
concept and its specificity, features specific to one concept vs shared, and the concepts' emergence curves.

A feature's score for a concept is its Pearson correlation with that concept's labels (the statistic of the
permutation null); its specificity is its score for its best concept minus its best score among the others. A
feature counts for a concept when its p_value_fwer there is at most 0.05 (or, in an analysis made without
permutations, when it passes that analysis's filter)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from saezarr.analysis.results import Analysis
from saezarr.analysis.stats.permutation import beats_chance
from saezarr.compat import exact_floats
from saezarr.durable.folders import make_staging, swap_into_place
from saezarr.errors import InputError, OutputExists, option

MARKER = ".saezarr-compare"  # in every folder compare writes: the only folders --overwrite replaces
STAGING_SUFFIX = ".comparing"
IDENTITY = ("model", "model_revision", "sae_repo", "sae_revision")
KEY = ["config", "layer", "average_l0", "feature_id"]


@dataclass(frozen=True)
class ConceptAnalysis:
    """One `analyze` output folder: its concept name, analysis.json, features and emergence rows (or None)."""

    folder: Path
    concept: str
    info: dict
    features: pd.DataFrame
    emergence: pd.DataFrame | None


def compare(folders: list[Path], output: Path, overwrite: bool = False) -> Path:
    """Compare the analyses in folders and write OUT (features, concept features, emergence, report); return OUT."""
    output = Path(output)
    if len(folders) < 2:
        raise InputError("compare: give at least two analysis folders")
    _check_output(output, overwrite)
    analyses = _named([_read(Path(folder)) for folder in folders])
    _check_same_model_and_saes(analyses)
    scores = score_table(analyses)
    counted = concept_features(analyses, scores)
    emergence = emergence_by_concept(analyses)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging(output, STAGING_SUFFIX)
    try:
        (staging / MARKER).write_text("written by saezarr compare\n")
        scores.to_parquet(staging / "features.parquet", index=False)
        counted.to_csv(staging / "concept_features.csv", index=False)
        if emergence is not None:
            emergence.to_csv(staging / "emergence.csv", index=False)
        info = _info(analyses, counted)
        (staging / "comparison.json").write_text(json.dumps(info, indent=2, allow_nan=False))
        from saezarr.analysis.report.compare_page import write_compare_report

        write_compare_report(staging, analyses, counted, emergence, info)
        swap_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse an existing OUT without --overwrite, a file, and a folder compare did not write."""
    if output.exists() and not output.is_dir():
        raise InputError(f"{option('output', output)}: is a file, not a folder")
    if output.exists() and not overwrite:
        raise OutputExists(f"{option('output', output)}: already exists; use {option('overwrite', True)} to replace it")
    if output.exists() and not (output / MARKER).is_file():
        raise OutputExists(
            f"{option('output', output)}: not written by saezarr compare (no {MARKER} in it); not replaced"
        )


def _read(folder: Path) -> ConceptAnalysis:
    """An analyze output folder, refused in one line if it is not one."""
    try:
        info = Analysis(folder).info
    except InputError as exc:
        raise InputError(f"compare: {exc.message}") from None
    try:
        columns = [*KEY, "pearson_corr", "passes_filter"]
        features = pd.read_parquet(folder / "features.parquet")
        features = features[[*columns, *(["p_value_fwer"] if "p_value_fwer" in features else [])]]
    except (ValueError, KeyError, OSError) as exc:
        raise InputError(f"compare: {folder}: unreadable analysis ({type(exc).__name__}: {exc})") from None
    path = folder / "emergence.csv"
    emergence = pd.read_csv(path, **exact_floats()) if path.is_file() else None
    return ConceptAnalysis(folder, Path(str(info.get("input_file") or folder.name)).stem, info, features, emergence)


def _named(analyses: list[ConceptAnalysis]) -> list[ConceptAnalysis]:
    """The analyses named by their input file, or by their folder where two share an input file name."""
    names = [a.concept for a in analyses]
    if len(set(names)) == len(names):
        return analyses
    named = [ConceptAnalysis(a.folder, a.folder.name, a.info, a.features, a.emergence) for a in analyses]
    if len({a.concept for a in named}) < len(named):
        return [
            ConceptAnalysis(a.folder, f"{a.folder.name}#{i}", a.info, a.features, a.emergence)
            for i, a in enumerate(named)
        ]
    return named


def _check_same_model_and_saes(analyses: list[ConceptAnalysis]) -> None:
    """Refuse, in one line, analyses of different models or SAE sets (or of different features of them)."""
    first = analyses[0]
    for other in analyses[1:]:
        for key in IDENTITY:
            if first.info.get(key) != other.info.get(key):
                raise InputError(
                    f"compare: {other.folder} analyses {key} {other.info.get(key)!r} but {first.folder} analyses "
                    f"{first.info.get(key)!r}: compare analyses of one model and one set of SAEs"
                )
        if not first.features[KEY].equals(other.features[KEY]):
            raise InputError(
                f"compare: {other.folder} analyses other SAEs or features than {first.folder} (its configs: "
                f"{', '.join(sorted(set(other.features.config)))[:200]}); analyse the same "
                f"{option('configs')}/{option('layers')}"
            )


def score_table(analyses: list[ConceptAnalysis]) -> pd.DataFrame:
    """Per feature: its pearson_<concept> (and p_value_fwer_<concept>) per concept, best_concept and specificity."""
    table = analyses[0].features[KEY].copy()
    scores = np.column_stack([a.features.pearson_corr.to_numpy(dtype=np.float64) for a in analyses])
    for a, column in zip(analyses, scores.T):
        table[f"pearson_{a.concept}"] = column
        if "p_value_fwer" in a.features:
            table[f"p_value_fwer_{a.concept}"] = a.features.p_value_fwer.to_numpy()
    filled = np.where(np.isnan(scores), -np.inf, scores)
    best = np.argmax(filled, axis=1)
    ordered = np.sort(filled, axis=1)
    with np.errstate(invalid="ignore"):
        specificity = ordered[:, -1] - ordered[:, -2]
    scored = np.isfinite(ordered[:, -1])
    table["best_concept"] = np.where(scored, np.array([a.concept for a in analyses], dtype=object)[best], "")
    table["specificity"] = np.where(scored & np.isfinite(specificity), specificity, np.nan)
    return table


def _counts(analysis: ConceptAnalysis) -> np.ndarray:
    """Which features count for the analysis's concept: those that beat chance, else those passing its filter."""
    if "p_value_fwer" in analysis.features:
        return beats_chance(analysis.features.p_value_fwer.to_numpy())
    return analysis.features.passes_filter.to_numpy(dtype=bool)


def concept_features(analyses: list[ConceptAnalysis], scores: pd.DataFrame) -> pd.DataFrame:
    """concept_features.csv: every feature counting for some concept, `specific` to one or `shared` by several,
    with the concepts it counts for, its scores and specificity; most specific first."""
    counted = np.column_stack([_counts(a) for a in analyses])
    rows = counted.any(axis=1)
    names = np.array([a.concept for a in analyses], dtype=object)
    table = scores[rows].copy()
    table.insert(4, "kind", np.where(counted[rows].sum(axis=1) > 1, "shared", "specific"))
    table.insert(5, "concepts", [";".join(names[mask]) for mask in counted[rows]])
    return table.sort_values(["kind", "specificity"], ascending=[False, False], kind="stable", ignore_index=True)


def emergence_by_concept(analyses: list[ConceptAnalysis]) -> pd.DataFrame | None:
    """The analyses' emergence.csv rows, with a `concept` column first (None if no analysis has them)."""
    parts = [a.emergence.assign(concept=a.concept) for a in analyses if a.emergence is not None]
    if not parts:
        return None
    table = pd.concat(parts, ignore_index=True)
    return table[["concept", *[c for c in table.columns if c != "concept"]]]


def _info(analyses: list[ConceptAnalysis], counted: pd.DataFrame) -> dict:
    first = analyses[0].info
    return {
        **{key: first.get(key) for key in IDENTITY},
        "concepts": [
            {
                "concept": a.concept,
                "folder": str(a.folder),
                "input_file": a.info.get("input_file"),
                "pool": a.info.get("pool"),
                "significant_features": a.info.get("significant_features"),
                "counted": sum(a.concept in concepts.split(";") for concepts in counted.concepts),
            }
            for a in analyses
        ],
        "specific": int((counted.kind == "specific").sum()),
        "shared": int((counted.kind == "shared").sum()),
        "features": len(analyses[0].features),
    }
