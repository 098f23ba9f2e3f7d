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

from saezarr.errors import SAEFormatError
from saezarr.saes.activations import ACTIVATIONS, Bounds
from saezarr.saes.locate import SAEFile
from saezarr.saes.normalise import NORMALISATIONS
from saezarr.saes.weights import as_float32, mapped, read_columns, read_header, read_rows

MIN_TILE_FEATURES = 1024  # tiles narrower than this spend more time per call than in the matmul
ROW_BLOCK = 4096  # rows of W_dec read at a time to find their norms


class Encoder:
    """An SAE's encoder on one device: its registered activation function (JumpReLU, ReLU, TopK, ...), with b_dec
    subtracted from the input if the SAE says."""

    def __init__(self, sae: SAEFile, device: str | torch.device, budget: int | None = None):
        self.sae, self.device = sae, torch.device(device)
        layout = sae.layout
        self._header = read_header(layout.weights)
        self.activation, self.k = ACTIVATIONS[layout.architecture], layout.k
        self.b_enc = self._vector(layout.b_enc) if layout.b_enc else None
        self.threshold = self._threshold()
        self.b_dec = self._vector(layout.b_dec) if layout.b_dec else None
        self.vectors = {role: self._vector(key) for role, key in layout.vectors}
        self.decoder_norms = self._row_norms(layout.rescale_by) if layout.rescale_by else None
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

    def _threshold(self) -> torch.Tensor | None:
        """Each feature's threshold: its array (one stored value broadcast to every feature), or the layout's one
        value, or None."""
        layout = self.sae.layout
        if layout.threshold_value is not None:
            return torch.full((self.sae.width,), layout.threshold_value, dtype=torch.float32, device=self.device)
        if layout.threshold is None:
            return None
        return self._vector(layout.threshold).expand(self.sae.width).contiguous()

    def _row_norms(self, key: str) -> torch.Tensor:
        """The norms of a stored [d_sae, d_in] matrix's rows (W_dec's: SAELens' `W_dec.norm(dim=-1)`), read in
        blocks of rows."""
        tensor = self._header[key]
        norms = [
            torch.from_numpy(read_rows(self.sae.layout.weights, tensor, start, start + ROW_BLOCK)).norm(dim=-1)
            for start in range(0, tensor.shape[0], ROW_BLOCK)
        ]
        return torch.cat(norms).to(self.device)

    @property
    def _maps(self) -> bool:
        """True if W_enc is used where it is mapped: float32 weights on a CPU."""
        return self.device.type == "cpu" and self._header[self.sae.layout.W_enc].dtype in ("<f4", "F32")

    def _whole(self) -> torch.Tensor:
        """W_enc [d_in, d_sae] on the device (on a CPU, mapped from the page cache where it is float32; a view of
        the transpose where it is stored [d_sae, d_in])."""
        tensor = self._header[self.sae.layout.W_enc]
        array = mapped(self.sae.layout.weights, tensor)
        W = torch.from_numpy(array if self._maps else as_float32(array, tensor)).to(self.device)
        return W.T if self.sae.layout.W_enc_transposed else W

    def _tile(self, start: int, stop: int) -> torch.Tensor:
        """W_enc[:, start:stop] on the device: a view of the whole or of the mapping, or read from the file."""
        if self.W_enc is not None:
            return self.W_enc[:, start:stop]
        tensor, weights = self._header[self.sae.layout.W_enc], self.sae.layout.weights
        if self.sae.layout.W_enc_transposed:  # stored [d_sae, d_in]: a tile is rows, contiguous
            if self._mapped is not None:
                return torch.from_numpy(self._mapped[start:stop]).T
            return torch.from_numpy(read_rows(weights, tensor, start, stop)).to(self.device).T
        if self._mapped is not None:  # a strided view: BLAS reads the columns where they are mapped
            return torch.from_numpy(self._mapped[:, start:stop])
        return torch.from_numpy(read_columns(weights, tensor, start, stop)).to(self.device)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The SAE's input from the site's activations: one head's columns, centred, normalised, scaled, less b_dec
        (each where the SAE says), float32 on the device."""
        layout, d_in = self.sae.layout, self.sae.d_model
        x = x.to(device=self.device, dtype=torch.float32)
        if layout.head_index is not None:  # attn.hook_z arrives [n, heads * d_head], head by head
            stop = (layout.head_index + 1) * d_in
            if x.shape[1] < stop or x.shape[1] % d_in:
                raise SAEFormatError(
                    f"{layout.weights}: config {self.sae.config.name}: hook_head_index {layout.head_index} of heads of "
                    f"{d_in} columns, but the site has {x.shape[1]} columns"
                )
            x = x[:, stop - d_in : stop]
        if layout.centred:
            x = x - x.mean(dim=-1, keepdim=True)
        x = NORMALISATIONS[layout.normalise](x, d_in)
        if layout.input_scale is not None:
            x = x * layout.input_scale
        if self.b_dec is not None:
            x = x - self.b_dec
        return x

    def _pre(self, x: torch.Tensor, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-activations of features [start, stop): x @ W_enc (+ b_enc), times W_dec's row norms if rescaled."""
        W = self._tile(start, stop)
        if self.b_enc is None:
            pre = torch.mm(x, W, out=out)
        else:
            pre = torch.addmm(self.b_enc[start:stop], x, W, out=out)
        if self.decoder_norms is not None:
            pre.mul_(self.decoder_norms[start:stop])
        return pre

    def encode(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Latents of a site's activations x [n, d] in float32, into `out` if given (on any device); zeros are +0.0."""
        x = self.prepare(x)
        if out is None:
            out = torch.empty((x.shape[0], self.sae.width), dtype=torch.float32, device=self.device)
        kth = self._kth_largest(x) if self.activation.uses_k else None
        for start in range(0, self.sae.width, self.tile):
            stop = min(start + self.tile, self.sae.width)
            target = out[:, start:stop]
            if target.device == self.device and target.is_contiguous():
                self._activate(self._pre(x, start, stop, out=target), start, stop, kth)
            else:
                target.copy_(self._activate(self._pre(x, start, stop), start, stop, kth))
        return out

    def _activate(self, pre: torch.Tensor, start: int, stop: int, kth: torch.Tensor | None) -> torch.Tensor:
        """The activation in place; masked_fill leaves +0.0 where pre * mask would leave -0.0 (halving zstd's ratio)."""
        threshold = self.threshold[start:stop] if self.threshold is not None else None
        vectors = {role: vector[start:stop] for role, vector in self.vectors.items()}
        return self.activation.activate(pre, Bounds(threshold, kth, vectors))

    def _kth_largest(self, x: torch.Tensor) -> torch.Tensor:
        """Each row's k-th largest pre-activation [n, 1], over every tile."""
        assert self.k is not None  # uses_k: locate_sae refuses such an SAE without k
        best: torch.Tensor | None = None
        for start in range(0, self.sae.width, self.tile):
            stop = min(start + self.tile, self.sae.width)
            pre = self._pre(x, start, stop)
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
