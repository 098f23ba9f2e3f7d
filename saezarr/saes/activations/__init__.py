"""The activation functions SAEs apply to their pre-activations, one module each, registered by name in
`ACTIVATIONS` (an SAE's `architecture` names one). Another package adds one through the `saezarr.activations`
entry-point group, naming an `Activation` (or a module that registers its own). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saezarr.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Bounds:
    """What an activation may compare one tile's pre-activations with."""

    threshold: Tensor | None = None  # the tile's features' thresholds [tile] (an SAE with a threshold array)
    kth: Tensor | None = None  # each row's k-th largest pre-activation over every feature [n, 1] (uses_k)
    vectors: Mapping[str, Tensor] = field(default_factory=dict)  # the tile's slice of each array in `reads`


@dataclass(frozen=True)
class Activation:
    """One activation function: `activate(pre, bounds)` turns a tile of pre-activations [n, tile] into latents in
    place and returns it; gated-off entries must be +0.0 (masked_fill, not a product that leaves -0.0)."""

    name: str
    activate: Callable[[Tensor, Bounds], Tensor]
    uses_threshold: bool = False  # reads the SAE's per-feature `threshold` array
    uses_k: bool = False  # reads each row's k-th largest pre-activation, found across every tile first
    reads: tuple[str, ...] = ()  # the per-feature arrays it reads besides the threshold (an SAE's `vectors` roles)
    biased: bool = True  # False: its pre-activations are x @ W_enc without b_enc (it adds its own biases)


ACTIVATIONS: Registry[Activation] = Registry("activations", "activation function", __name__)


def register_activation(activation: Activation) -> Activation:
    """Register an activation function under its own name."""
    return ACTIVATIONS.register(activation.name, activation)


def known_activations() -> str:
    """The registered activation functions' names, as a refusal lists them."""
    return ", ".join(sorted(ACTIVATIONS))
