"""The emergence curves: per layer, out-of-fold scores of the best SAE feature, sparse probes and a residual-stream
probe, beside their chance levels under permuted labellings (saezarr.analysis.emergence)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

from saezarr.analysis.emergence import layer_row
from saezarr.analysis.resampled import LayerInputs, ResamplingContext, ResamplingOptions
from saezarr.sites import RESID_POST
from saezarr.store.residual_arrays import RESIDUALS
from saezarr.store.storage import Location, absolute_location, open_storage


class EmergenceCurves:
    """emergence.csv's rows, one per layer with configs or residuals."""

    name = "emergence"
    extension = "json"
    selects_on_permuted_labels = True  # the chance levels select on the permuted labellings too

    def wanted(self, options: ResamplingOptions) -> bool:
        """On unless --folds 0."""
        return options.folds > 0

    def key_parts(self, options: ResamplingOptions, residuals: Location | None) -> list:
        """The folds, their seed, the permuted labellings and the residual stream's identity (None: none)."""
        residual_identity = None
        if residuals is not None:
            stat = open_storage(residuals).stat(f"{RESIDUALS}/zarr.json")
            residual_identity = [f"{absolute_location(residuals)}/{RESIDUALS}", stat.modified_ns, stat.size]
        return [options.folds, options.seed, options.probe_permutations, residual_identity]

    def extra_layers(self, context: ResamplingContext) -> list[int]:
        """The residual layers: their residual probe has a row even where no config is."""
        return list(context.residual_of)

    def for_layer(self, inputs: LayerInputs) -> dict:
        """The layer's row (of one site: the residual probe beside resid_post SAEs alone; the row says its site where
        the configs read several kinds)."""
        context = inputs.context
        residuals = context.residual_of.get(inputs.layer) if inputs.site == RESID_POST else None
        assert context.folds is not None  # emergence is wanted only with folds
        row = layer_row(inputs.layer, inputs.splits, residuals, context.targets, context.folds)
        return {"site": inputs.site, **row} if context.configs.several_sites else row

    def combine(self, shares: list, context: ResamplingContext) -> list[dict]:
        """The rows in layer order."""
        return shares

    def save(self, file: BinaryIO, value: list[dict]) -> None:
        """The rows as JSON (None for a missing value)."""
        file.write(json.dumps(value, allow_nan=False).encode())

    def load(self, path: Path) -> list[dict]:
        """The rows saved at path."""
        return json.loads(path.read_text())
