"""JumpReLU whose thresholds are stored as their logarithms (Llama Scope R1 Distill's `log_jumprelu_threshold`): a
pre-activation is kept where it exceeds exp(log_threshold) and 0, as SAELens' JumpReLU does with the thresholds its
loader exponentiates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saezarr.saes.activations import Activation, Bounds, register_activation
from saezarr.saes.activations.relu import relu

if TYPE_CHECKING:
    from torch import Tensor


def log_jumprelu(pre: Tensor, bounds: Bounds) -> Tensor:
    """`pre` where `pre > exp(log_threshold)` and `pre > 0`, else +0.0, in place."""
    return relu(pre.masked_fill_(pre <= bounds.vectors["log_threshold"].exp(), 0.0), bounds)


ACTIVATION = register_activation(Activation("log_jumprelu", log_jumprelu, reads=("log_threshold",)))
