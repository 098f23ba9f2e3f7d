"""What `saezarr export-npz` takes: each option's default, help and flag on its field, from which the command line
is built; `export` runs the export the options ask for."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saezarr.option_fields import configs_option, layers_option, option, positive_int
from saezarr.store.storage import Location, as_location

if TYPE_CHECKING:
    from saezarr.export.per_config import ExportSummary


@dataclass(frozen=True)
class ExportOptions:
    """What `saezarr export-npz` was asked to do."""

    store: Location = option(MISSING, help=None, positional=True, type=as_location)
    output: Path = option(MISSING, help="folder for the .npz files", type=Path, required=True)
    configs: list[str] | None = configs_option()
    layers: list[int] | None = layers_option()
    uncompressed: bool = option(False, help="np.savez instead of np.savez_compressed")
    jobs: int | None = option(
        help="files written at once (default: one per usable core, fewer if memory is short)", type=positive_int
    )
    overwrite: bool = option(False, help="rewrite files that already exist")
    per_sentence: bool = option(
        False, help="one sentence_NNNNNN.npz per sentence (all selected configs, and the residual stream if kept)"
    )


def export(options: ExportOptions) -> ExportSummary:
    """Export the store as the options say: one `.npz` per configuration, or per sentence."""
    from saezarr.export.per_config import export_npz
    from saezarr.export.per_sentence import export_per_sentence

    return (export_per_sentence if options.per_sentence else export_npz)(
        options.store,
        options.output,
        configs=options.configs,
        layers=options.layers,
        compressed=not options.uncompressed,
        jobs=options.jobs,
        overwrite=options.overwrite,
    )
