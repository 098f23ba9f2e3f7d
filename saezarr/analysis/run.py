"""`saezarr analyze`: rank every SAE feature of a store against the concept labels and write the analysis files."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

import saezarr
from saezarr.analysis.analyze_options import AnalyzeOptions
from saezarr.analysis.cache.coordinates import AnalysisCoordinates
from saezarr.analysis.cache.files import PLOTS, AnalysisCache, cache_root, fingerprint
from saezarr.analysis.cache.units import feature_units, units_on
from saezarr.analysis.headline import Headline
from saezarr.analysis.outputs import OutputWriter, check_output
from saezarr.analysis.resampling import Resampled, ResamplingOptions, resample, store_residuals
from saezarr.analysis.stats.blocks import LABELS
from saezarr.analysis.stats.metrics import passes_filter
from saezarr.analysis.stats.pooling import SentenceLayout, check_pool
from saezarr.analysis.stats.validation import Thresholds
from saezarr.analysis.tables import ConfigTable, features_table, within_widths
from saezarr.errors import InputError, SaezarrNote, StoreUnfinished, call, option
from saezarr.execution.connect import ClusterOptions
from saezarr.store.format import Store
from saezarr.store.reading import open_existing
from saezarr.store.selection import select_stored_configs

if TYPE_CHECKING:
    import pyarrow as pa

NO_SOURCES_NOTE = (
    "neuronpedia_url is empty for every feature: the store was built before saezarr recorded each SAE's "
    "Neuronpedia source (rebuild it to get links)"
)


@dataclass(frozen=True)
class AnalyzePlan:
    """An analysis resolved from its options: the store and its finished selection, the cache root, the output, and
    every threshold and resampling setting; `run` takes this, never the options."""

    store: Store
    output: Path
    cache_root: Path  # absolute: workers are sent paths below it
    indices: list[int]  # store indices of the selected, finished configs
    coordinates: AnalysisCoordinates
    layout: SentenceLayout
    pool: str
    resampling: ResamplingOptions  # its thresholds: the filter and the top-n
    examples_per_label: int
    quiet: bool
    cluster: ClusterOptions
    planned_at: float  # time.perf_counter() when planning began: the summary's elapsed time counts from it

    @property
    def thresholds(self) -> Thresholds:
        """The filter and how many top features are kept."""
        return self.resampling.thresholds


@dataclass
class AnalyzeSummary:
    """What an analysis did."""

    output: Path
    n_configs: int
    n_features: int  # of the widest selected SAE
    n_sentences: int
    headline: Headline  # what survives chance, and what passes the in-sample filter
    pool: str
    cache: Path
    cache_reused: bool
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def n_passing(self) -> int:
        """How many features pass the in-sample filter."""
        return self.headline.passing

    def line(self) -> str:
        """One summary line for the terminal, leading with what survives chance."""
        reused = "cached activations and metrics reused" if self.cache_reused else "activations and metrics cached"
        return (
            f"saezarr: {self.headline.text()}; analysed {self.n_configs} configs x {self.n_features} features over "
            f"{self.n_sentences} sentences (pool {self.pool}), wrote {self.output} in {self.elapsed:.1f} s ({reused})"
        )


def analyze(options: AnalyzeOptions) -> AnalyzeSummary:
    """Compute (or reuse) every selected feature's metrics, rank them, pick examples and write DIR."""
    return run(plan_analysis(options))


def plan_analysis(options: AnalyzeOptions) -> AnalyzePlan:
    """Check the options, the store and the output, and resolve what the analysis reads; nothing is written."""
    started = time.perf_counter()
    check_options(options)
    store = open_existing(options.store)
    output = analysis_folder(options.output, store)
    check_output(output, options.overwrite, store.path)
    root = Path(options.cache or cache_root()).absolute()
    coordinates = AnalysisCoordinates.of(store, root)
    indices = _finished_selection(store, coordinates["layer"].tolist(), options)
    layout = SentenceLayout.of(
        coordinates["sentence_index"], coordinates["is_final_token"], coordinates["concept_strength_label"]
    )
    layout.check(options.pool)
    if options.folds > layout.n_sentences:
        raise InputError(
            f"{option('folds')}: expected at most the number of sentences ({layout.n_sentences}), got {options.folds}"
        )
    thresholds = Thresholds(options.min_pearson, options.min_tpr, options.max_fpr, options.top_n)
    return AnalyzePlan(
        store=store,
        output=output,
        cache_root=root,
        indices=indices,
        coordinates=coordinates,
        layout=layout,
        pool=options.pool,
        resampling=ResamplingOptions(
            options.permutations, options.folds, options.probe_permutations, options.seed, thresholds
        ),
        examples_per_label=options.examples_per_label,
        quiet=options.quiet,
        cluster=options.cluster,
        planned_at=started,
    )


