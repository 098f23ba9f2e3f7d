"""Finding an SAE's files (hub repo or folder), reading its layout and checking its shapes against the model."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr.errors import ConfigError, InputError, SAEFormatError, SaezarrError, SaezarrNote, option
from saezarr.hub import Source, download, resolve
from saezarr.inputs.configs import ConfigFile, SAEConfig, refuse_repeats
from saezarr.models.names import names_model
from saezarr.saes.activations import ACTIVATIONS, known_activations
from saezarr.saes.description import SAEDescription, check_model_kwargs
from saezarr.saes.formats import by_priority, claiming, formats_for
from saezarr.saes.weights import WeightsUnreadable, read_header
from saezarr.sites import HEADS_KIND, Site, check_read, gemma_scope_1_site, resid_post, split_hook

if TYPE_CHECKING:
    from saezarr.models.language_model import ModelInfo

OPTION = "sae_repo"  # the option that names the SAE repository
# the sites TransformerLens' center_writing_weights centres (on a LayerNorm model): what is written to the residual
# stream, and the stream itself; not attn.hook_z nor a norm's output
CENTRED_KINDS = frozenset(
    {"hook_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"}
)


@dataclass(frozen=True)
class SAEFile:
    """One located SAE: its (completed) config, its layout and weights file, and its encoder's shape (`d_model`:
    its input's width, the model's hidden size but for attn.hook_z)."""

    config: SAEConfig
    layout: SAEDescription
    d_model: int
    width: int

    @property
    def path(self) -> Path:
        """The weights file."""
        return self.layout.weights

    @property
    def hook(self) -> str:
        """The site the SAE reads; where nothing says it, the residual stream after its layer (with a note)."""
        return self.config.site_hook

    def resolved(self) -> SAEFile:
        """The same SAE with its weights file as an absolute path, links kept: a file in the hub's cache is a link
        whose target's name (a hash) no longer says the file's format."""
        weights = Path(os.path.abspath(self.layout.weights))
        return dataclasses.replace(self, layout=dataclasses.replace(self.layout, weights=weights))

    @property
    def encoder_bytes(self) -> int:
        """Memory the encoder's arrays take as float32."""
        vectors = len(self.layout.keys) - 1  # b_enc, and threshold and b_dec where the SAE has them
        return 4 * (self.d_model * self.width + vectors * max(self.width, self.d_model))


def in_repo(path: str, filename: str) -> str:
    """A file of the SAE's folder `path` as a path in its repository: `filename` may be `.` (the SAE is the file
    `path`) or `../name` (a file beside it); refused if it leaves the repository."""
    joined = posixpath.normpath(posixpath.join(path, filename))
    if joined == ".." or joined.startswith("../") or posixpath.isabs(joined):
        raise SAEFormatError(f"{filename} of the SAE at {path}: outside its repository")
    return joined


def _markers(path: str) -> list[str]:
    """The files that would say each format of the folder, in the order they are tried (a marker that names no file
    of the repository for this path, e.g. the SAE's own file where the path is ".", is left out)."""
    joined = (posixpath.normpath(posixpath.join(path, found.marker)) for found in formats_for(path))
    return [marker for marker in joined if marker != "." and not marker.startswith(("../", "/")) and marker != ".."]


