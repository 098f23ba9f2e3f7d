"""Planning `build --extend`: what a store gains (configs, sentences), checked against what it holds, before anything
is written; the model is resolved only when some new unit needs it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from saezarr import __version__
from saezarr.build.build_options import BuildOptions
from saezarr.errors import ConfigError, ResumeMismatch, StoreUnfinished, option
from saezarr.hub import Source
from saezarr.inputs.configs import (
    MISSING_L0,
    ConfigFile,
    SAEConfig,
    check_depth,
    load_config_file,
    select_configs,
    with_neuronpedia,
)
from saezarr.inputs.fragments import FRAGMENT_FIELDS, PREPEND_BOS, Fragments, make_fragments
from saezarr.inputs.sentences import LabeledSentences, data_row, read_sentences
from saezarr.models.language_model import ModelInfo, check_weights, load_tokenizer, resolve_model
from saezarr.saes.locate import SAEFile, check_context, describe_configs, locate_sae, resolve_sae_repo
from saezarr.sites import HEADS_KIND, resid_post
from saezarr.store.format import WIDTHS, Store
from saezarr.store.growing import Growth, read_record
from saezarr.store.residual_arrays import kept_residuals


@dataclass
class Extension:
    """A checked extension: the store's configs after it, the SAEs and fragments its new units need, the growth to
    apply (None: the store already has this shape), and the model if a new unit runs it."""

    configs: tuple[SAEConfig, ...]
    saes: list[SAEFile]
    fragments: Fragments | None  # None: no unit runs the model, so no tokenization is needed
    growth: Growth | None
    model_info: ModelInfo | None
    n_sentences: int


def plan_extension(options: BuildOptions, store: Store) -> Extension:
    """Check an extension of `store` by the options' config file and input, and say what it adds and what its units
    need; nothing is written here."""
    attrs = store.attrs
    where = f"{option('extend', True)} {store.path}"
    record = read_record(store.path)
    stored = _stored_configs(store, len(attrs["configs"]))
    _refuse_other_options(options, attrs, where)
    assert options.config_file is not None  # with_defaults: the bundled catalogue where none is given
    config_file = load_config_file(options.config_file)
    sae_repo = options.sae_repo or config_file.sae_repo
    described, _ = describe_configs(sae_repo, config_file.configs, options.config_file)
    chosen = with_neuronpedia(select_configs(described, options.layers, options.configs), sae_repo)
    by_name = {c.name: c for c in stored}
    for config in chosen:
        if config.name in by_name and by_name[config.name].path != config.path:
            raise ResumeMismatch(
                f"{where}: config {config.name} is in the store with SAE path {by_name[config.name].path!r}, the "
                f"config file {options.config_file} gives {config.path!r}; a store holds one SAE per name"
            )
    new_configs = tuple(c for c in chosen if c.name not in by_name)
    data = read_sentences(options.input) if options.input is not None else None
    n_old = int(attrs["n_sentences"])
    old_table = _stored_table(store, n_old)
    if data is not None:
        _refuse_changed_rows(data, old_table, n_old, where)
    new_sentences = data is not None and len(data) > n_old
    done = store.done_matrix()
    if not (new_configs or new_sentences or record):
        if not done.all():
            raise StoreUnfinished(
                f"{where}: nothing to add, and the build is not finished: finish it with {option('resume', True)}"
            )
        return Extension(stored, [], None, None, None, n_old)
    if record is None and not (done.all() and not len(store.pending_residuals())):
        raise StoreUnfinished(
            f"{where}: the store's build is not finished; finish it with {option('resume', True)} first, then extend it"
        )
    configs = (*stored, *new_configs)
    # what the units still to compute read: every config on new sentences, else the new or unfinished configs
    growing_sentences = new_sentences or (record is not None and record["kept_fragments"] < store.n_fragments)
    unfinished = {stored[i].name for i in range(min(len(stored), done.shape[0])) if not done[i].all()}
    needed = configs if growing_sentences else tuple(c for c in configs if c in new_configs or c.name in unfinished)
    stored_sites = set(store.residuals.hooks if store.residuals is not None else ())
    info = fragments = None
    # from the stored residual stream where every SAE to compute reads a stored site, as its entry, else its files, say
    from_store = not growing_sentences and all(c.site_hook in stored_sites for c in needed)
    saes = _locate(sae_repo, attrs, needed, _stored_model(attrs, store), where, config_file) if from_store else []
    if not from_store or any(sae.config.site_hook not in stored_sites for sae in saes):
        info, fragments = _model_and_fragments(options, config_file.model, attrs, data, old_table, n_old, where)
        check_depth(configs, info.num_layers, options.config_file)
        saes = _locate(sae_repo, attrs, needed, info, where, config_file)
    sentence_start(saes, where, attrs.get(PREPEND_BOS, True))
    check_context(
        saes, _token_counts(fragments, old_table), data.row if data is not None else partial(data_row, store.path)
    )
    located = {sae.config.name: sae.config for sae in saes}  # completed from their files (width, architecture)
    configs = (*stored, *(located.get(c.name, c) for c in new_configs))
    growth = None
    if new_configs or new_sentences:
        growth = _growth(store, record, attrs, configs, data, fragments, old_table, where)
    n_sentences = growth.attrs["n_sentences"] if growth is not None else n_old
    return Extension(configs, saes, fragments, growth, info, n_sentences)


def _growth(store, record, attrs, configs, data, fragments, old_table, where) -> Growth:
    """The growth to apply, refused if another extension is half done."""
    new_attrs = {
        **attrs,
        "saezarr_version": __version__,
        "configs": [c.name for c in configs],
        "n_sentences": len(data) if data is not None else attrs["n_sentences"],
        WIDTHS: [int(c.width) for c in configs],
    }
    if data is not None:
        new_attrs.update(input_file=data.name, input_sha256=data.sha256)
    if fragments is not None:
        new_attrs["tokens_sha256"] = fragments.tokens_sha256()
    table = fragments.table if fragments is not None else old_table
    kept_fragments = record["kept_fragments"] if record else len(old_table)
    kept_configs = record["kept_configs"] if record else len(attrs["configs"])
    growth = Growth(table, configs, new_attrs, kept_fragments, kept_configs)
    if record is not None and record["target"] != growth.record()["target"]:
        raise ResumeMismatch(
            f"{where}: an extension to other inputs is in progress (to {len(record['target']['configs'])} configs, "
            f"{record['target']['n_sentences']} sentences); rerun that same {option('extend', True)} command to "
            "finish it first"
        )
    return growth


def _refuse_other_options(options: BuildOptions, attrs: dict, where: str) -> None:
    """Refuse a dtype or fragment granularity other than the store's."""
    for name, given, kept in (
        ("dtype", options.dtype, attrs.get("model_dtype")),
        ("fragments", options.fragments, attrs.get("fragments")),
    ):
        if given is not None and given != kept:
            raise ResumeMismatch(
                f"{where}: the store was built with {option(name, kept)}, not {given}; a store keeps one"
            )
    if options.residuals is not None:
        raise ResumeMismatch(
            f"{where}: {option('residuals')} is fixed when a store is created; an extension keeps the store's own, so "
            "leave it out"
        )


