"""SAELens' registry as saezarr ships it: the data is the installed sae-lens registry's, and every release reads as a
config file by name (`--config RELEASE`), without the network."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
from clitools import REPO, run_main, write_csv

from saezarr.errors import ConfigError
from saezarr.inputs import catalogues, saelens
from saezarr.inputs.configs import load_config_file, select_configs
from saezarr.saes.locate import describe_configs

DATA = REPO / "saezarr" / "data" / "saelens_releases.json"
TL_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_resid_mid|hook_mlp_out|hook_attn_out)$")


@pytest.fixture(scope="module")
def registry() -> dict:
    """The installed sae-lens registry (the test is skipped where another version than the data's is installed)."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("sae_lens")
    installed = importlib.metadata.version("sae-lens")
    if installed != saelens.version():
        pytest.skip(f"sae-lens {installed} is installed; the data is of sae-lens {saelens.version()}")
    from importlib import resources

    return yaml.safe_load((resources.files("sae_lens") / "pretrained_saes.yaml").read_text())


def test_every_release_and_sae_of_the_registry_is_in_the_data(registry):
    assert saelens.names() == sorted(registry)
    for name, release in registry.items():
        facts, saes = saelens.release(name), saelens.saes(name)
        assert len(saes) == len(release["saes"]), name
        assert (facts["repo_id"], facts["saelens_model"]) == (release["repo_id"], release["model"])
        assert facts["format"] == release.get("conversion_func")
        assert facts.get("config_overrides") == release.get("config_overrides")
        for sae, given in zip(saes, release["saes"]):
            assert (sae["id"], sae["path"]) == (given["id"], str(given["path"]))
            assert sae["neuronpedia"] == given.get("neuronpedia")
            assert sae["norm_scaling_factor"] == given.get("norm_scaling_factor")
            if "l0" in given:
                assert sae["average_l0"] == given["l0"]


def test_sites_layers_and_models_are_as_the_registry_names_them(registry):
    official = pytest.importorskip("transformer_lens.loading_from_pretrained").get_official_model_name
    checked = 0
    for name, release in registry.items():
        given = release["model"]  # TransformerLens' name; a hub id TransformerLens does not know is kept
        try:
            expected = official(given)
        except ValueError:
            expected = given
        assert saelens.release(name)["model"] == expected and "/" in expected or expected == "gpt2", name
        for sae, given in zip(saelens.saes(name), release["saes"]):
            named = TL_HOOK.match(given["id"])  # an id that is a hook name: the site and layer it says
            if named:
                assert (sae["hook"], sae["layer"]) == (given["id"], int(named.group(1))), (name, given["id"])
                checked += 1
    assert checked > 200
    assert saelens.release("pythia-70m-deduped-res-sm")["model"] == "EleutherAI/pythia-70m-deduped"


def test_widths_are_the_folders_tags(registry):
    for name in ("gemma-scope-2b-pt-res", "gemma-scope-2-1b-pt-res-all"):
        for sae, given in zip(saelens.saes(name), registry[name]["saes"]):
            tag = re.search(r"width_(\d+)k", given["path"])  # the power of two the tag rounds down
            assert tag is None or sae["width"] == next(2**p for p in range(40) if 2**p // 1000 == int(tag.group(1)))
    assert {sae["width"] for sae in saelens.saes("llama_scope_lxr_8x")} == {None}  # no name tags it


def test_the_data_is_the_scripts_output(registry, tmp_path):
    output = tmp_path / "saelens_releases.json"
    script = [sys.executable, str(REPO / "scripts" / "make_saelens_catalogue.py"), "--output", str(output)]
    subprocess.run(script, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert output.read_bytes() == DATA.read_bytes()


def test_gpt2_small_res_jb_resolves_to_gpt2_and_its_folders(registry):
    config = load_config_file("gpt2-small-res-jb")
    given = registry["gpt2-small-res-jb"]
    assert (config.model, config.sae_repo) == ("gpt2", given["repo_id"])
    assert [c.path for c in config.configs] == [sae["path"] for sae in given["saes"]]
    assert [c.name for c in config.configs] == [sae["id"] for sae in given["saes"]]
    assert config.configs[8].hook == "blocks.8.hook_resid_pre" and config.configs[8].layer == 8
    assert config.configs[8].neuronpedia == given["saes"][8]["neuronpedia"]
    assert config.model_from_pretrained_kwargs == {"center_writing_weights": True}
    assert select_configs(config.configs, layers=[8]) == (config.configs[8],)
    assert [c.name for c in select_configs(config.configs, names=["blocks.3.hook_resid_pre"])] == [
        "blocks.3.hook_resid_pre"
    ]


def test_a_release_is_described_without_the_network():
    """The registry says each SAE's site and layer: described with no repository resolved."""
    kinds = {
        "gpt2-small-resid-post-v5-32k": {"hook_resid_post"},
        "gpt2-small-res-jb": {"hook_resid_pre", "hook_resid_post"},
    }
    for release, expected in kinds.items():
        config = load_config_file(release)
        described, source = describe_configs(config.sae_repo, config.configs, release)
        assert source is None and {c.layer for c in described} == set(range(12))
        assert {c.hook.rsplit(".", 1)[-1] for c in described if c.hook} == expected


@pytest.mark.parametrize(
    ("release", "model", "repo", "count"),
    [
        (
            "pythia-70m-deduped-res-sm",
            "EleutherAI/pythia-70m-deduped",
            "ctigges/pythia-70m-deduped__res-sm_processed",
            7,
        ),
        ("llama_scope_lxr_8x", "meta-llama/Llama-3.1-8B", "fnlp/Llama3_1-8B-Base-LXR-8x", 32),
        ("gemma-scope-2b-pt-mlp-canonical", "google/gemma-2-2b", "google/gemma-scope-2b-pt-mlp", 52),
        ("mwhanna-qwen3-4b-transcoders", "Qwen/Qwen3-4B", "mwhanna/qwen3-4b-transcoders", 36),
    ],
)
def test_named_releases_resolve(release, model, repo, count):
    config = load_config_file(release)
    assert (config.model, config.sae_repo, len(config.configs)) == (model, repo, count)
    assert [c.layer for c in config.configs if c.layer is not None]


def test_every_release_reads_as_a_config_file_with_unique_names():
    for name in saelens.names():
        config = load_config_file(name)
        assert len({c.name for c in config.configs}) == len(config.configs) == len(saelens.saes(name))
    assert not set(saelens.names()) & set(catalogues.names())  # a bundled catalogue would hide a release


def test_llama_scope_carries_its_norm_scaling_factors():
    config = load_config_file("llama_scope_lxr_8x")
    assert [c.norm_scaling_factor for c in config.configs] == [
        sae["norm_scaling_factor"] for sae in saelens.saes("llama_scope_lxr_8x")
    ]
    assert all(c.norm_scaling_factor for c in config.configs)


def test_an_unknown_release_is_one_line_with_close_names():
    with pytest.raises(ConfigError) as caught:
        load_config_file("gpt2-small-res-jbb")
    message = str(caught.value)
    assert message.startswith("gpt2-small-res-jbb: no such config file or bundled catalogue or SAELens release")
    assert "config_file" in message and "did you mean 'gpt2-small-res-jb'" in message and "\n" not in message


def test_an_unknown_release_on_the_command_line_names_the_flag(tmp_path):
    data = write_csv(tmp_path / "two.csv", "sentence,concept_strength_label\nHello.,1\n")
    result = run_main(
        "build", "--input", data, "--output", tmp_path / "out.zarr", "--config", "llama_scope_lxr_8", "--quiet"
    )
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("saezarr: error: llama_scope_lxr_8: no such config file")
    assert "--config (did you mean 'llama_scope_lxr_8x'" in result.stderr