def resolve_sae_repo(name: str, first: SAEConfig, revision: str | None = None) -> Source:
    """Find the SAE repository (hub id or folder), probing the first config's folder."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return resolve(name, first.path, OPTION, revision)
    first_error: SaezarrError | None = None
    for marker in _markers(first.path):
        try:
            return resolve(name, marker, OPTION, revision)
        except SaezarrError as error:
            first_error = first_error or error  # the file the folder's name suggests: the one to name
    assert first_error is not None  # every folder has at least one format's marker to try
    raise first_error


def _fetcher(source: Source, config: SAEConfig, misses: list[SaezarrError]):
    """fetch(filename, required): one file of the SAE's folder on local disk, None if absent and not required
    (a hub file that could not be had is added to `misses`)."""

    def fetch(filename: str, required: bool) -> Path | None:
        relative = in_repo(config.path, filename)
        if source.local_dir is not None:
            path = source.local_dir / relative
            if path.is_file():
                return path
            if required:
                raise SAEFormatError(
                    f"{option(OPTION, source.name)}: config {config.name}: no {path.name} in {path.parent}"
                )
            return None
        subfolder, name = posixpath.split(relative)
        try:
            return download(source.name, name, OPTION, source.revision, subfolder=subfolder or None)
        except SaezarrError as error:
            if required:
                raise
            misses.append(error)
            return None

    return fetch


def read_description(source: Source, config: SAEConfig) -> SAEDescription:
    """The SAE's layout, from the first of its layout's files found in its folder."""
    misses: list[SaezarrError] = []
    fetch = _fetcher(source, config, misses)
    for sae_format in formats_for(config.path):
        layout = sae_format.describe(config, fetch, source.name)
        if layout is not None:
            return layout
    if misses:  # from the hub: say why the file the folder's name suggests could not be had
        raise misses[0]
    looked_for = ", ".join(sae_format.files for sae_format in by_priority())
    raise SAEFormatError(
        f"{option(OPTION, source.name)}: config {config.name}: no SAE in a known layout in {config.path} (looked for "
        f"{looked_for})"
    )


def known_from_path(config: SAEConfig) -> SAEConfig:
    """The config with the layer and average L0 its folder's name gives, where the file does not say them."""
    known = next((claimed.from_path(config.path) for claimed in claiming(config.path)), {})
    filled = {key: value for key, value in known.items() if getattr(config, key) is None and value is not None}
    return dataclasses.replace(config, **filled) if filled else config


def named_site(repo: str, config: SAEConfig) -> Site | None:
    """The site the repository's or the folder's name says, without reading a file (None: the names say nothing)."""
    site = gemma_scope_1_site(repo, config.path, config.layer)
    if site is not None:
        return site
    sites = (claimed.site_from_path(config.path, config.layer) for claimed in claiming(config.path))
    return next((site for site in sites if site is not None), None)


def checked_site(config: SAEConfig, site: Site | None, where: object) -> Site | None:
    """The SAE's site as its source (else its config entry) says it, refused unless saezarr reads it; None if neither
    says it."""
    if site is None and config.hook is not None:
        site = Site(config.hook, "the config file's hook")
    return check_read(site, config.hook, config.name, str(where)) if site is not None else None


def complete(config: SAEConfig, layout: SAEDescription, where: object) -> SAEConfig:
    """The config with what its layout says (site, layer, average L0, name); a layer that contradicts it, or a site
    saezarr does not read, is refused."""
    site = checked_site(config, layout.site, where)
    known_layer = layout.layer if layout.layer is not None else (site.layer if site is not None else None)
    if config.layer is not None and known_layer is not None and config.layer != known_layer:
        raise ConfigError(
            f"{where}: config {config.name}: 'layer' is {config.layer} but the SAE reads layer {known_layer}"
        )
    layer = config.layer if config.layer is not None else known_layer
    if layer is None:
        raise ConfigError(f"{where}: config {config.name}: give its 'layer' (its layout does not say it)")
    return dataclasses.replace(
        config,
        layer=layer,
        average_l0=config.average_l0 if config.average_l0 is not None else layout.average_l0,
        given_name=config.given_name or layout.name,
        architecture=layout.architecture,
        hook=site.hook if site is not None else None,
    )


def describe_configs(
    sae_repo: str, configs: Sequence[SAEConfig], where: object
) -> tuple[tuple[SAEConfig, ...], Source | None]:
    """Every config with its site, layer and name known: from its repository's and folder's names, else from its
    layout's files; a site saezarr does not read is refused here, before any model or weights file is fetched.

    The SAE repository is resolved only when a config's files must be read; returns the configs and the source if
    it was resolved."""
    source = None
    described = []
    for config in map(known_from_path, configs):
        site = checked_site(config, named_site(sae_repo, config), where)
        if site is not None and config.layer is None:
            config = dataclasses.replace(config, layer=site.layer)
        if config.layer is None or config.path == ".":
            source = source or resolve_sae_repo(sae_repo, config)
            config = complete(config, read_description(source, config), where)
        described.append(config)
    refuse_repeats(where, described)
    return tuple(described), source