def _stored_configs(store: Store, n_configs: int) -> tuple[SAEConfig, ...]:
    """The store's configs as it records them (the first n of its config coordinates: a half-grown store may list
    more)."""
    names, layers, l0s = store.coordinate("config"), store.coordinate("layer"), store.coordinate("average_l0")
    paths = store.coordinate("sae_path")
    optional = {name: store.coordinate(name) if store.has_coordinate(name) else None for name in _OPTIONAL}
    return tuple(
        SAEConfig(
            layer=int(layers[i]),
            average_l0=None if l0s[i] == MISSING_L0 else int(l0s[i]),
            path=str(paths[i]),
            neuronpedia=_optional(optional["neuronpedia_source"], i),
            width=int(store.widths[i]),
            given_name=str(names[i]),
            architecture=_optional(optional["architecture"], i),
            hook=_optional(optional["hook"], i) or resid_post(int(layers[i])),  # stores without it: resid_post alone
        )
        for i in range(n_configs)
    )


_OPTIONAL = ("neuronpedia_source", "architecture", "hook")  # coordinates that stores of older versions lack


def _optional(values: np.ndarray | None, i: int) -> str | None:
    return (str(values[i]) or None) if values is not None else None


def _stored_table(store: Store, n_sentences: int) -> pd.DataFrame:
    """The store's fragment table of its first n sentences (those its attributes count: a half-grown store's
    coordinates may hold more)."""
    sentences = store.coordinate("sentence_index")
    n = int(np.searchsorted(sentences, n_sentences))
    table = pd.DataFrame({field: store.coordinate(field)[:n] for field in FRAGMENT_FIELDS})
    for field in ("fragment_text", "original_sentence"):
        table[field] = table[field].astype(str).astype(object)
    return table


def _refuse_changed_rows(data: LabeledSentences, table: pd.DataFrame, n_old: int, where: str) -> None:
    """Refuse an input whose first rows are not exactly the store's sentences and labels, in order."""
    _, first = np.unique(table["sentence_index"].to_numpy(), return_index=True)
    sentences = table["original_sentence"].to_numpy()[first]
    labels = table["concept_strength_label"].to_numpy()[first]
    for row in range(n_old):
        if row >= len(data):
            raise ResumeMismatch(
                f"{where}: {data.where} has {len(data)} data rows, the store {n_old}: rows were removed; an extension only "
                "adds rows after the store's"
            )
        if data.sentences[row] != sentences[row] or int(data.labels[row]) != int(labels[row]):
            raise ResumeMismatch(
                f"{where}: {data.row(row)} differs from the store's sentence {row + 1} (changed, reordered "
                "or removed); an extension keeps the store's rows as they are, in order, and adds rows after them"
            )


