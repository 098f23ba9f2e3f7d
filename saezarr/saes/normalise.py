"""The input normalisations an SAE's `normalise` names, as SAELens applies them before b_dec is subtracted
(`SAE._setup_activation_normalization`): each maps activations [n, d_in] to new ones, row by row."""

from __future__ import annotations

from collections.abc import Callable

import torch

LAYER_NORM_EPS = 1e-5  # SAELens' run_time_activation_ln_in: outside the square root, added to the std


def layer_norm(x: torch.Tensor, d_in: int) -> torch.Tensor:
    """Each row less its mean, over its Bessel-corrected standard deviation plus 1e-5."""
    x = x - x.mean(dim=-1, keepdim=True)
    return x / (x.std(dim=-1, keepdim=True) + LAYER_NORM_EPS)


def constant_norm_rescale(x: torch.Tensor, d_in: int) -> torch.Tensor:
    """Each row scaled to norm sqrt(d_in) (no epsilon)."""
    return x * ((d_in**0.5) / x.norm(dim=-1, keepdim=True))


def unchanged(x: torch.Tensor, d_in: int) -> torch.Tensor:
    """The activations as they are."""
    return x


NORMALISATIONS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "none": unchanged,
    "layer_norm": layer_norm,
    "constant_norm_rescale": constant_norm_rescale,
}
