"""Reading one SAE folder as saezarr does (its format's description, then the encoder) without a model or a build,
and comparing latents with a reference's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from saezarr.hub import Source
from saezarr.inputs.configs import SAEConfig
from saezarr.saes.description import SAEDescription
from saezarr.saes.encoder import Encoder
from saezarr.saes.locate import SAEFile, read_description
from saezarr.saes.weights import read_header


def describe(folder: Path, **config: object) -> SAEDescription:
    """The description the formats give of an SAE folder, read as the config entry {path: its name, **config}."""
    source = Source(str(folder.parent), "local", folder.parent)
    return read_description(source, SAEConfig(None, None, folder.name, **config))  # type: ignore[arg-type]


def encoder(layout: SAEDescription, budget: int | None = None) -> Encoder:
    """The CPU encoder of a described SAE, its shape read from its W_enc."""
    shape = read_header(layout.weights)[layout.W_enc].shape
    d_in, width = shape[::-1] if layout.W_enc_transposed else shape
    config = SAEConfig(layout.layer or 0, None, "sae", given_name="sae", hook=layout.site.hook if layout.site else None)
    return Encoder(SAEFile(config, layout, d_in, width), "cpu", budget)


def encode(folder: Path, x: np.ndarray | torch.Tensor, budget: int | None = None, **config: object) -> np.ndarray:
    """saezarr's latents of x for the SAE in `folder`."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return encoder(describe(folder, **config), budget).encode(x).numpy()


def centred(layout: SAEDescription) -> SAEDescription:
    """The description with its input centred (as locate_sae leaves it on a LayerNorm model)."""
    return dataclasses.replace(layout, centred=True)


def assert_latents(got: np.ndarray, want: np.ndarray | torch.Tensor, atol: float = 1e-6) -> None:
    """Equal to float32 noise, the same features active, and every zero +0.0."""
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    np.testing.assert_array_equal(got != 0, want != 0)
    assert not np.signbit(got[got == 0]).any()
    assert (got > 0).any()
