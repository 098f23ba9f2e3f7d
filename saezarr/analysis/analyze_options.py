"""What `saezarr analyze` takes: each option's default, help and flag on its field, from which the command line is
built."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

from saezarr.execution.connect import ClusterOptions
from saezarr.option_fields import configs_option, count, layers_option, option, options_of, positive_int
from saezarr.store.storage import Location, as_location

POOLS = ("final", "max", "mean")  # one activation per sentence: its final token's, or the max or mean
PROBE_PERMUTATIONS = 20  # permuted labellings behind each emergence chance level


@dataclass(frozen=True)
class AnalyzeOptions:
    """What `saezarr analyze` was asked to do."""

    store: Location = option(MISSING, help=None, positional=True, type=as_location)
    # required on the command line; from Python, None writes STORE-analysis beside the store (run.analysis_folder)
    output: Path | None = option(None, help="folder for the analysis files (must not exist)", type=Path, required=True)
    configs: list[str] | None = configs_option()
    layers: list[int] | None = layers_option()
    pool: str = option(
        "final",
        help="one activation per sentence: its final token's, or the max or mean over its fragments",
        choices=POOLS,
    )
    min_pearson: float = option(0.4, help="filter: Pearson correlation at least this (-1..1)", type=float)
    min_tpr: float = option(0.5, help="filter: true positive rate at least this (0..1)", type=float)
    max_fpr: float = option(0.2, help="filter: false positive rate at most this (0..1)", type=float)
    top_n: int = option(50, help="features with examples and in the report", type=positive_int)
    examples_per_label: int = option(5, help="example sentences per label", type=positive_int)
    permutations: int = option(
        100,
        help="label permutations of the chance baseline (family-wise p-values); 0 turns it off (default %(default)s)",
        type=count,
    )
    folds: int = option(
        5,
        help="folds of the held-out validation and the per-layer emergence curves; 0 turns them off "
        "(default %(default)s)",
        type=count,
    )
    probe_permutations: int = option(
        PROBE_PERMUTATIONS,
        help="permuted labellings behind the emergence curves' chance levels (default %(default)s)",
        type=count,
    )
    seed: int = option(0, help="seed of the permutations and folds (default %(default)s)", type=count)
    allow_partial: bool = option(False, help="analyse the finished configs of an unfinished store")
    overwrite: bool = option(False, help="replace an existing output folder")
    quiet: bool = option(False, help="no progress bar")
    cluster: ClusterOptions = options_of(ClusterOptions, omit=("local_workers",))  # default: threads here
    cache: Path | None = None  # cache root; None: $SAEZARR_CACHE or ~/.cache/saezarr; not a command-line option
