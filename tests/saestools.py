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


def describe(folder: Path, path: str | None = None, **config: object) -> SAEDescription:
    """The description the formats give of an SAE folder: `folder` / `path` of the repository `folder`, else the
    folder in its parent, read as the config entry {path, **config}."""
    root, path = (folder, path) if path is not None else (folder.parent, folder.name)
    source = Source(str(root), "local", root)
    return read_description(source, SAEConfig(None, None, path, **config))  # type: ignore[arg-type]


def encoder(layout: SAEDescription, budget: int | None = None) -> Encoder:
    """The CPU encoder of a described SAE, its shape read from its W_enc."""
    shape = read_header(layout.weights)[layout.W_enc].shape
    d_in, width = shape[::-1] if layout.W_enc_transposed else shape
    config = SAEConfig(layout.layer or 0, None, "sae", given_name="sae", hook=layout.site.hook if layout.site else None)
    return Encoder(SAEFile(config, layout, d_in, width), "cpu", budget)


def encode(
    folder: Path, x: np.ndarray | torch.Tensor, path: str | None = None, budget: int | None = None, **config: object
) -> np.ndarray:
    """saezarr's latents of x for the SAE in `folder` (/ `path`)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    return encoder(describe(folder, path, **config), budget).encode(x).numpy()


def offline_saelens(monkeypatch, hub: Path) -> None:
    """SAELens' pretrained loaders reading `hub`/{repo_id}/... instead of the Hugging Face hub."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    from saezarr.saes.weights import read_header

    def hf_hub_download(repo_id: str, filename: str, subfolder: str | None = None, **_: object) -> str:
        path = hub / repo_id / (subfolder or "") / filename
        if not path.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(str(path))
        return str(path)

    def shapes(repo_id: str, filename: str) -> dict[str, list[int]]:
        return {key: list(tensor.shape) for key, tensor in read_header(hub / repo_id / filename).items()}

    monkeypatch.setattr(loaders, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)


def saelens_sae(cfg_dict: dict, state_dict: dict):
    """The SAE SAELens builds from a loader's config and weights, as SAE.from_pretrained does (without folding a
    norm scaling factor)."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    cfg_dict = handle_config_defaulting(cfg_dict)
    sae_cfg = SAE.get_sae_config_class_for_architecture(cfg_dict["architecture"]).from_dict(cfg_dict)
    sae = SAE.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg)
    sae.process_state_dict_for_loading(state_dict)
    sae.load_state_dict(state_dict, assign=True)
    return sae.to(dtype=torch.float32)


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