def analysis_folder(output: Path | None, store: Store) -> Path:
    """Where the analysis is written: `output`, else beside a local store, named after it (x.zarr: x-analysis)."""
    if output is not None:
        return Path(output)
    folder = store.storage.folder
    if folder is None:
        raise InputError(
            f"{option('output')}: give a folder for the analysis of {store.path}, which is not a local folder"
        )
    return folder.parent / f"{folder.stem}-analysis"


def run(plan: AnalyzePlan) -> AnalyzeSummary:
    """Compute (or reuse) the plan's metrics, rank the features, pick examples and write the output folder."""
    store, indices, layout, coordinates = plan.store, plan.indices, plan.layout, plan.coordinates
    cache = AnalysisCache(fingerprint(store, plan.pool, indices), plan.cache_root)  # checks the size cap
    coordinates.memoize()
    cache.remove_dead_fills()
    reused = cache.complete
    if reused:
        cache.touch()
    else:
        with (
            units_on(plan.cluster, store, plan.cache_root),
            _progress(plan.quiet, len(feature_units(store, indices))) as progress,
        ):
            cache.fill(store, indices, layout, plan.pool, progress)
    configs = ConfigTable.of(store.config_names, coordinates.values, indices)
    notes = _notes(layout.labels, configs)
    for note in notes:
        warnings.warn(note, SaezarrNote, stacklevel=2)
    metrics = cache.metrics()
    resampled = resample(
        cache, configs, layout, plan.pool, plan.resampling, store_residuals(store.path), quiet=plan.quiet
    )
    thresholds = plan.thresholds
    passing = passes_filter(metrics, thresholds.min_pearson, thresholds.min_tpr, thresholds.max_fpr)
    features = features_table(metrics, passing, configs, resampled.p_values(metrics))
    with OutputWriter(plan.output) as output:
        output.write_features(within_widths(features, store.widths[indices]))
        headline = _write_findings(output, plan, features, configs, cache, notes, (metrics, resampled))
    return AnalyzeSummary(
        output=plan.output,
        n_configs=len(indices),
        n_features=int(store.widths[indices].max()),  # the widest selected SAE
        n_sentences=layout.n_sentences,
        headline=headline,
        pool=plan.pool,
        cache=cache.path,
        cache_reused=reused,
        notes=notes,
        elapsed=time.perf_counter() - plan.planned_at,
    )


def _write_findings(
    output: OutputWriter,
    plan: AnalyzePlan,
    features: pa.Table,
    configs: ConfigTable,
    cache: AnalysisCache,
    notes: list[str],
    resampling: tuple[dict, Resampled],
) -> Headline:
    """Write the ranked features, their examples, analysis.json and the report; return the analysis's headline."""
    # imported only now, once features.parquet is being written on its thread: pandas' import (0.2 s) overlaps it
    from saezarr.analysis.examples import feature_examples
    from saezarr.analysis.ranking import (
        config_summary,
        emergence_table,
        heldout_summary,
        heldout_table,
        ranked_table,
        with_heldout,
    )

    metrics, resampled = resampling
    store, coordinates, layout = plan.store, plan.coordinates, plan.layout
    ranked = ranked_table(features)
    tables = {}
    if resampled.heldout is not None:
        ranked = with_heldout(ranked, resampled.heldout, configs)
        tables["heldout"] = heldout_table(resampled.heldout, configs, features)
    if resampled.emergence is not None:
        tables["emergence"] = emergence_table(resampled.emergence)
    top = ranked.head(plan.thresholds.top_n).copy()
    top["config_index"] = top.config.map({str(name): i for i, name in enumerate(configs.names)})
    top["store_index"] = configs.indices[top.config_index.to_numpy(dtype=np.int64)]
    fragment_texts = coordinates.values.get("fragment_text")  # None: one fragment per sentence, no token shading
    examples = feature_examples(
        top, cache, coordinates["sentence_text"], store, layout, fragment_texts, plan.examples_per_label
    )
    passing = features["passes_filter"].to_numpy().reshape(len(configs.names), -1)
    permutation = resampled.summary(metrics, configs.names)
    widths = store.widths[configs.indices]
    headline = Headline.of(len(configs.names), int(widths.sum()), layout.n_sentences, int(passing.sum()), permutation)
    info = _info(plan, headline, notes, fragment_texts is not None)
    info["headline"] = headline.to_json()
    info["significant_features"] = headline.beat_chance
    info["permutation"] = permutation
    info["heldout"] = None if resampled.heldout is None else heldout_summary(resampled.heldout, plan.resampling.folds)
    info["emergence"] = resampled.emergence
    score = features["interpretability_score"].to_numpy().reshape(passing.shape)
    summary = config_summary(configs, score, passing)
    if permutation is not None:
        chance = permutation["chance_per_sae"]
        summary["chance_pearson"] = np.array(
            [
                np.nan if chance[str(name)]["pearson"] is None else chance[str(name)]["pearson"]
                for name in summary.config
            ]
        )
    output.write_rest(ranked, summary, examples, info, cache.path / PLOTS, tables)
    return headline


