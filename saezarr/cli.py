"""The `python -m saezarr` command line: a subcommand per options dataclass (build, export-npz, info, analyze,
compare, catalogues), its arguments built from the dataclass's fields."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saezarr.analysis.analyze_options import AnalyzeOptions
from saezarr.analysis.compare_options import CompareOptions
from saezarr.build.build_options import DEFAULT_CONFIG, BuildOptions
from saezarr.errors import SaezarrError, SaezarrNote, render
from saezarr.export.export_options import ExportOptions
from saezarr.option_fields import add_options, command_fields, flag, from_args, option
from saezarr.store_info import InfoOptions

if TYPE_CHECKING:
    from saezarr.inputs.catalogues import Catalogue

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
        with warnings.catch_warnings(), _library_log_lines():
            warnings.simplefilter("always", SaezarrNote)
            warnings.showwarning = _show_note
            return command.run(from_args(command.options, args))
    except SaezarrError as exc:
        print(f"saezarr: error: {_flags(exc.message)}", file=sys.stderr)
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
        print(f"saezarr: note: {_flags(str(message.args[0]))}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


class _LogLines(logging.Handler):
    """The library's log records of level INFO and up as `saezarr: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        text = getattr(record.msg, "text", None)
        print(f"saezarr: {record.getMessage() if text is None else _flags(text)}", file=sys.stderr)


class _library_log_lines:
    """While a command runs, the `saezarr` logger's records are printed as one line each."""

    def __enter__(self) -> None:
        self.logger, self.handler = logging.getLogger("saezarr"), _LogLines(logging.INFO)
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


# library names of options the command line spells as their negation: (name, value) -> flag
_NEGATED: dict[tuple[str, str | None], str] = {("compressed", "False"): "--uncompressed"}


def _flag(name: str, value: str | None) -> str:
    """The command-line form of an option a library message names: its flag, and the value unless a boolean's."""
    negated = _NEGATED.get((name, value))
    if negated is not None:
        return negated
    flag = _own_flags().get(name, f"--{name.replace('_', '-')}")
    return flag if value in (None, "True") else f"{flag} {value}"


@functools.cache
def _own_flags() -> dict[str, str]:
    """The options whose flag is not their name with dashes (config_file: --config), from the commands' fields."""
    return {field.name: flag(field) for c in COMMANDS for field in command_fields(c.options) if field.metadata["flag"]}


def _flags(message: str) -> str:
    """A library message with the options it names written as command-line flags."""
    return render(message, _flag)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one `saezarr: error:` line."""

    def error(self, message: str):
        self.exit(2, f"saezarr: error: {self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class CataloguesOptions:
    """What `saezarr catalogues` takes."""

    json: bool = option(False, help="machine-readable output: a list of objects with the columns' fields")


def _run_build(options: BuildOptions) -> int:
    from saezarr.api import run_build

    _quiet_libraries(options.quiet)
    print(run_build(options).line())
    return 0


def _run_export(options: ExportOptions) -> int:
    from saezarr.api import run_export

    print(f"saezarr: {_flags(run_export(options).line())}")
    return 0


def _run_info(options: InfoOptions) -> int:
    import json

    from saezarr.api import run_info

    info = run_info(options)
    print(json.dumps(info.to_dict(), indent=2) if options.json else str(info))
    return 0


def _run_catalogues(options: CataloguesOptions) -> int:
    import dataclasses
    import json

    from saezarr.inputs.catalogues import list_catalogues

    found = list_catalogues(with_releases=True)
    if options.json:
        print(json.dumps([dataclasses.asdict(c) for c in found], indent=2))
        return 0
    rows = [("name", "model", "site", "width", "SAEs")]
    rows += [(c.name, c.model, c.site, _width_cell(c), str(c.n_configs)) for c in found]
    sizes = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:  # the words left-aligned, width and count right-aligned
        cells = [cell.ljust(size) for cell, size in zip(row[:3], sizes)]
        print("  ".join(cells + [cell.rjust(size) for cell, size in zip(row[3:], sizes[3:])]))
    return 0


def _width_cell(catalogue: Catalogue) -> str:
    """A catalogue's width as `saezarr catalogues` prints it: its tag, `mixed` where they differ, `?` if unknown."""
    from saezarr.inputs.configs import width_tag

    if catalogue.width is not None:
        return width_tag(catalogue.width)
    return "mixed" if len(catalogue.widths) > 1 else "?"


def _run_analyze(options: AnalyzeOptions) -> int:
    from saezarr.api import run_analyze

    print(run_analyze(options).line())
    return 0


def _run_compare(options: CompareOptions) -> int:
    from saezarr.api import run_compare

    output = run_compare(options)
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
        "list the bundled SAE catalogues and SAELens' releases, usable as build --config NAME",
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


def _quiet_libraries(quiet: bool) -> None:
    """transformers' own messages and bars off (saezarr says what it loads); the hub's download bars, with their
    ETAs, only unless quiet."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    downloads_shown = not are_progress_bars_disabled()  # False where HF_HUB_DISABLE_PROGRESS_BARS=1 says so
    hf_logging.disable_progress_bar()  # transformers' and the hub's
    hf_logging.set_verbosity_error()
    if downloads_shown and not quiet:
        enable_progress_bars()
