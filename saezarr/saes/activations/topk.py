"""TopK: each row's k largest pre-activations, ReLU'd (ties at the k-th value all kept)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from saezarr.saes.activations import Activation, Bounds, register_activation
from saezarr.saes.activations.relu import relu

if TYPE_CHECKING:
    from torch import Tensor


def topk(pre: Tensor, bounds: Bounds) -> Tensor:
    """`pre` where it is at least its row's k-th largest and positive, else +0.0, in place."""
    assert bounds.kth is not None  # uses_k: the encoder passes each row's k-th largest
    pre.masked_fill_(pre < bounds.kth, 0.0)
    return relu(pre, bounds)


ACTIVATION = register_activation(Activation("topk", topk, uses_k=True))