def _model_and_fragments(
    options: BuildOptions,
    model: str,
    attrs: dict,
    data: LabeledSentences | None,
    old_table: pd.DataFrame,
    n_old: int,
    where: str,
) -> tuple[ModelInfo, Fragments]:
    """The model (the store's own, checked) and the fragments of the whole input, whose first part must be the
    store's."""
    info = resolve_model(options.model or model)
    if (info.source.name, info.source.revision) != (attrs["model"], attrs["model_revision"]):
        raise ResumeMismatch(
            f"{where}: the store was built with model {attrs['model']} @ {attrs['model_revision']}, not "
            f"{info.source.name} @ {info.source.revision}; a store keeps one model"
        )
    check_weights(info)
    tokenizer = load_tokenizer(info)
    if data is None:
        sentences = old_table.groupby("sentence_index", sort=True)
        data = LabeledSentences(
            path=None,  # no input: the store's own sentences
            sentences=[group["original_sentence"].iloc[0] for _, group in sentences],
            labels=np.array([group["concept_strength_label"].iloc[0] for _, group in sentences]),
            sha256=attrs["input_sha256"],
        )
    fragments = make_fragments(data, tokenizer, attrs["fragments"], info.max_tokens, attrs.get(PREPEND_BOS, True))
    old = Fragments(fragments.table.iloc[: len(old_table)], fragments.token_ids[:n_old])
    if len(old_table) > len(fragments) or old.tokens_sha256() != attrs.get("tokens_sha256"):
        raise ResumeMismatch(
            f"{where}: the store's sentences tokenize differently now (another tokenizer?); a store keeps one "
            "tokenization, so build a new store"
        )
    return info, fragments


def sentence_start(saes: Sequence[SAEFile], where: object, stored: bool | None = None) -> bool:
    """Whether BOS (else EOS) precedes every sentence: as the SAEs were trained (SAELens' prepend_bos); a store
    holds one tokenization, so SAEs that disagree (with each other, or with the store's `stored`) are refused in
    one line naming one of each."""
    without = [sae.config.name for sae in saes if not sae.layout.prepend_bos]
    with_bos = [sae.config.name for sae in saes if sae.layout.prepend_bos]
    if without and with_bos:
        raise ConfigError(
            f"{where}: config {without[0]} was trained with nothing before a sentence (prepend_bos false) and config "
            f"{with_bos[0]} with BOS first; a store holds one tokenization: build them into two stores"
        )
    if stored is not None and (without if stored else with_bos):
        name = (without if stored else with_bos)[0]
        raise ConfigError(
            f"{where}: config {name} was trained {'with nothing' if stored else 'with BOS'} before a sentence, but the "
            f"store's sentences have {'BOS' if stored else 'nothing'} first; a store holds one tokenization"
        )
    return not without


def _stored_model(attrs: dict, store: Store) -> ModelInfo:
    """The store's model as its attributes say it, where no new unit runs it (its residuals are in the store): its
    norm is not seen, so an SAE trained on centred residuals is refused."""
    local = attrs["model_revision"] == "local"
    source = Source(attrs["model"], attrs["model_revision"], Path(attrs["model"]) if local else None)
    arrays = kept_residuals(store)
    heads = next((site.width for site in arrays.sites if site.kind == HEADS_KIND), None)  # attn.hook_z's, if kept
    return ModelInfo(
        source, num_layers=0, hidden_size=arrays.hidden, max_tokens=None, rms_norm=None, attention_width=heads
    )


def _token_counts(fragments: Fragments | None, old_table: pd.DataFrame) -> list[int]:
    """Each sentence's token count (BOS included): from the fragments, else from the store's own table."""
    if fragments is not None:
        return [len(ids) for ids in fragments.token_ids]
    last = old_table.groupby("sentence_index", sort=True)["token_position"].max()
    return [int(position) + 1 for position in last]


def _locate(repo: str, attrs: dict, configs, model: ModelInfo, where: str, release: ConfigFile) -> list[SAEFile]:
    """The SAE files of the configs whose units are still to compute, from the store's SAE repository (checked)."""
    if not configs:
        return []
    source = resolve_sae_repo(repo, configs[0])
    if (source.name, source.revision) != (attrs["sae_repo"], attrs["sae_revision"]):
        raise ResumeMismatch(
            f"{where}: the store's SAEs come from {attrs['sae_repo']} @ {attrs['sae_revision']}, not "
            f"{source.name} @ {source.revision}; a store keeps one SAE repository"
        )
    return [locate_sae(source, config, model, where, release) for config in configs]