def locate_sae(
    source: Source, config: SAEConfig, model: ModelInfo, where: object = None, release: ConfigFile | None = None
) -> SAEFile:
    """Get one SAE's files, complete its config from its layout, and check its shapes and training against the
    model's; what the config file says of the SAEs' training (`release`) overrides what their files say."""
    layout = with_release(read_description(source, config), release, f"{where or option(OPTION, source.name)}")
    config = complete(config, layout, where or option(OPTION, source.name))
    at = f"{layout.weights}: config {config.name}"
    _check_training(layout, model, at)
    layout = _centring(layout, config, model)
    _check_activation(layout, at)
    hook = config.site_hook
    model.check_site(hook, at)
    d_in, width = _check_shapes(layout, config, _site_width(model, hook, layout), at)
    if config.hook is None:
        warnings.warn(
            f"config {config.name}: nothing says which site the SAE reads ({source.name} is not named as a Gemma "
            f"Scope repository); read as {resid_post(config.known_layer)}, the residual stream after layer {config.layer}. "
            "Give the config entry a 'hook' to say it",
            SaezarrNote,
            stacklevel=2,
        )
    config = dataclasses.replace(config, width=width)
    return SAEFile(config=config, layout=layout, d_model=d_in, width=width)


def with_release(layout: SAEDescription, release: ConfigFile | None, where: str) -> SAEDescription:
    """The layout with what the config file says of its SAEs' training (TransformerLens' from_pretrained keywords,
    prepend_bos) in place of what their files say, as SAELens' registry overrides a release's cfgs
    (`gpt2-small-res-jb`'s centring comes from the registry alone); a keyword saezarr does not reproduce is refused."""
    if release is None:
        return layout
    kwargs = release.model_from_pretrained_kwargs
    check_model_kwargs(kwargs, where)
    centred = bool(kwargs.get("center_writing_weights", layout.centred))
    prepend_bos = layout.prepend_bos if release.prepend_bos is None else release.prepend_bos
    return dataclasses.replace(layout, centred=centred, prepend_bos=prepend_bos)


def _centring(layout: SAEDescription, config: SAEConfig, model: ModelInfo) -> SAEDescription:
    """The layout centring its input only where TransformerLens' center_writing_weights changed it: a LayerNorm
    model (RMSNorm models are left as they are) and a site it centres."""
    kind = split_hook(config.hook or resid_post(config.known_layer))[1]
    centred = layout.centred and model.rms_norm is False and kind in CENTRED_KINDS
    return layout if centred == layout.centred else dataclasses.replace(layout, centred=centred)


def _check_training(layout: SAEDescription, model: ModelInfo, at: str) -> None:
    """Refuse an SAE trained on another model, or on activations that TransformerLens processed in a way the model
    as saezarr reads it does not reproduce."""
    if layout.model_name and not names_model(layout.model_name, model.source):
        raise SAEFormatError(
            f"{at}: the SAE was trained on {layout.model_name!r}, but {option('model')} is {model.source.name} (a "
            "folder is matched by its name); use the model it was trained on"
        )
    if layout.centred and model.rms_norm is None:  # RMSNorm: TransformerLens skips it; LayerNorm: centred here
        raise SAEFormatError(
            f"{at}: the SAE was trained on residuals centred by TransformerLens' center_writing_weights, which "
            f"saezarr cannot tell applies to {model.source.name} (a model whose norm is not read here): not implemented"
        )


def _check_activation(layout: SAEDescription, at: str) -> None:
    """Refuse an architecture that names no registered activation function, or an SAE that lacks what its
    activation function reads."""
    if layout.architecture not in ACTIVATIONS:
        raise SAEFormatError(f"{at}: architecture {layout.architecture!r} is not implemented ({known_activations()})")
    activation = ACTIVATIONS[layout.architecture]
    if activation.uses_threshold and layout.threshold is None and layout.threshold_value is None:
        raise SAEFormatError(f"{at}: a {activation.name} SAE needs a threshold array, and its format names none")
    missing = [role for role in activation.reads if role not in dict(layout.vectors)]
    if missing:
        raise SAEFormatError(f"{at}: a {activation.name} SAE needs a {missing[0]} array, and its format names none")
    if activation.uses_k and layout.k is None:
        raise SAEFormatError(f"{at}: a {activation.name} SAE needs a positive integer 'k', got None")


