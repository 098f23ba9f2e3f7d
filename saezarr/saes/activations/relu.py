"""ReLU (SAELens' `standard` SAE)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saezarr.saes.activations import Activation, Bounds, register_activation

if TYPE_CHECKING:
    from torch import Tensor


def relu(pre: Tensor, bounds: Bounds) -> Tensor:
    """`pre` where `pre > 0`, else +0.0, in place."""
    return pre.masked_fill_(pre <= 0, 0.0)


ACTIVATION = register_activation(Activation("relu", relu))
