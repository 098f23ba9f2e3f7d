"""What an SAE format tells of one SAE: its weights file, the arrays the encoder reads and how it encodes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from saezarr.errors import SAEFormatError
from saezarr.sites import Site

# TransformerLens' from_pretrained kwargs that change none of the sites saezarr reads; center_writing_weights is
# checked against the model (a no-op without LayerNorm), any other kwarg is refused
NEUTRAL_MODEL_KWARGS = frozenset(
    {"fold_ln", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices", "dtype", "torch_dtype"}
    | {"device", "n_devices", "move_to_device", "default_padding_side", "first_n_layers"}
)


def check_model_kwargs(kwargs: Mapping[str, object], where: str) -> None:
    """Refuse TransformerLens from_pretrained keyword arguments that process the model in a way saezarr does not
    reproduce (all but NEUTRAL_MODEL_KWARGS and center_writing_weights)."""
    unknown = sorted(set(kwargs) - NEUTRAL_MODEL_KWARGS - {"center_writing_weights"})
    if unknown:
        raise SAEFormatError(
            f"{where}: model_from_pretrained_kwargs {unknown[0]}={kwargs[unknown[0]]!r}: the model was processed in "
            "a way saezarr does not reproduce; not implemented"
        )


# fetch(filename, required) -> the file of the SAE's folder on local disk, or None if absent and not required
# ("." is the SAE's path itself where the SAE is one file, "../name" a file beside it)
Fetch = Callable[[str, bool], "Path | None"]


@dataclass(frozen=True)
class SAEDescription:
    """One SAE as its layout describes it; `keys` names its arrays W_enc, b_enc, threshold, b_dec and the vectors
    its activation reads (or None), and the other fields how its input is prepared before W_enc: one head's columns
    (`head_index`), centred (`centred`), normalised (`normalise`), scaled (`input_scale`), then less b_dec."""

    layout: str
    weights: Path
    architecture: str  # the name of a registered activation function (saezarr.saes.activations)
    W_enc: str
    b_enc: str | None  # None: no encoder bias (a gated SAE's biases are among its `vectors`)
    threshold: str | None = None
    b_dec: str | None = None  # set only when b_dec is subtracted from the input before encoding
    k: int | None = None
    layer: int | None = None
    name: str | None = None
    average_l0: int | None = None
    d_in: int | None = None  # what the layout's own settings say of the shapes, checked against the weights
    d_sae: int | None = None
    site: Site | None = None  # None: the source does not say (a local folder of another name)
    model_name: str | None = None  # the model it was trained on, as TransformerLens names it
    context_size: int | None = None  # the longest token sequence it was trained on
    centred: bool = False  # trained on TransformerLens' center_writing_weights (mean over the hidden size removed)
    prepend_bos: bool = True  # False: trained on sentences with nothing before them (SAELens' prepend_bos: false)
    W_enc_transposed: bool = False  # stored [d_sae, d_in] (an nn.Linear's weight) rather than [d_in, d_sae]
    threshold_value: float | None = None  # one threshold for every feature, where the SAE stores none
    vectors: tuple[tuple[str, str], ...] = ()  # (role, key): the per-feature arrays its activation reads
    rescale_by: str | None = None  # W_dec [d_sae, d_in]: pre-activations times its rows' norms (SAELens' TopK)
    head_index: int | None = None  # reads one attention head's d_in columns of attn.hook_z
    normalise: str = "none"  # "layer_norm" or "constant_norm_rescale" of the input, as SAELens applies them
    input_scale: float | None = None  # the input times this (a folded norm scaling factor) before b_dec

    @property
    def keys(self) -> dict[str, str]:
        """The arrays the encoder reads, by role."""
        roles = {"W_enc": self.W_enc, "b_enc": self.b_enc, "threshold": self.threshold, "b_dec": self.b_dec}
        roles.update(self.vectors)
        if self.rescale_by is not None:
            roles["W_dec"] = self.rescale_by
        return {role: key for role, key in roles.items() if key is not None}
