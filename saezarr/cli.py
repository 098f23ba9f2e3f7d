"""The `python -m saezarr` command line: a subcommand per options dataclass (build, export-npz, info, analyze,
compare, catalogues), its arguments built from the dataclass's fields."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from saezarr.analysis.options import AnalyzeOptions
from saezarr.build.options import DEFAULT_CONFIG, BuildOptions
from saezarr.errors import SaezarrError, SaezarrNote
from saezarr.export.options import ExportOptions
from saezarr.options import add_options, from_args, option

__all__ = ["COMMANDS", "DEFAULT_CONFIG", "main", "parser"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    # idle OpenMP threads that spin would take the cores from the threads that compress and write; so would
    # numpy's OpenBLAS threads, which spin ~0.1 s of CPU after numpy's import and after each BLAS call
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    args = parser().parse_args(argv)
    command = args.command
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", SaezarrNote)
            warnings.showwarning = _show_note
            return command.run(from_args(command.options, args))
    except SaezarrError as exc:
        print(f"saezarr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("saezarr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`saezarr catalogues | head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush finds no pipe
        return 141


_show_warning = warnings.showwarning


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """A library note as one `saezarr: note:` line; any other warning as Python shows it."""
    if issubclass(category, SaezarrNote):
        print(f"saezarr: note: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one `saezarr: error:` line."""

    def error(self, message: str):
        self.exit(2, f"saezarr: error: {self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class InfoOptions:
    """What `saezarr info` takes."""

    store: Path = option(MISSING, help=None, positional=True, type=Path)
    json: bool = option(False, help="machine-readable output")


@dataclass(frozen=True)
class CataloguesOptions:
    """What `saezarr catalogues` takes."""

    json: bool = option(False, help="machine-readable output")


@dataclass(frozen=True)
class CompareOptions:
    """What `saezarr compare` takes."""

    analyses: list[Path] = option(
        MISSING, help="`saezarr analyze` output folders", positional=True, type=Path, nargs="+", metavar="DIR"
    )
    output: Path = option(MISSING, help="folder for the comparison (must not exist)", type=Path, required=True)
    overwrite: bool = option(False, help="replace an output folder saezarr compare wrote")


def _run_build(options: BuildOptions) -> int:
    from saezarr.build.pipeline import build

    _quiet_libraries()
    print(build(options).line())
    return 0


def _run_export(options: ExportOptions) -> int:
    from saezarr.export.options import export

    print(f"saezarr: {export(options).line()}")
    return 0


def _run_info(options: InfoOptions) -> int:
    import json

    from saezarr.store.reading import format_info, store_info

    info = store_info(options.store)
    print(json.dumps(info, indent=2) if options.json else format_info(info))
    return 0


def _run_catalogues(options: CataloguesOptions) -> int:
    import dataclasses
    import json

    from saezarr.inputs.catalogues import list_catalogues

    found = list_catalogues()
    if options.json:
        print(json.dumps([dataclasses.asdict(c) for c in found], indent=2))
        return 0
    for catalogue in found:
        print(f"{catalogue.name}  {catalogue.n_configs} SAEs  {catalogue.model}  {catalogue.sae_repo}")
    return 0


def _run_analyze(options: AnalyzeOptions) -> int:
    from saezarr.analysis.run import analyze

    print(analyze(options).line())
    return 0


def _run_compare(options: CompareOptions) -> int:
    from saezarr.analysis.compare import compare

    output = compare(options.analyses, options.output, options.overwrite)
    print(f"saezarr: compared {len(options.analyses)} analyses; wrote {output}")
    return 0


@dataclass(frozen=True)
class _Command:
    """A subcommand: its name and help line, the options dataclass its arguments are built from, and its runner."""

    name: str
    help: str
    options: type
    run: Callable[[Any], int]


COMMANDS = (
    _Command("build", "build or resume a store from a labeled CSV", BuildOptions, _run_build),
    _Command("export-npz", "write one legacy .npz file per configuration", ExportOptions, _run_export),
    _Command("info", "summarise a store", InfoOptions, _run_info),
    _Command("analyze", "rank every SAE feature against the concept labels", AnalyzeOptions, _run_analyze),
    _Command(
        "compare", "compare analyses of several concepts on the same model and SAEs", CompareOptions, _run_compare
    ),
    _Command(
        "catalogues",
        "list the bundled SAE catalogues, usable as build --config NAME",
        CataloguesOptions,
        _run_catalogues,
    ),
)


def parser() -> argparse.ArgumentParser:
    """The command line's parser: a subcommand per COMMANDS entry, its arguments built from its options' fields."""
    top = _Parser(prog="saezarr", description="Gemma Scope SAE features of Gemma-2 in one Zarr store.")
    commands = top.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        sub = commands.add_parser(command.name, help=command.help)
        add_options(sub, command.options)
        sub.set_defaults(command=command)
    return top


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
