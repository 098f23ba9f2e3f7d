"""Planning a build: the options resolved once into a typed `BuildPlan`, every input validated and every default
filled in, before the output is touched; `build` and `build --extend` share `plan_build`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch

from saezarr import __version__
from saezarr.build.build_options import DEFAULT_BATCH_SIZE, DEFAULT_DTYPE, DEFAULT_FRAGMENTS, BuildOptions
from saezarr.build.extending import plan_extension, sentence_start
from saezarr.build.work import overlaps_writes
from saezarr.errors import InputError, ResumeMismatch, option
from saezarr.execution.connect import ClusterOptions
from saezarr.inputs.configs import SAEConfig, check_depth, load_config_file, select_configs, with_neuronpedia
from saezarr.inputs.fragments import PREPEND_BOS, Fragments, make_fragments
from saezarr.inputs.sentences import read_sentences
from saezarr.models.language_model import ModelInfo, check_weights, load_tokenizer, resolve_model
from saezarr.saes.locate import (
    SAEFile,
    check_context,
    describe_configs,
    known_from_path,
    locate_sae,
    resolve_sae_repo,
)
from saezarr.store.format import (
    Store,
    check_output_path,
    check_resume,
    default_chunk_fragments,
    read_saezarr_attrs,
)
from saezarr.store.growing import Growth
from saezarr.store.residual_arrays import KeptSite, kept_sites
from saezarr.store.storage import Location


@dataclass
class BuildPlan:
    """A build resolved from its options: what it computes, where and how, every default filled in; runners take
    this and the store, never the options."""

    output: Location
    fragments: Fragments | None  # None: no task runs the model (an extension from stored residuals)
    configs: tuple[SAEConfig, ...]
    saes: list[SAEFile]
    attrs: dict  # a new store's attributes; the store's own on --resume and --extend
    model_info: ModelInfo | None = field(repr=False)
    device: str
    batch_size: int  # sentences per forward: the store's own on --resume and --extend
    overlap_writes: bool  # whether units are written behind the compute
    chunk_fragments: int | None = None  # a new store's fragments per chunk; None: the store's own
    residual_layers: tuple[int, ...] | None = None  # the layers whose residual stream the store keeps
    residual_sites: tuple[KeptSite, ...] = ()  # the other sites the store keeps at those layers
    sae_memory: int | None = None  # None: what the device leaves free once the model is loaded (measured there)
    write_threads: int | None = None  # None: one per usable core where the tasks run
    max_chunks: int | None = None
    quiet: bool = False
    cluster: ClusterOptions = field(default_factory=ClusterOptions)  # default: run in this process
    growth: Growth | None = None  # an extension's growth of the store, applied before any task
    n_sentences: int = 0


def plan_build(options: BuildOptions, store: Store | None = None) -> BuildPlan:
    """The plan of a build or, with `store` (the store to extend, held under its lock), of an extension: every input
    checked and every default resolved; nothing is written."""
    if options.extend:
        assert store is not None  # an extension is planned for the store it grows
        extension = plan_extension(options, store)
        device = resolve_device(options.device, here=not options.cluster.remote)
        return _resolved(
            options,
            device,
            fragments=extension.fragments,
            configs=extension.configs,
            saes=extension.saes,
            attrs=store.attrs,
            model_info=extension.model_info,
            batch_size=store.attrs.get("batch_size", DEFAULT_BATCH_SIZE),
            growth=extension.growth,
            n_sentences=extension.n_sentences,
        )
    device = resolve_device(options.device, here=not options.cluster.remote)
    plan = _new_store_plan(options, device)
    assert options.output is not None  # with_defaults: refused without one
    if options.resume and check_output_path(options.output):  # a resumed store keeps its batches and chunks
        check_resume(options.output, plan.attrs, plan.configs)
        kept = read_saezarr_attrs(options.output).get("batch_size", DEFAULT_BATCH_SIZE)
        plan.batch_size, plan.chunk_fragments = options.batch_size or kept, None
    return plan


def _resolved(options: BuildOptions, device: str, **planned) -> BuildPlan:
    """A plan of what the options leave to defaults, around what was planned from the inputs."""
    assert options.output is not None  # with_defaults: refused without one
    return BuildPlan(
        output=options.output,
        device=device,
        overlap_writes=overlaps_writes(device) if options.overlap_writes is None else options.overlap_writes,
        sae_memory=options.sae_memory,
        write_threads=options.workers,
        max_chunks=options.max_chunks,
        quiet=options.quiet,
        cluster=options.cluster,
        **planned,
    )


def _new_store_plan(options: BuildOptions, device: str) -> BuildPlan:
    """The plan of a new store (or of the store a --resume continues) from the input, config file and model."""
    assert options.input is not None and options.config_file is not None  # with_defaults: given, or refused
    data = read_sentences(options.input)
    config_file = load_config_file(options.config_file)
    sae_repo = options.sae_repo or config_file.sae_repo
    chosen = selected_early(config_file.configs, options.layers, options.configs)
    described, sae_source = describe_configs(sae_repo, chosen, options.config_file)
    configs = with_neuronpedia(select_configs(described, options.layers, options.configs), sae_repo)
    info = resolve_model(options.model or config_file.model)
    check_depth(configs, info.num_layers, options.config_file)
    tokenizer = load_tokenizer(info)
    granularity = options.fragments or DEFAULT_FRAGMENTS
    sae_source = sae_source or resolve_sae_repo(sae_repo, configs[0])
    saes = [locate_sae(sae_source, c, info, options.config_file, config_file) for c in configs]
    prepend_bos = sentence_start(saes, options.config_file)
    fragments = make_fragments(data, tokenizer, granularity, info.max_tokens, prepend_bos)
    check_context(saes, [len(ids) for ids in fragments.token_ids], data.row)
    check_weights(info)  # after the SAEs: an SAE refused in a line costs no download of the model's weights
    configs = tuple(sae.config for sae in saes)
    batch_size = options.batch_size or DEFAULT_BATCH_SIZE
    layers = residual_layers(options.residuals, info.num_layers)
    attrs = {
        "saezarr_version": __version__,
        "model": info.source.name,
        "model_revision": info.source.revision,
        "sae_repo": sae_source.name,
        "sae_revision": sae_source.revision,
        "model_dtype": options.dtype or DEFAULT_DTYPE,
        "fragments": granularity,
        "tokens_sha256": fragments.tokens_sha256(),
        "input_file": data.name,
        "input_sha256": data.sha256,
        "n_sentences": len(data),
        "configs": [c.name for c in configs],
        "batch_size": batch_size,
        "hidden_size": info.hidden_size,
        **({} if prepend_bos else {PREPEND_BOS: False}),  # recorded only where nothing precedes a sentence
    }
    return _resolved(
        options,
        device,
        fragments=fragments,
        configs=configs,
        saes=saes,
        attrs=attrs,
        model_info=info,
        batch_size=batch_size,
        chunk_fragments=options.chunk_fragments or default_chunk_fragments(max(sae.width for sae in saes)),
        residual_layers=layers,
        residual_sites=kept_sites([sae.hook for sae in saes], layers or (), info.width_of),
        n_sentences=len(data),
    )


def selected_early(
    configs: Sequence[SAEConfig], layers: Sequence[int] | None, names: Sequence[str] | None
) -> tuple[SAEConfig, ...]:
    """The configs a selection keeps, chosen before any SAE is described where the config file and folder names
    already say what the selection reads (every layer, every final name): an SAE outside it is never looked at."""
    configs = tuple(map(known_from_path, configs))
    if layers is not None and any(c.layer is None for c in configs):
        return configs
    if names is not None and not all(c.given_name for c in configs):  # a derived name may gain its site's kind
        return configs
    return select_configs(configs, layers, names) if (layers, names) != (None, None) else configs


def resolve_device(device: str | None, here: bool = True) -> str:
    """The torch device to run on: as asked, else CUDA when available; refuse one this machine lacks (if `here`)."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise InputError(f"{option('device', device)}: not a device saezarr runs on (use cpu or cuda)")
    if not here:
        return device  # runs on the cluster's workers, which check it themselves
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"{option('device', device)}: CUDA is not available here (torch {torch.__version__}); use "
            f"{option('device', 'cpu')}"
        )
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise InputError(f"{option('device', device)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def residual_layers(asked: Sequence[int] | str | None, num_layers: int) -> tuple[int, ...] | None:
    """The layers `--residuals` keeps (None: no residual stream), checked against the model's depth."""
    if asked is None:
        return None
    if asked == "all":
        return tuple(range(num_layers))
    layers = cast("Sequence[int]", asked)  # parse_residuals lets no other word through
    wrong = [layer for layer in layers if not 0 <= layer < num_layers]
    if wrong:
        raise InputError(f"{option('residuals')}: layer {wrong[0]} is not a layer of the model (0-{num_layers - 1})")
    return tuple(sorted(set(layers)))


def check_kept_options(batch_size: int | None, chunk_fragments: int | None, store: Store) -> None:
    """Refuse a batch or chunk size other than the store's: a chunk's batches decide its last bits."""
    for name, given, kept in (
        ("batch_size", batch_size, store.attrs.get("batch_size", DEFAULT_BATCH_SIZE)),
        ("chunk_fragments", chunk_fragments, store.chunk_fragments),
    ):
        if given is not None and given != kept:
            raise ResumeMismatch(
                f"{option(name, given)}: the store at {store.path} was started with {kept}; a resumed store must "
                f"keep it to stay bitwise equal, so leave {option(name)} out (or use {option('overwrite', True)})"
            )
