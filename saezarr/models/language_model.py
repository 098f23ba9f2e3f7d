"""Loading a decoder-only model (Gemma 2, Gemma 3, ...) and reading its sites with forward hooks where its
architecture's site table places them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

from saezarr.compat import build_base_model, hub_offline, layer_output, load_base_model
from saezarr.errors import InputError, SaezarrError, one_line, option
from saezarr.hub import Source, resolve
from saezarr.inputs.fragments import start_token_id
from saezarr.models.architectures import ARCHITECTURES, PLUGIN_HINT, ModuleSite, Norm
from saezarr.registry import UnknownEntry
from saezarr.sites import HEADS_KIND, split_hook

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
WEIGHT_FILES = ["*.safetensors", "*.safetensors.index.json", "*.json"]


@dataclass(frozen=True)
class ModelInfo:
    """What the build needs to know of a model before loading its weights."""

    source: Source
    num_layers: int
    hidden_size: int
    max_tokens: int | None
    # False: LayerNorm, whose residuals TransformerLens' center_writing_weights changes; None: not known
    rms_norm: bool | None = True
    model_type: str | None = None  # None: not known (a store's model, read back without its config)
    attention_width: int | None = None  # heads × head_dim: the width of attn.hook_z, which may differ from hidden

    def width_of(self, hook: str) -> int:
        """The width of a site's activations: the hidden size, or heads × head_dim for attn.hook_z."""
        if split_hook(hook)[1] == HEADS_KIND and self.attention_width is not None:
            return self.attention_width
        return self.hidden_size

    def check_site(self, hook: str, where: str) -> None:
        """Refuse a site the model's architecture does not have or its site table does not place."""
        if self.model_type is None:
            return
        try:
            ARCHITECTURES[self.model_type].where(hook)
        except UnknownEntry as exc:
            raise InputError(f"{where}: the SAE reads {hook}, but {self.model_type} models: {exc}") from None


def resolve_model(name: str, revision: str | None = None) -> ModelInfo:
    """Find the model (hub id or folder) and read its config."""
    from transformers import AutoConfig

    source = resolve(name, "config.json", "model", revision)
    try:
        config = AutoConfig.from_pretrained(_load_name(source), revision=_load_revision(source))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = " ".join(str(exc).split())
        raise InputError(
            f"{option('model', name)}: cannot read its config.json as a model config ({type(exc).__name__}: {text[:200]})"
        ) from None
    _check_sites(config, name)
    model_type = config.model_type
    config = getattr(config, "text_config", config)
    return ModelInfo(
        source=source,
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        max_tokens=int(getattr(config, "max_position_embeddings", 0) or 0) or None,
        rms_norm=hasattr(config, "rms_norm_eps"),
        model_type=model_type,
        attention_width=_attention_width(config),
    )


def _attention_width(config) -> int:
    """Heads × head_dim: the width of the attention output projection's input (hook_z)."""
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return heads * int(head_dim)


def _check_sites(config, name: str) -> None:
    """Refuse, before any weight is fetched, a model whose sites saezarr cannot place: its model type needs a site
    table, whose modules its skeleton must have (built on the meta device, which allocates nothing)."""
    try:
        table = ARCHITECTURES[config.model_type]
    except UnknownEntry as exc:
        raise InputError(
            f"{option('model', name)}: {exc}: saezarr does not know where its sites are; {PLUGIN_HINT}"
        ) from None
    text = getattr(config, "text_config", config)  # a multimodal model's decoder
    misfit = table.misfit(text)
    if misfit is not None:
        raise InputError(f"{option('model', name)}: {misfit}: not implemented, refused rather than read wrong sites")
    skeleton = _skeleton(config, name)
    last = int(text.num_hidden_layers) - 1
    for kind, place in table.sites.items():
        for layer in sorted({0, last}):
            path = place.at(layer).path
            try:
                skeleton.get_submodule(path)
            except AttributeError:
                raise InputError(
                    f"{option('model', name)}: its site table places {kind} of layer {layer} at {path}, which "
                    f"{type(skeleton).__name__} does not have"
                ) from None


def _skeleton(config, name: str) -> torch.nn.Module:
    """The base model of a config, built on the meta device."""
    try:
        with torch.device("meta"):
            return build_base_model(config)
    except Exception as exc:  # transformers raises many types for an architecture it cannot build
        raise InputError(
            f"{option('model', name)}: transformers cannot build it ({type(exc).__name__}: {one_line(exc)})"
        ) from None