def _site_width(model: ModelInfo, hook: str, layout: SAEDescription) -> tuple[int, str] | None:
    """The width the site gives the SAE, and what to call it in a message; None where it is not known here (one
    head of attn.hook_z, checked when encoding; attn.hook_z of a model whose config is not read)."""
    if layout.head_index is not None or (split_hook(hook)[1] == HEADS_KIND and model.attention_width is None):
        return None
    width = model.width_of(hook)
    return width, ("the model's hidden size" if width == model.hidden_size else f"{hook}'s width")


def _check_shapes(layout: SAEDescription, config: SAEConfig, site: tuple[int, str] | None, at: str) -> tuple[int, int]:
    """The SAE's input width and its width; refuse weights whose shapes disagree with each other, with its settings
    or with the site's width (`site`: that width and its name, None if not known here)."""
    try:
        shapes = {key: tensor.shape for key, tensor in read_header(layout.weights).items()}
    except WeightsUnreadable as exc:
        raise SAEFormatError(f"{at}: not a readable {layout.weights.name} ({exc})") from None
    for role, key in layout.keys.items():
        if key not in shapes:
            raise SAEFormatError(f"{at}: {layout.weights.name} has no {key!r} array (the SAE's {role})")
    w_enc = shapes[layout.W_enc]
    if len(w_enc) != 2:
        raise SAEFormatError(f"{at}: {layout.W_enc} must be 2-D, got shape {w_enc}")
    d_in, width = w_enc[::-1] if layout.W_enc_transposed else w_enc
    if site is not None and layout.d_in is not None and layout.d_in != site[0]:
        raise SAEFormatError(f"{at}: its settings say d_in {layout.d_in} but {site[1]} is {site[0]}")
    if (layout.d_in, layout.d_sae) != (None, None) and (layout.d_in or d_in, layout.d_sae or width) != (d_in, width):
        raise SAEFormatError(
            f"{at}: its settings say {layout.d_in} x {layout.d_sae} but {layout.W_enc} is {d_in} x {width}"
        )
    if site is not None and d_in != site[0]:
        raise SAEFormatError(f"{at}: {layout.W_enc} is {d_in} x {width} but {site[1]} is {site[0]}")
    _check_arrays(layout, shapes, d_in, width, at)
    if config.width is not None and config.width != width:
        raise SAEFormatError(f"{at}: the config says width {config.width} but the SAE has {width} features")
    if layout.k is not None and layout.k > width:
        raise SAEFormatError(f"{at}: k = {layout.k} is more than the SAE's {width} features")
    return d_in, width


def _check_arrays(layout: SAEDescription, shapes: dict[str, tuple[int, ...]], d_in: int, width: int, at: str) -> None:
    """Refuse arrays besides W_enc whose shapes disagree with it (a threshold may be one value for every feature)."""
    expected: dict[str, list[tuple[int, ...]]] = {
        "threshold": [(width,), ()],
        "b_dec": [(d_in,)],
        "W_dec": [(width, d_in)],
    }
    for role, key in layout.keys.items():
        allowed = expected.get(role, [(width,)])  # b_enc and the activation's vectors: one value per feature
        if role != "W_enc" and shapes[key] not in allowed:
            raise SAEFormatError(f"{at}: {key} has shape {shapes[key]}, expected {allowed[0]}")


def check_context(saes: Sequence[SAEFile], token_counts: Sequence[int], row: Callable[[int], str]) -> None:
    """Refuse a sentence longer than the context an SAE was trained on (its cfg's `context_size`): refused, not
    truncated, so that every stored fragment is one the SAE could have seen; `row(i)` names data row i."""
    limited = [(sae.layout.context_size, sae) for sae in saes if sae.layout.context_size is not None]
    if not limited:
        return
    limit, shortest = min(limited, key=itemgetter(0))
    for i, count in enumerate(token_counts):
        if count > limit:
            raise InputError(
                f"{row(i)}: the sentence is {count} tokens long (BOS included), more than the "
                f"{limit}-token context SAE {shortest.config.name} was trained on; shorten or split it"
            )