def check_options(options: AnalyzeOptions) -> None:
    """Refuse thresholds outside their range, a non-positive top-n or examples count, and an unknown pool."""
    check_pool(options.pool)
    ranges = {
        "min_pearson": (options.min_pearson, -1.0, 1.0),
        "min_tpr": (options.min_tpr, 0.0, 1.0),
        "max_fpr": (options.max_fpr, 0.0, 1.0),
    }
    for name, (value, low, high) in ranges.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
            raise InputError(f"{option(name)}: expected a number from {low:g} to {high:g}, got {value!r}")
    for name, value in (("top_n", options.top_n), ("examples_per_label", options.examples_per_label)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
    for name, value in (
        ("permutations", options.permutations),
        ("probe_permutations", options.probe_permutations),
        ("seed", options.seed),
        ("folds", options.folds),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{option(name)}: expected a non-negative integer, got {value!r}")
    if options.folds == 1:
        raise InputError(f"{option('folds')}: expected 0 (off) or at least 2, got 1")


def _finished_selection(store: Store, layers: list[int], options: AnalyzeOptions) -> list[int]:
    """Store indices of the selected configs; unfinished ones are refused, or left out with --allow-partial."""
    selected = select_stored_configs(store.config_names, layers, options.configs, options.layers)
    done = store.done_matrix()
    unfinished = [i for i in selected if not done[i].all()]
    if unfinished and not options.allow_partial:
        names = store.config_names
        progress = ", ".join(f"{names[i]} ({int(done[i].sum())}/{store.n_chunks} chunks)" for i in unfinished)
        raise StoreUnfinished(
            f"{store.path}: not analysed, the build is unfinished for {progress}; finish it with "
            f"`{call('build', 'resume')}`, or analyse the finished configs only with {option('allow_partial', True)}"
        )
    finished = [i for i in selected if done[i].all()]
    if not finished:
        raise StoreUnfinished(f"{store.path}: none of the selected configs is finished; nothing to analyse")
    return finished


class _progress:
    """A progress bar over the units of work on stderr, unless quiet; called with the number of units done."""

    def __init__(self, quiet: bool, total: int):
        self.quiet, self.total, self.bar = quiet, total, None

    def __enter__(self):
        if self.quiet:
            return None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, desc="saezarr: analysing", unit="unit", leave=False)
        return self.bar.update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _notes(labels: np.ndarray, configs: ConfigTable) -> list[str]:
    notes = []
    missing = [k for k in (0, 3) if not (labels == k).any()]
    if missing:
        which = " and ".join(f"label-{k}" for k in missing)
        notes.append(
            f"the data has no {which} sentences: pearson_corr, spearman_corr, separation_score, threshold, tpr, fpr, "
            "interpretability_score, auroc_3v0 and cohens_d_3v0 are NaN and no feature passes the filter"
        )
    if configs.sources is None:
        notes.append(NO_SOURCES_NOTE)
    else:
        unlinked = [str(c) for c, s in zip(configs.names, configs.sources) if not s]
        if unlinked:
            notes.append(
                f"{len(unlinked)} of {len(configs.names)} SAEs have no published Neuronpedia source, so their features "
                f"have no link ({', '.join(unlinked[:5])}{', ...' if len(unlinked) > 5 else ''})"
            )
    return notes


def _info(plan: AnalyzePlan, headline: Headline, notes: list[str], token_shading: bool) -> dict:
    store, labels, thresholds = plan.store, plan.layout.labels, plan.thresholds
    attrs = store.attrs
    return {
        "store": str(store.path),
        "saezarr_version": saezarr.__version__,
        **{
            key: attrs.get(key)
            for key in (
                "model",
                "model_revision",
                "sae_repo",
                "sae_revision",
                "input_file",
                "input_sha256",
                "fragments",
            )
        },
        "pool": plan.pool,
        "thresholds": {
            "min_pearson": thresholds.min_pearson,
            "min_tpr": thresholds.min_tpr,
            "max_fpr": thresholds.max_fpr,
        },
        "top_n": thresholds.top_n,
        "examples_per_label": plan.examples_per_label,
        "counts": {
            "configs": headline.configs,
            "features": headline.features,
            "sentences": headline.sentences,
            "sentences_by_label": {str(k): int((labels == k).sum()) for k in LABELS},
            "passing": headline.passing,
        },
        "token_shading": token_shading,
        "notes": notes,
    }
