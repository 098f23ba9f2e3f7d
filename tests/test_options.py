"""The command line is built from the options dataclasses: each default lives on its field, each field is an option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from saezarr import cli
from saezarr.analysis.analyze_options import PROBE_PERMUTATIONS, AnalyzeOptions
from saezarr.build.build_options import DEFAULT_BATCH_SIZE, BuildOptions
from saezarr.execution.connect import ClusterOptions
from saezarr.option_fields import command_fields, flag, from_args
from saezarr.store import DEFAULT_CHUNK_FRAGMENTS
from tests.clitools import run_cli

# what each command cannot do without: its positional arguments and required options
REQUIRED = {
    "build": ([], {}),
    "export-npz": (["s.zarr", "--output", "out"], {"store": Path("s.zarr"), "output": Path("out")}),
    "info": (["s.zarr"], {"store": Path("s.zarr")}),
    "analyze": (["s.zarr", "--output", "out"], {"store": Path("s.zarr"), "output": Path("out")}),
    "compare": (["a", "b", "--output", "out"], {"analyses": [Path("a"), Path("b")], "output": Path("out")}),
    "catalogues": ([], {}),
}
COMMANDS = {command.name: command for command in cli.COMMANDS}


def test_every_command_is_covered():
    assert set(COMMANDS) == set(REQUIRED)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_left_out_options_are_the_dataclass_defaults(name):
    """An empty command line gives the dataclass's own defaults: no default is spelled a second time in the CLI."""
    argv, required = REQUIRED[name]
    command = COMMANDS[name]
    parsed = from_args(command.options, cli.parser().parse_args([name, *argv]))
    assert parsed == command.options(**required)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_option_has_help(name):
    for field in command_fields(COMMANDS[name].options):
        if not field.metadata["positional"]:
            assert field.metadata["help"], f"{name} {flag(field)} has no help text"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_help_lists_every_field(name):
    """`saezarr NAME --help`, run as a real process, names every option field, nested cluster options included."""
    result = run_cli(name, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for field in command_fields(COMMANDS[name].options):
        shown = field.metadata.get("metavar") or flag(field)
        assert shown in text, f"{name} --help lacks {shown}"


def test_help_shows_the_defaults_that_live_on_the_fields():
    build, analyze = (" ".join(run_cli(name, "--help").stdout.split()) for name in ("build", "analyze"))  # unwrapped
    assert f"(default {DEFAULT_BATCH_SIZE}, or the store's own on --resume)" in build
    assert f"resuming (default {DEFAULT_CHUNK_FRAGMENTS})" in build
    assert f"chance levels (default {PROBE_PERMUTATIONS})" in analyze
    assert f"0 turns it off (default {_default(AnalyzeOptions, 'permutations')})" in analyze
    assert f"first worker (default {_default(ClusterOptions, 'worker_timeout'):g})" in analyze


def _default(cls: type, name: str):
    return next(field.default for field in dataclasses.fields(cls) if field.name == name)


def test_analyze_offers_no_local_cluster_and_build_does():
    names = {flag(field) for field in command_fields(AnalyzeOptions)}
    assert "--local-workers" not in names and "--scheduler" in names
    assert "--local-workers" in {flag(field) for field in command_fields(BuildOptions)}


def test_option_text_is_parsed_into_typed_values():
    args = cli.parser().parse_args(
        ["build", "--layers", "3,12", "--configs", "a,b", "--sae-memory", "2GiB", "--residuals", "--local-workers", "2"]
    )
    options = from_args(BuildOptions, args)
    assert options.layers == [3, 12] and options.configs == ["a", "b"]
    assert options.sae_memory == 2 * 2**30 and options.residuals == "all"
    assert options.cluster == ClusterOptions(local_workers=2)
    some = from_args(BuildOptions, cli.parser().parse_args(["build", "--residuals", "12,3"]))
    assert some.residuals == [12, 3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
        (
            ["build", "--scheduler", "tcp://h:1", "--local-workers", "2"],
            "argument --local-workers: not allowed with argument --scheduler",
        ),
        (["analyze", "s.zarr"], "the following arguments are required: --output"),
    ],
)
def test_usage_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith(f"saezarr: error: saezarr {argv[0]}: ") and message in err and err.count("\n") == 1


def test_analyze_refuses_local_workers(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["analyze", "s.zarr", "--output", "o", "--local-workers", "2"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "saezarr: error: saezarr: unrecognized arguments: --local-workers 2 (see saezarr --help)\n"
    )


def test_option_parse_errors_are_saezarr_errors(capsys):
    """Text that `parse` refuses is one `saezarr: error:` line naming the option, exit code 2."""
    assert cli.main(["build", "--residuals", "3,x", "--output", "o.zarr", "--input", "i.csv"]) == 2
    assert capsys.readouterr().err == "saezarr: error: --residuals: expected comma-separated layer numbers, got '3,x'\n"
