"""The command line is built from the options dataclasses: each default lives on its field, each field is an option."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from saezarr import cli
from saezarr.analysis.analyze_options import PROBE_PERMUTATIONS, AnalyzeOptions
from saezarr.build.build_options import DEFAULT_BATCH_SIZE, BuildOptions
from saezarr.errors import InputError
from saezarr.execution.connect import ClusterOptions
from saezarr.option_fields import command_fields, flag, from_args, from_keywords, keyword_signature
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


def test_keywords_are_read_as_the_command_line_reads_their_text():
    """From Python, an option given as text is read as its flag's text is: the two make the same options."""
    keywords = {"input": "in.csv", "layers": "3,12", "sae_memory": "2GiB", "residuals": "all", "batch_size": 8}
    argv = [
        "build",
        "--input",
        "in.csv",
        "--layers",
        "3,12",
        "--sae-memory",
        "2GiB",
        "--residuals",
        "--batch-size",
        "8",
    ]
    options = from_keywords(BuildOptions, "build", keywords)
    assert options == from_args(BuildOptions, cli.parser().parse_args(argv))
    assert options.input == Path("in.csv") and options.layers == [3, 12] and options.sae_memory == 2 * 2**30
    given = from_keywords(BuildOptions, "build", {"layers": [12, 3], "sae_memory": 1024, "input": None})
    assert (given.layers, given.sae_memory, given.input) == ([12, 3], 1024, None)  # values as they are


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"batch_size": 0}, "batch_size=0: expected a positive integer, got '0'"),
        ({"batch_size": 2.5}, "batch_size=2.5: expected a positive integer, got '2.5'"),
        ({"dtype": "float16"}, "dtype=float16: expected one of float32, bfloat16"),
        ({"layers": "3,x"}, "layers: expected comma-separated layer numbers, got '3,x'"),
    ],
)
def test_a_bad_keyword_value_is_an_input_error_naming_the_keyword(keywords, message):
    with pytest.raises(InputError) as caught:
        from_keywords(BuildOptions, "build", keywords)
    assert str(caught.value) == message


def test_an_unknown_keyword_is_a_type_error_with_the_closest_field():
    with pytest.raises(TypeError) as caught:
        from_keywords(BuildOptions, "build", {"config": "x.json"})
    assert str(caught.value) == "build() got an unexpected keyword argument 'config' (did you mean 'config_file'?)"
    with pytest.raises(TypeError, match=r"^analyze\(\) got an unexpected keyword argument 'zzz'$"):
        from_keywords(AnalyzeOptions, "analyze", {"store": "s.zarr", "zzz": 1})


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_keyword_signature_is_the_fields_with_their_defaults(name):
    options = COMMANDS[name].options
    argv, required = REQUIRED[name]
    signature = keyword_signature(options, tuple(required))
    assert list(signature.parameters) == [
        *required,
        *(f.name for f in dataclasses.fields(options) if f.name not in required),
    ]
    called = signature.bind(**required)
    called.apply_defaults()
    assert options(**called.arguments) == options(**required)
    assert all(p.kind is p.KEYWORD_ONLY for p in signature.parameters.values() if p.name not in required)
