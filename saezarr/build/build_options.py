"""What `saezarr build` takes: each option's default, help and flag on its field, from which the command line is
built; `with_defaults` fills what the options leave to the demo or to the bundled catalogue."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr import errors
from saezarr.execution.connect import ClusterOptions
from saezarr.inputs import catalogues
from saezarr.inputs.configs import parse_layers
from saezarr.machine import parse_size
from saezarr.option_fields import comma_list, option, options_of, positive_int
from saezarr.store import DEFAULT_CHUNK_FRAGMENTS
from saezarr.store.storage import Location, as_location

if TYPE_CHECKING:
    from saezarr.inputs.sentences import SentenceTable

DEFAULT_CONFIG = Path(catalogues.DEFAULT)  # a bundled catalogue, in the package
DEMO_OUTPUT = Path("saezarr-demo.zarr")
DEFAULT_BATCH_SIZE = 16
DEFAULT_FRAGMENTS = "token"
DEFAULT_DTYPE = "float32"


def parse_residuals(text: str) -> Sequence[int] | str:
    """--residuals: "all" (given alone), or the layers listed."""
    if text == "all":
        return text
    return parse_layers(text, "residuals")


def parse_sae_memory(text: str) -> int:
    """--sae-memory: a size such as 8GiB or 500MB."""
    return parse_size(text, errors.option("sae_memory"))


@dataclass
class BuildOptions:
    """Everything `saezarr build` takes; None leaves an option to its default, resolved once in the build's plan."""

    input: Path | SentenceTable | None = option(
        help="CSV with columns sentence,concept_strength_label (or a .tsv, .parquet or .jsonl file)", type=Path
    )  # from Python also a pandas DataFrame, or a table with a to_pandas() method (inputs.sentences.read_sentences)
    output: Location | None = option(
        help="the Zarr store to write: a folder, or a URL (s3://BUCKET/NAME.zarr, gs://, az://)", type=as_location
    )
    config_file: Path | None = option(
        help=f"SAE configuration file, or a bundled catalogue's name (`saezarr catalogues`; default: {DEFAULT_CONFIG})",
        flag="--config",
        type=Path,
    )
    model: str | None = option(help="hub repo id or local folder; overrides the config file")
    sae_repo: str | None = option(help="hub repo id or local folder; overrides the config file")
    layers: Sequence[int] | None = option(help="only configs on these layers, e.g. 3,12", parse=parse_layers)
    configs: Sequence[str] | None = option(
        help="only these configs, e.g. layer_12_l0_82,layer_3_l0_59", parse=comma_list
    )
    fragments: str | None = option(
        help=f"fragment granularity (default {DEFAULT_FRAGMENTS})", choices=("token", "word", "final")
    )  # with --extend: the store's own
    device: str | None = option(help="cpu or cuda (default: cuda if available)")
    dtype: str | None = option(
        help=f"model dtype (default {DEFAULT_DTYPE})", choices=("float32", "bfloat16")
    )  # with --extend: the store's own
    batch_size: int | None = option(
        help=f"sentences per forward (default {DEFAULT_BATCH_SIZE}, or the store's own on --resume)",
        type=positive_int,
    )
    sae_memory: int | None = option(
        help="memory for SAE encoders per pass (default: on CUDA the free memory less a reserve, on CPU 8GiB)",
        parse=parse_sae_memory,
    )
    chunk_fragments: int | None = option(
        help=f"fragments per chunk, the unit of writing and resuming (default {DEFAULT_CHUNK_FRAGMENTS})",
        type=positive_int,
    )  # the default is smaller for SAEs wider than 32k (store.format.default_chunk_fragments)
    workers: int | None = option(help="writer threads (default: one per usable core, at most 32)", type=positive_int)
    max_chunks: int | None = option(help="stop after this many chunks (try a small part first)", type=positive_int)
    residuals: Sequence[int] | str | None = option(
        help="also keep the residual stream: of every layer, or of these layers, e.g. --residuals 3,12",
        nargs="?",
        const="all",
        parse=parse_residuals,
    )  # None: no residual stream; "all": every layer; else these layers
    resume: bool = option(False, help="continue an interrupted build", group="mode")
    overwrite: bool = option(False, help="replace an existing store", group="mode")
    extend: bool = option(
        False,
        help="grow the store at --output: the config file's new SAEs, the input's rows after the store's",
        group="mode",
    )
    force_unlock: bool = option(False, help="take the store's lock even if another build seems to hold it")
    unsafe_lock: bool = option(
        False, help="build on an object store that ignores conditional writes (its lock cannot keep a second build out)"
    )
    quiet: bool = option(False, help="no progress bar")
    demo: bool = option(False, help="build from the bundled sample with a tiny generated model (offline)")
    cluster: ClusterOptions = options_of(ClusterOptions)  # default: run in this process
    overlap_writes: bool | None = None  # None: on GPUs only (work.overlaps_writes); not a command-line option


def with_defaults(options: BuildOptions) -> BuildOptions:
    """The options with the demo's input, output and config filled in (with --demo) and the bundled catalogue as the
    config file if none is given; refuse a build without --input and --output."""
    if options.demo:
        from saezarr.testing.synthetic import DEMO_CSV, ensure_demo

        options = dataclasses.replace(
            options,
            overwrite=options.overwrite or (options.output is None and not options.resume),  # rebuilt each time
            input=DEMO_CSV if options.input is None else options.input,
            output=options.output or DEMO_OUTPUT,
            config_file=options.config_file or ensure_demo(),
        )
    if options.output is None or (options.input is None and not options.extend):
        raise errors.InputError(
            f"build: {errors.option('input')} and {errors.option('output')} are required (or use {errors.option('demo')})"
        )
    return dataclasses.replace(options, config_file=options.config_file or DEFAULT_CONFIG)
