"""What `saezarr compare` takes: each option's default, help and flag on its field, from which the command line is
built."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

from saezarr.option_fields import option


@dataclass(frozen=True)
class CompareOptions:
    """What `saezarr compare` takes."""

    analyses: list[Path] = option(
        MISSING, help="`saezarr analyze` output folders", positional=True, type=Path, nargs="+", metavar="DIR"
    )
    output: Path = option(MISSING, help="folder for the comparison (must not exist)", type=Path, required=True)
    overwrite: bool = option(False, help="replace an output folder saezarr compare wrote")
