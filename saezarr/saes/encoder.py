"""One encoder contract for every layout: residuals [n, d_model] in, float32 latents [n, width] out.

An encoder whose arrays fit the memory budget is held whole on its device; a wider one is encoded in feature tiles
streamed from its weights file, which gives the same values per feature: a latent depends on its own column of
W_enc alone (TopK: on every column's pre-activation, so its k-th largest value is found across the tiles before
any latent is kept). On a CPU, float32 weights are used where they are memory-mapped, whole or tile by tile (BLAS
reads the page cache; nothing is copied into this process); on a GPU each tile's columns are read from the file
into host memory (one tile at a time, not mapped) and copied to the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from saezarr.saes.activations import ACTIVATIONS, Bounds
from saezarr.saes.locate import SAEFile
from saezarr.saes.weights import as_float32, mapped, read_columns, read_header

MIN_TILE_FEATURES = 1024  # tiles narrower than this spend more time per call than in the matmul


class Encoder:
    """An SAE's encoder on one device: its registered activation function (JumpReLU, ReLU, TopK, ...), with b_dec
    subtracted from the input if the SAE says."""

    def __init__(self, sae: SAEFile, device: str | torch.device, budget: int | None = None):
        self.sae, self.device = sae, torch.device(device)
        layout = sae.layout
        self._header = read_header(layout.weights)
        self.activation, self.k = ACTIVATIONS[layout.architecture], layout.k
        self.b_enc = self._vector(layout.b_enc)
        self.threshold = self._vector(layout.threshold) if layout.threshold else None
        self.b_dec = self._vector(layout.b_dec) if layout.b_dec else None
        whole = budget is None or sae.encoder_bytes <= budget
        self.tile = sae.width if budget is None or whole else tile_features(sae, budget)
        self.W_enc = self._whole() if whole else None  # None: streamed tile by tile
        self._mapped = None if whole or not self._maps else mapped(layout.weights, self._header[layout.W_enc])

    @property
    def tiled(self) -> bool:
        """True if W_enc is streamed in feature tiles rather than held whole."""
        return self.W_enc is None

    def _vector(self, key: str) -> torch.Tensor:
        tensor = self._header[key]
        return torch.from_numpy(as_float32(np.array(mapped(self.sae.layout.weights, tensor)), tensor)).to(self.device)

    @property
    def _maps(self) -> bool:
        """True if W_enc is used where it is mapped: float32 weights on a CPU."""
        return self.device.type == "cpu" and self._header[self.sae.layout.W_enc].dtype in ("<f4", "F32")

    def _whole(self) -> torch.Tensor:
        """W_enc on the device (on a CPU, mapped from the page cache where it is float32)."""
        tensor = self._header[self.sae.layout.W_enc]
        array = mapped(self.sae.layout.weights, tensor)
        return torch.from_numpy(array if self._maps else as_float32(array, tensor)).to(self.device)

    def _tile(self, start: int, stop: int) -> torch.Tensor:
        """W_enc[:, start:stop] on the device: a view of the whole or of the mapping, or read from the file."""
        if self.W_enc is not None:
            return self.W_enc[:, start:stop]
        tensor = self._header[self.sae.layout.W_enc]
        if self._mapped is not None:  # a strided view: BLAS reads the columns where they are mapped
            return torch.from_numpy(self._mapped[:, start:stop])
        return torch.from_numpy(read_columns(self.sae.layout.weights, tensor, start, stop)).to(self.device)

    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Latents of residuals x [n, d_model] in float32, into `out` if given (on any device); zeros are +0.0."""
        x = x.to(device=self.device, dtype=torch.float32)
        if self.b_dec is not None:
            x = x - self.b_dec
        if out is None:
            out = torch.empty((x.shape[0], self.sae.width), dtype=torch.float32, device=self.device)
        kth = self._kth_largest(x) if self.activation.uses_k else None
        for start in range(0, self.sae.width, self.tile):
            stop = min(start + self.tile, self.sae.width)
            W = self._tile(start, stop)
            target = out[:, start:stop]
            if target.device == self.device and target.is_contiguous():
                torch.addmm(self.b_enc[start:stop], x, W, out=target)
                self._activate(target, start, stop, kth)
            else:
                target.copy_(self._activate(torch.addmm(self.b_enc[start:stop], x, W), start, stop, kth))
        return out

    def _activate(self, pre: torch.Tensor, start: int, stop: int, kth: torch.Tensor | None) -> torch.Tensor:
        """The activation in place; masked_fill leaves +0.0 where pre * mask would leave -0.0 (halving zstd's ratio)."""
        threshold = self.threshold[start:stop] if self.threshold is not None else None
        return self.activation.activate(pre, Bounds(threshold, kth))

    def _kth_largest(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's k-th largest pre-activation [n, 1], over every tile."""
        assert self.k is not None  # uses_k: locate_sae refuses such an SAE without k
        best: torch.Tensor | None = None
        for start in range(0, self.sae.width, self.tile):
            stop = min(start + self.tile, self.sae.width)
            pre = torch.addmm(self.b_enc[start:stop], x, self._tile(start, stop))
            candidates = pre if best is None else torch.cat([best, pre], dim=1)
            best = candidates.topk(min(self.k, candidates.shape[1]), dim=1).values
        assert best is not None  # an SAE has at least one feature, so one tile
        return best[:, -1:]


def tile_features(sae: SAEFile, budget: int) -> int:
    """Features per tile so that a tile of W_enc and the vectors stay within the budget (MIN_TILE_FEATURES at least)."""
    room = budget - 4 * (2 * sae.width + 2 * sae.d_model)
    return min(sae.width, max(MIN_TILE_FEATURES, room // (4 * sae.d_model)))


def load_encoder(sae: SAEFile, device: str | torch.device, budget: int | None = None) -> Encoder:
    """An SAE's encoder on a device: whole if it fits `budget` bytes (or no budget is given), else tiled."""
    return Encoder(sae, device, budget)


def plan_passes(saes: Sequence[SAEFile], budget_bytes: int) -> list[list[SAEFile]]:
    """Group SAEs, in layer order, into passes whose encoders fit the memory budget (a layer may span two).

    An SAE wider than the budget is a pass of its own, encoded in tiles within the budget."""
    by_layer: dict[int, list[SAEFile]] = {}
    for sae in saes:
        by_layer.setdefault(sae.config.known_layer, []).append(sae)
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
