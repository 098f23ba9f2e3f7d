"""The bundled catalogues: the script's committed outputs, usable by name, listed by `saezarr catalogues`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from clitools import REPO, run_cli

from saezarr.errors import SaezarrError
from saezarr.inputs import saelens
from saezarr.inputs.catalogues import DEFAULT, list_catalogues, neuronpedia_source
from saezarr.inputs.configs import SAEConfig, load_config_file, parse_width, width_tag, with_neuronpedia
from saezarr.saes.locate import describe_configs

BUNDLED = REPO / "saezarr" / "data" / "catalogues"
RELEASES = REPO.parent / "shared" / "data" / "gemma_scope_res_releases.json"
LEGACY = REPO / "config" / "gemma_scope_16k_configurations.json"


def test_the_bundled_files_are_the_scripts_output(tmp_path):
    if not RELEASES.is_file():
        pytest.skip(f"{RELEASES} (the script's input) is not in this checkout")
    script = [sys.executable, str(REPO / "scripts" / "make_catalogues.py"), "--output", str(tmp_path)]
    subprocess.run([*script, "--releases", str(RELEASES)], check=True, capture_output=True)
    made = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    assert made == {p.name: p.read_bytes() for p in BUNDLED.glob("*.json")}


def test_the_default_catalogue_is_the_legacy_config_file():
    legacy, bundled = json.loads(LEGACY.read_text()), load_config_file(DEFAULT)
    assert (bundled.model, bundled.sae_repo) == (legacy["model"], legacy["sae_repo"])
    assert [(c.layer, c.average_l0, c.path, c.neuronpedia or None) for c in bundled.configs] == [
        (e["layer"], e["average_l0"], e["path"], e["neuronpedia"]) for e in legacy["configs"]
    ]
    assert [c.name for c in bundled.configs] == [f"layer_{e['layer']}_l0_{e['average_l0']}" for e in legacy["configs"]]


def test_every_catalogue_loads_with_unique_names_and_one_width():
    found = list_catalogues()
    assert len(found) >= 30 and DEFAULT in {c.name for c in found}
    for catalogue in found:
        loaded = load_config_file(catalogue.name)
        configs, _ = describe_configs(loaded.sae_repo, loaded.configs, catalogue.name)
        assert len({c.name for c in configs}) == len(configs) == catalogue.n_configs
        widths = {re.search(r"width_(\w+?)[/_]", c.path).group(1) for c in configs}
        assert len(widths) == 1 and catalogue.name.endswith(f"-{widths.pop()}"), catalogue.name
        assert re.fullmatch(r"google/gemma-(2-(2b|9b|27b)(-it)?|3-(270m|1b|4b|12b|27b)(-pt|-it)?)", catalogue.model)


@pytest.mark.parametrize(("size", "layers"), [("270m", 18), ("1b", 26), ("4b", 34), ("12b", 48), ("27b", 62)])
def test_gemma_scope_2_resid_post_all_covers_every_layer(size, layers):
    for kind in ("pt", "it"):
        config = load_config_file(f"gemma-scope-2-{size}-{kind}-res-all-16k")
        assert config.sae_repo == f"google/gemma-scope-2-{size}-{kind}"
        assert sorted({c.layer for c in config.configs}) == list(range(layers))
        assert {c.name for c in config.configs if c.layer == 5} == {
            "layer_5_width_16k_l0_small",
            "layer_5_width_16k_l0_big",
        }
        assert all(c.width == 16384 and c.neuronpedia == "" for c in config.configs)


def test_neuronpedia_sources_are_exact_and_never_another_saes():
    legacy = json.loads(LEGACY.read_text())
    for entry in legacy["configs"]:
        assert neuronpedia_source(legacy["sae_repo"], entry["path"]) == (entry["neuronpedia"] or "")
    assert neuronpedia_source("someone/else", legacy["configs"][3]["path"]) is None
    given = SAEConfig(0, 13, "layer_0/width_16k/average_l0_13", neuronpedia="mine/0")
    unknown = SAEConfig(0, 105, "layer_0/width_16k/average_l0_105")
    assert [c.neuronpedia for c in with_neuronpedia([given, unknown], legacy["sae_repo"])] == [
        "mine/0",
        "gemma-2-2b/0-gemmascope-res-16k",
    ]
    assert with_neuronpedia([unknown], "/some/local/folder")[0].neuronpedia == ""


def test_an_unknown_name_is_one_line(tmp_path):
    with pytest.raises(SaezarrError, match=r"^gemma-scope-nope: no such config file or bundled catalogue"):
        load_config_file("gemma-scope-nope")


def test_the_catalogues_command_lists_them_for_scripts():
    result = run_cli("catalogues", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    bundled = [c for c in listed if c["origin"] == "bundled"]
    assert [c["name"] for c in bundled] == sorted(p.stem for p in BUNDLED.glob("*.json"))
    one = next(c for c in listed if c["name"] == "gemma-scope-2-1b-pt-res-all-16k")
    assert one["model"] == "google/gemma-3-1b-pt" and one["n_configs"] == 52
    assert one["site"] == "blocks.L.hook_resid_post" and one["width"] == 16384
    for catalogue in bundled:  # each as its config file says: the site its SAEs read, their width, their number
        loaded = load_config_file(catalogue["name"])
        configs, _ = describe_configs(loaded.sae_repo, loaded.configs, catalogue["name"])
        assert catalogue["model"] == loaded.model and catalogue["n_configs"] == len(configs)
        assert catalogue["site"] == "blocks.L.hook_resid_post"  # every bundled catalogue is of residual SAEs
        tag = re.search(r"width_(\w+?)[/_]", configs[0].path).group(1)
        assert catalogue["width"] == parse_width(tag, "") and catalogue["name"].endswith(f"-{tag}")
    releases = [c for c in listed if c["origin"] != "bundled"]  # and every SAELens release
    assert [c["name"] for c in releases] == saelens.names()
    assert {c["origin"] for c in releases} == {f"sae-lens {saelens.version()}"}
    assert [c["n_configs"] for c in releases] == [len(saelens.saes(c["name"])) for c in releases]


def _width_cell(catalogue: dict) -> str:
    if catalogue["width"] is not None:
        return width_tag(catalogue["width"])
    return "mixed" if len(catalogue["widths"]) > 1 else "?"


def test_the_catalogues_command_prints_aligned_sorted_columns():
    plain = run_cli("catalogues")
    assert plain.returncode == 0 and plain.stderr == ""
    lines = plain.stdout.splitlines()
    listed = json.loads(run_cli("catalogues", "--json").stdout)
    assert lines[0].split() == ["name", "model", "site", "width", "SAEs"]
    rows = [line.split() for line in lines[1:]]
    assert rows == [[c["name"], c["model"], c["site"], _width_cell(c), str(c["n_configs"])] for c in listed]
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert ["gemma-scope-2b-pt-res-16k", "google/gemma-2-2b", "blocks.L.hook_resid_post", "16k", "135"] in rows
    # SAELens' releases: sites as the registry's names say them, widths where known, `mixed` where they differ
    gpt2 = ["gpt2-small-res-jb", "gpt2", "blocks.L.hook_resid_post,blocks.L.hook_resid_pre", "?", "13"]
    assert gpt2 in rows
    assert ["gemma-scope-2b-pt-res", "google/gemma-2-2b", "blocks.L.hook_resid_post,hook_embed", "mixed"] in [
        row[:4] for row in rows
    ]
    # aligned: every column starts, and every number column ends, at one place on every line
    starts = [[m.start() for m in re.finditer(r"\S+", line)] for line in lines]
    ends = [[m.end() for m in re.finditer(r"\S+", line)] for line in lines]
    assert len({tuple(s[:3]) for s in starts}) == 1 and len({tuple(e[3:]) for e in ends}) == 1


def test_catalogues_piped_into_head_ends_quietly():
    """`saezarr catalogues | head -1`: the first line, and no traceback when head leaves."""
    result = subprocess.run(
        f"{shlex.quote(sys.executable)} -m saezarr catalogues | head -1",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.split() == ["name", "model", "site", "width", "SAEs"]


def test_catalogues_into_a_closed_pipe_ends_quietly():
    """`saezarr catalogues | head`: a reader that has gone is no error and no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        result = subprocess.run(
            [sys.executable, "-m", "saezarr", "catalogues"], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141 and result.stderr == "", result.stderr