def check_weights(info: ModelInfo) -> None:
    """Fetch (from the hub) and check the model's safetensors files, before anything is written."""
    from safetensors import safe_open

    folder = info.source.local_dir or _fetch_weights(info.source)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InputError(f"{option('model', info.source.name)}: no *.safetensors weights in {folder}")
    for path in files:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # safetensors raises its own error types
            raise InputError(
                f"{option('model', info.source.name)}: {path.name} is damaged ({exc}); download it again"
            ) from None


def _fetch_weights(source: Source) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                source.name, revision=source.revision, allow_patterns=WEIGHT_FILES, local_files_only=hub_offline()
            )
        )
    except Exception as exc:  # the hub raises a zoo of types: offline, missing, gated, network
        raise SaezarrError(
            f"{option('model', source.name)}: could not get its weights ({type(exc).__name__}: {exc})"
        ) from None


def load_tokenizer(info: ModelInfo) -> PreTrainedTokenizerFast:
    """Load the model's fast tokenizer (offsets are needed for exact fragment texts)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(_load_name(info.source), revision=_load_revision(info.source))
    except Exception as exc:
        raise InputError(
            f"{option('model', info.source.name)}: could not load its tokenizer ({type(exc).__name__}: {exc})"
        ) from None
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"{option('model', info.source.name)}: a fast tokenizer (tokenizer.json) is required for offsets"
        )
    if start_token_id(tokenizer) is None:
        raise InputError(
            f"{option('model', info.source.name)}: its tokenizer has neither a BOS nor an EOS token; saezarr puts one "
            "first (as TransformerLens does: BOS, else EOS) and never encodes it, so each sentence's first real token "
            "would be lost: not implemented"
        )
    return cast("PreTrainedTokenizerFast", tokenizer)  # is_fast: a tokenizers-backed tokenizer


def load_model(info: ModelInfo, device: str, dtype: str) -> PreTrainedModel:
    """Load the base decoder (no LM head) with eager attention, which keeps Gemma 2's soft-capping.

    A multimodal checkpoint (Gemma 3 4B-27B) loads as its base model, whose language model is read by hooks.

    Each weight goes from its safetensors file straight to the device in `dtype`: no whole copy in host memory.
    """
    try:
        with _no_transformers_bars():
            model = load_base_model(
                _load_name(info.source),
                DTYPES[dtype],
                revision=_load_revision(info.source),
                attn_implementation="eager",
                device_map={"": torch.device(device)},
            )
        return model.eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # RuntimeError includes out of memory
        text = " ".join(str(exc).split())[:300]
        raise SaezarrError(
            f"{option('model', info.source.name)}: could not load it ({type(exc).__name__}: {text})", exit_code=1
        ) from None


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """transformers' own "Loading weights" bar off while saezarr loads a model (its own line says what it loads), in
    a notebook as on the command line; the setting as it was afterwards."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class _StopForward(Exception):
    """Raised by the hook that reads the last site still unread: nothing after it is needed."""


# a forward's token ids, and the rows and positions of the tokens it selects
Batch = tuple[Sequence[np.ndarray], np.ndarray, np.ndarray]


