"""Gemma Scope JumpReLU SAEs: locating `params.npz`, reading shapes, loading and encoding."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saezarr.configs import SAEConfig
from saezarr.errors import SaezarrError
from saezarr.extract.hub import Source, download, resolve
from saezarr.npyzip import load_member, read_members

PARAMS_FILE = "params.npz"
ENCODER_KEYS = ("W_enc", "b_enc", "threshold")


@dataclass(frozen=True)
class SAEFile:
    """One SAE's `params.npz` on local disk, with its encoder shape read from the file header."""

    config: SAEConfig
    path: Path
    d_model: int
    width: int

    @property
    def encoder_bytes(self) -> int:
        """Memory the encoder weights take as float32."""
        return 4 * (self.d_model * self.width + 2 * self.width)


def resolve_sae_repo(name: str, first: SAEConfig, revision: str | None = None) -> Source:
    """Find the SAE repository (hub id or folder)."""
    return resolve(name, f"{first.path}/{PARAMS_FILE}", "--sae-repo", revision)


def locate_sae(source: Source, config: SAEConfig, d_model: int) -> SAEFile:
    """Get one SAE's params.npz and check its encoder shapes against the model's hidden size."""
    if source.is_local:
        path = source.local_dir / config.path / PARAMS_FILE
        if not path.is_file():
            raise SaezarrError(f"--sae-repo {source.name}: config {config.name}: no {PARAMS_FILE} in {path.parent}")
    else:
        path = download(source.name, PARAMS_FILE, "--sae-repo", source.revision, subfolder=config.path)
    shapes = _npz_shapes(path, config)
    d_in, width = shapes["W_enc"]
    if d_in != d_model:
        raise SaezarrError(
            f"{path}: config {config.name}: W_enc is {d_in} x {width} but the model's hidden size is {d_model}"
        )
    for key in ("b_enc", "threshold"):
        if shapes[key] != (width,):
            raise SaezarrError(f"{path}: config {config.name}: {key} has shape {shapes[key]}, expected ({width},)")
    return SAEFile(config=config, path=path, d_model=d_in, width=width)


def _npz_shapes(path: Path, config: SAEConfig) -> dict[str, tuple[int, ...]]:
    try:
        members = read_members(path)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise SaezarrError(f"{path}: config {config.name}: not a readable {PARAMS_FILE} ({exc})") from None
    for key in ENCODER_KEYS:
        if key not in members:
            raise SaezarrError(f"{path}: config {config.name}: {PARAMS_FILE} has no {key!r} array")
        if not members[key].complete:
            raise SaezarrError(
                f"{path}: config {config.name}: {PARAMS_FILE} is damaged ({key} has {members[key].stored_bytes} "
                f"bytes, its header says {members[key].expected_bytes}); download it again"
            )
    shapes = {key: members[key].shape for key in ENCODER_KEYS}
    if len(shapes["W_enc"]) != 2:
        raise SaezarrError(f"{path}: config {config.name}: W_enc must be 2-D, got shape {shapes['W_enc']}")
    return shapes


class JumpReLUEncoder:
    """The encoder half of a JumpReLU SAE, held on one device in float32."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, threshold: torch.Tensor):
        self.W_enc, self.b_enc, self.threshold = W_enc, b_enc, threshold

    @classmethod
    def load(cls, sae: SAEFile, device: str | torch.device) -> JumpReLUEncoder:
        """Read W_enc, b_enc and threshold (not the decoder) from params.npz onto a device."""
        members = read_members(sae.path)
        # Gemma Scope's params.npz is stored uncompressed: W_enc maps straight from the page cache
        arrays = [np.ascontiguousarray(load_member(sae.path, members[key]), dtype=np.float32) for key in ENCODER_KEYS]
        return cls(*(torch.from_numpy(array).to(device) for array in arrays))

    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """JumpReLU latents of residuals x [n, d_model] in float32, into `out` if given (on any device).

        Gated-off entries are +0.0, not -0.0.
        """
        if out is not None and out.device != self.W_enc.device:
            return out.copy_(self.encode(x))
        pre = torch.addmm(self.b_enc, x.to(torch.float32), self.W_enc, out=out)
        # pre * (pre > threshold) would leave -0.0 for negative pre, whose sign bits halve zstd's ratio
        return pre.masked_fill_(pre <= self.threshold, 0.0)


def plan_passes(saes: Sequence[SAEFile], budget_bytes: int) -> list[list[SAEFile]]:
    """Group SAEs, in layer order, into passes whose encoders fit the memory budget (a layer may span two)."""
    by_layer: dict[int, list[SAEFile]] = {}
    for sae in saes:
        by_layer.setdefault(sae.config.layer, []).append(sae)
    passes: list[list[SAEFile]] = [[]]
    used = 0
    for layer in sorted(by_layer):
        for sae in by_layer[layer]:
            if passes[-1] and used + sae.encoder_bytes > budget_bytes:
                passes.append([])
                used = 0
            passes[-1].append(sae)
            used += sae.encoder_bytes
    return passes
