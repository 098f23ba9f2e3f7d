"""JumpReLU: a pre-activation is kept where it exceeds its feature's threshold and 0 (SAELens' and Gemma Scope's
`relu(pre) * (pre > threshold)`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saezarr.saes.activations import Activation, Bounds, register_activation
from saezarr.saes.activations.relu import relu

if TYPE_CHECKING:
    from torch import Tensor


def jumprelu(pre: Tensor, bounds: Bounds) -> Tensor:
    """`pre` where `pre > threshold` and `pre > 0`, else +0.0, in place."""
    assert bounds.threshold is not None  # uses_threshold: the encoder passes the tile's thresholds
    return relu(pre.masked_fill_(pre <= bounds.threshold, 0.0), bounds)


ACTIVATION = register_activation(Activation("jumprelu", jumprelu, uses_threshold=True))