class SiteReader:
    """Reads sites (hook names in TransformerLens' spelling) at chosen token positions, each by a hook on the module
    that the model's site table places it at; the forward stops once every site is read.

    Each site's selections are copied into a buffer of the reader's that its next read overwrites: fresh tensors for
    every chunk would grow and shrink the heap, and the next forward fault the memory in again."""

    def __init__(self, model: PreTrainedModel, hooks: Iterable[str]):
        self.model = model
        self.hooks = sorted(set(hooks))
        self._index: torch.Tensor | None = None  # the selected tokens' rows in a hidden state's [batch × width, ...]
        self._width = 0  # the padded batch's width
        self._rows = slice(0, 0)  # the forward's rows in the buffers
        self._total = 0  # the rows of the read, all its batches
        self._read: set[str] = set()  # the hooks the forward has read
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._buffers: dict[str, torch.Tensor] = {}  # per hook, reused from read to read (kept across `with`s)

    def __enter__(self) -> SiteReader:
        table = ARCHITECTURES[self.model.config.model_type]
        places = {hook: table.where(hook) for hook in self.hooks}  # every site placed before any hook is added
        modules = {hook: self.model.get_submodule(place.path) for hook, place in places.items()}
        for hook, place in places.items():
            self._handles.append(self._attach(hook, place, modules[hook]))
        return self

    def _attach(self, hook: str, place: ModuleSite, module: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
        if place.value == "output":
            return module.register_forward_hook(self._output_hook(hook))
        # a pre-hook sees exactly what the module reads, whatever the model scales or adds before it
        norm = place.norm if place.value == "normalized" else None
        return module.register_forward_pre_hook(self._input_hook(hook, norm), with_kwargs=True)

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _input_hook(self, hook: str, norm: Norm | None):
        def read_input(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if norm is None:
                self._select(hook, hidden)
            else:
                normalize_(self._select(hook, hidden, torch.float32), norm, norm_eps(module))
            self._done(hook)

        return read_input

    def _output_hook(self, hook: str):
        def read_output(module, args, output):
            self._select(hook, layer_output(output))
            self._done(hook)

        return read_output

    def _select(self, hook: str, hidden: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The selected tokens of hidden [batch, width, ...], copied (as `dtype`) into the forward's rows of the
        hook's buffer."""
        assert self._index is not None and hidden.shape[1] == self._width  # set by _forward
        out = self._buffer(hook, hidden.shape[2:], dtype or hidden.dtype, hidden.device)[self._rows]
        if out.dtype == hidden.dtype:
            return torch.index_select(hidden.flatten(0, 1), 0, self._index, out=out)
        return out.copy_(hidden.flatten(0, 1)[self._index])

    def _buffer(self, hook: str, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The hook's buffer, made anew if it has fewer rows than the read or is of another kind."""
        buffer = self._buffers.get(hook)
        if (
            buffer is None
            or len(buffer) < self._total
            or (buffer.shape[1:], buffer.dtype, buffer.device) != (shape, dtype, device)
        ):
            self._buffers.pop(hook, None)  # freed first, so that its memory can serve the new one
            with torch.inference_mode(False):  # callers write into what read returns, outside inference mode
                buffer = self._buffers[hook] = torch.empty((self._total, *shape), dtype=dtype, device=device)
        return buffer

    def _done(self, hook: str) -> None:
        self._read.add(hook)
        if len(self._read) == len(self.hooks):
            raise _StopForward

    @torch.inference_mode()
    def read(self, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
        """Run each (token ids, rows, positions) batch, its sentences right-padded, and return {hook: activations at
        (rows, positions), batch after batch}. The tensors are views of the reader's buffers (ordinary tensors, not
        inference tensors): valid until the reader's next read, which overwrites them; copy what must outlive it."""
        self._total = sum(len(rows) for _, rows, _ in batches)
        self._rows = slice(0, 0)
        for token_ids, rows, positions in batches:
            self._rows = slice(self._rows.stop, self._rows.stop + len(rows))
            self._forward(token_ids, rows, positions)
        return {hook: self._buffers[hook][: self._total] for hook in self.hooks} if batches else {}

    def _forward(self, token_ids: Sequence[np.ndarray], rows: np.ndarray, positions: np.ndarray) -> None:
        device = next(self.model.parameters()).device
        input_ids, mask = pad_batch(token_ids)
        self._width = input_ids.shape[1]
        index = np.asarray(rows, dtype=np.int64) * self._width + np.asarray(positions, dtype=np.int64)
        self._index = torch.as_tensor(index, device=device)
        self._read = set()
        try:
            self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except _StopForward:
            pass
        missing = [hook for hook in self.hooks if hook not in self._read]
        if missing:
            raise SaezarrError(f"{type(self.model).__name__}: the forward never reached {', '.join(missing)}")


def normalize_(x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """x (float32) normalised in place, as a LayerNorm (centred, then scaled) or an RMSNorm (scaled) normalises it
    before its gain; eps inside the square root, as TransformerLens' hook_normalized."""
    if norm == "layer":
        x.sub_(x.mean(dim=-1, keepdim=True))
    return x.div_((x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt())


def norm_eps(module: torch.nn.Module) -> float:
    """A LayerNorm's or RMSNorm's epsilon (`eps`, or Llama's `variance_epsilon`)."""
    eps = getattr(module, "eps", getattr(module, "variance_epsilon", None))
    if eps is None:
        raise SaezarrError(f"{type(module).__name__}: a norm module with no eps or variance_epsilon")
    return float(eps)


def pad_batch(token_ids: Sequence[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences; with a causal model, right padding leaves real tokens untouched."""
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def _load_name(source: Source) -> str:
    return str(source.local_dir) if source.is_local else source.name


def _load_revision(source: Source) -> str | None:
    return None if source.is_local else source.revision
