"""The notebook-first Python API: each function takes its command's options as keyword arguments, runs the command
line's own code path (the files it writes are the command's), and returns what displays well in Jupyter; `import
saezarr` stays cheap, and `saezarr.build` is both the function and the package."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from clitools import run_cli, run_main

import saezarr
from saezarr import api
from saezarr.analysis.analyze_options import AnalyzeOptions
from saezarr.analysis.compare_options import CompareOptions
from saezarr.analysis.results import Analysis, Comparison
from saezarr.build.build_options import BuildOptions
from saezarr.errors import OutputExists, ResumeMismatch
from saezarr.export.export_options import ExportOptions
from saezarr.testing.synthetic import DEMO_CSV

LOOSE = {"min_pearson": 0.2, "min_tpr": 0.2, "max_fpr": 0.3}  # the demo's thresholds (README)
LOOSE_FLAGS = ("--min-pearson", "0.2", "--min-tpr", "0.2", "--max-fpr", "0.3")


@pytest.fixture(scope="module")
def demo(demo_config, tmp_path_factory, monkeypatch_module):
    """A folder with the demo store built by the command line, and the analysis cache kept there."""
    root = tmp_path_factory.mktemp("api")
    monkeypatch_module.setenv("SAEZARR_CACHE", str(root / "cache"))
    result = run_main("build", "--input", DEMO_CSV, "--output", root / "demo.zarr", "--config", demo_config, "--quiet")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_import_saezarr_loads_neither_the_api_nor_its_libraries():
    code = "import saezarr, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('saezarr', 'torch', 'pandas', 'numpy', 'xarray')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "['saezarr', 'saezarr.build', 'saezarr.compat']"  # compat: the stdlib only
    code = "import saezarr, sys; saezarr.analyze; print('saezarr.api' in sys.modules, 'torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == ["True", "False"]


def test_build_is_the_function_and_still_the_package():
    assert callable(saezarr.build) and saezarr.build.__name__ == "saezarr.build"
    import saezarr.build.pipeline as pipeline  # the package's modules, as before

    assert saezarr.build.pipeline is pipeline and saezarr.build.planning.plan_build
    assert inspect.signature(saezarr.build) == inspect.signature(api.build)
    assert saezarr.analyze is api.analyze and saezarr.Analysis is Analysis and saezarr.Comparison is Comparison
    assert {"build", "analyze", "export_npz", "info", "compare", "Analysis"} <= set(dir(saezarr))


@pytest.mark.parametrize(
    ("function", "options", "positional"),
    [
        (api.build, BuildOptions, ["input", "output"]),
        (api.analyze, AnalyzeOptions, ["store", "output"]),
        (api.export_npz, ExportOptions, ["store", "output"]),
        (api.compare, CompareOptions, ["analyses", "output"]),
    ],
)
def test_each_function_takes_its_commands_fields_with_their_defaults(function, options, positional):
    parameters = inspect.signature(function).parameters
    fields = dataclasses.fields(options)
    assert list(parameters) == [*positional, *(f.name for f in fields if f.name not in positional)]
    for field in fields:
        if field.default is not dataclasses.MISSING:
            assert parameters[field.name].default == field.default, field.name
    assert list(inspect.signature(api.info).parameters) == ["store"]  # info's --json is how the command line prints


def test_an_unknown_keyword_is_a_type_error_naming_the_field(tmp_path):
    with pytest.raises(TypeError) as caught:
        saezarr.build(DEMO_CSV, tmp_path / "x.zarr", config="some.json")
    assert str(caught.value) == "build() got an unexpected keyword argument 'config' (did you mean 'config_file'?)"
    assert not (tmp_path / "x.zarr").exists()


def _activations(store) -> np.ndarray:
    return zarr.open_group(store, mode="r")["activations"][:]


def test_a_quiet_build_shows_no_bar_of_transformers(demo, demo_config, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()  # the command line, run in this process before, turns it off
    hf_logging.enable_progress_bar()  # as a fresh notebook has it
    try:
        saezarr.build(DEMO_CSV, tmp_path / "quiet.zarr", config_file=demo_config, quiet=True, max_chunks=1)
        assert "Loading weights" not in capfd.readouterr().err
        assert hf_logging.is_progress_bar_enabled()  # as it was
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def test_a_dataframe_builds_the_store_its_csv_builds_and_the_command_line_resumes_it(demo, demo_config, tmp_path):
    """A build from a DataFrame records the sha256 of the CSV pandas writes of it: the store one is resumed from the
    other, and ends bitwise equal to the CSV's own build."""
    frame = pd.read_csv(DEMO_CSV).sample(frac=1, random_state=3).set_axis(range(100, 140))  # any order, any index
    csv = tmp_path / "shuffled.csv"
    frame.to_csv(csv, index=False)
    store = tmp_path / "frame.zarr"
    kept = {"config_file": demo_config, "chunk_fragments": 64, "quiet": True}
    ds = saezarr.build(frame, store, max_chunks=1, **kept)
    assert isinstance(ds, xr.Dataset) and ds.attrs["input_file"] == "DataFrame"
    assert dict(ds.sizes) == {"config": 6, "fragment": 540, "feature": 512}
    assert not saezarr.info(store).complete
    flags = ("--config", demo_config, "--chunk-fragments", "64", "--quiet")
    resumed = run_main("build", "--input", csv, "--output", store, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "csv.zarr"
    built = run_main("build", "--input", csv, "--output", reference, *flags)
    assert built.returncode == 0, built.stderr
    np.testing.assert_array_equal(_activations(store), _activations(reference))
    assert saezarr.info(store).input_sha256 == saezarr.info(reference).input_sha256
    ds = saezarr.build(frame, store, resume=True, **kept)  # nothing left to do: the store, opened
    np.testing.assert_array_equal(ds.activations.values, _activations(reference))


def test_extending_with_a_dataframe_names_its_rows(demo, demo_config):
    changed = pd.read_csv(DEMO_CSV)
    changed.loc[0, "sentence"] = "A changed first sentence."
    with pytest.raises(ResumeMismatch) as caught:
        saezarr.build(changed, demo / "demo.zarr", config_file=demo_config, extend=True, quiet=True)
    assert str(caught.value).startswith(f"extend=True {demo / 'demo.zarr'}: DataFrame row 0 differs from the store's")


@pytest.fixture(scope="module")
def analyses(demo):
    """The demo store analysed through the API (into its default folder) and through the command line."""
    analysis = saezarr.analyze(demo / "demo.zarr", quiet=True, **LOOSE)
    result = run_cli("analyze", demo / "demo.zarr", "--output", demo / "cli-analysis", "--quiet", *LOOSE_FLAGS)
    assert result.returncode == 0, result.stderr
    return analysis, demo / "cli-analysis"


def test_analyze_writes_beside_the_store_what_the_command_line_writes(demo, analyses):
    analysis, cli_folder = analyses
    assert isinstance(analysis, Analysis) and analysis.folder == demo / "demo-analysis"
    ours, theirs = (json.loads((folder / "analysis.json").read_text()) for folder in (analysis.folder, cli_folder))
    assert ours == theirs and ours["thresholds"] == LOOSE
    for name in ("ranked_features.csv", "heldout.csv", "emergence.csv", "feature_examples.json"):
        assert (analysis.folder / name).read_bytes() == (cli_folder / name).read_bytes(), name
    pd.testing.assert_frame_equal(analysis.features, pd.read_parquet(cli_folder / "features.parquet"))
    assert analysis.headline.text() == ours["headline"]["text"] and 'class="szc' in analysis._repr_html_()
    with pytest.raises(OutputExists) as caught:
        saezarr.analyze(demo / "demo.zarr", quiet=True)
    assert str(caught.value) == f"output={demo / 'demo-analysis'}: already exists; use overwrite=True to replace it"


def test_info_is_what_the_command_line_prints(demo):
    info = saezarr.info(demo / "demo.zarr")
    assert info.complete and [c.name for c in info.configs][:2] == ["layer_0_l0_8", "layer_0_l0_24"]
    assert info.to_dict() == json.loads(run_cli("info", demo / "demo.zarr", "--json").stdout)
    assert str(info) + "\n" == run_cli("info", demo / "demo.zarr").stdout


def test_export_npz_writes_what_the_command_line_writes(demo):
    summary = saezarr.export_npz(demo / "demo.zarr", demo / "npz")
    result = run_cli("export-npz", demo / "demo.zarr", "--output", demo / "npz-cli")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in summary.written) == sorted(p.name for p in (demo / "npz-cli").iterdir())
    assert len(summary.written) == 6 and result.stdout.startswith("saezarr: exported 6 configs to ")
    for path in summary.written:
        with np.load(path) as ours, np.load(demo / "npz-cli" / path.name) as theirs:
            assert sorted(ours.files) == sorted(theirs.files)
            for key in ours.files:
                np.testing.assert_array_equal(ours[key], theirs[key])
    per_sentence = saezarr.export_npz(demo / "demo.zarr", demo / "sentences", per_sentence=True)
    assert len(per_sentence.written) == 40 and per_sentence.unit == "sentences"


def test_compare_takes_analyses_or_their_folders(demo, analyses):
    analysis, cli_folder = analyses
    comparison = saezarr.compare([analysis, cli_folder], demo / "compared")
    assert isinstance(comparison, Comparison) and comparison.concepts == ["demo-analysis", "cli-analysis"]
    result = run_cli("compare", analysis.folder, cli_folder, "--output", demo / "compared-cli")
    assert result.returncode == 0, result.stderr
    for name in ("concept_features.csv", "comparison.json"):
        ours = (demo / "compared" / name).read_text()
        assert ours == (demo / "compared-cli" / name).read_text(), name
    pd.testing.assert_frame_equal(comparison.features, pd.read_parquet(demo / "compared-cli" / "features.parquet"))
