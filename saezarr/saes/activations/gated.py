"""Gated (SAELens' `gated`, dictionary_learning's GatedAutoEncoder): a feature fires where `x @ W_enc + b_gate > 0`,
with the magnitude `relu(x @ W_enc * exp(r_mag) + b_mag)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saezarr.saes.activations import Activation, Bounds, register_activation
from saezarr.saes.activations.relu import relu

if TYPE_CHECKING:
    from torch import Tensor


def gated(pre: Tensor, bounds: Bounds) -> Tensor:
    """The magnitudes where the gate is open, else +0.0, in place; `pre` is x @ W_enc without a bias."""
    closed = (pre + bounds.vectors["b_gate"]) <= 0
    pre.mul_(bounds.vectors["r_mag"].exp()).add_(bounds.vectors["b_mag"])
    return relu(pre.masked_fill_(closed, 0.0), bounds)


ACTIVATION = register_activation(Activation("gated", gated, reads=("b_gate", "r_mag", "b_mag"), biased=False))
