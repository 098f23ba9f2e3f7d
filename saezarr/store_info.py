"""`saezarr info`: what a store holds and how far its build is, as a dataclass (`StoreInfo`), and its options."""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from pathlib import Path

from saezarr.option_fields import option
from saezarr.store.storage import Location, as_location


@dataclass(frozen=True)
class InfoOptions:
    """What `saezarr info` takes."""

    store: Location = option(MISSING, help=None, positional=True, type=as_location)
    json: bool = option(False, help="machine-readable output")


@dataclass(frozen=True)
class ConfigProgress:
    """One configuration of a store: its SAE and how many of the store's chunks are done."""

    name: str
    layer: int
    average_l0: int
    width: int
    done_chunks: int
    total_chunks: int


@dataclass(frozen=True)
class SiteInfo:
    """A site kind other than resid_post whose activations a store keeps: its layers and width."""

    kind: str
    layers: list[int]
    width: int


@dataclass(frozen=True)
class ResidualsInfo:
    """What a store keeps of the residual stream: its layers, hidden size, dtype, done chunks and bytes on disk, and
    the other sites its SAEs read at those layers."""

    layers: list[int]
    hidden: int
    dtype: str
    done_chunks: int
    total_chunks: int
    bytes_on_disk: int
    sites: list[SiteInfo]


@dataclass(frozen=True)
class StoreInfo:
    """A store's provenance, sizes and completion per configuration; `str()` is `saezarr info`'s text, `to_dict()` its
    JSON."""

    store: str
    saezarr_version: str | None
    model: str | None
    model_revision: str | None
    model_dtype: str | None
    sae_repo: str | None
    sae_revision: str | None
    fragments: str | None
    input_file: str | None
    input_sha256: str | None
    n_sentences: int | None
    n_fragments: int
    n_features: int
    chunk_fragments: int
    n_chunks: int
    complete: bool
    configs: list[ConfigProgress]
    residuals: ResidualsInfo | None
    bytes_on_disk: int
    dense_float32_bytes: int
    compression_ratio: float | None

    @classmethod
    def of(cls, path: str | Path) -> StoreInfo:
        """The summary of the store at path."""
        from saezarr.store.reading import store_info

        info = store_info(path)
        residuals = info["residuals"]
        return cls(
            **{
                **info,
                "configs": [ConfigProgress(**config) for config in info["configs"]],
                "residuals": None if residuals is None else _residuals_info(residuals),
            }
        )

    def to_dict(self) -> dict:
        """The summary as `saezarr info --json` prints it."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        from saezarr.store.reading import format_info

        return format_info(self.to_dict())

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))


def _residuals_info(residuals: dict) -> ResidualsInfo:
    return ResidualsInfo(**{**residuals, "sites": [SiteInfo(**site) for site in residuals["sites"]]})
