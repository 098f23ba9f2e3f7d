"""Hub repo ids resolved offline from a Hugging Face cache: same store as from local folders, revisions recorded."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from clitools import run_cli

from saezarr.build.pipeline import BuildOptions, build
from saezarr.testing.synthetic import populate_hf_cache, write_config_file

MODEL_ID = "google/gemma-2-2b"
SAE_ID = "google/gemma-scope-2b-pt-res"
MODEL_COMMIT = "1c8f4f1e9f4c3d2b1a0e9d8c7b6a5f4e3d2c1b0a"
SAE_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
REAL_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gemma_scope_16k_configurations.json"
REAL_ENTRY = "layer_0_l0_13"  # an entry of the real config file, served by a copy of the tiny layer_0_l0_6 SAE
LINKED_ENTRY = "layer_0_l0_105"  # one with a published Neuronpedia source, served likewise
CHUNK = 64


def _entry(name: str) -> dict:
    entries = json.loads(REAL_CONFIG.read_text())["configs"]
    return next(e for e in entries if f"layer_{e['layer']}_l0_{e['average_l0']}" == name)


@pytest.fixture(scope="module")
def hub(tiny, tmp_path_factory):
    """A populated offline hub cache, config files naming hub ids, and every command-line run of this module."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "hf-cache"
    saes = root / "sae-source"
    shutil.copytree(tiny.saes, saes)
    for name in (REAL_ENTRY, LINKED_ENTRY):
        real = _entry(name)
        (saes / real["path"]).mkdir(parents=True)
        shutil.copy(tiny.saes / "layer_0/width_16k/average_l0_6/params.npz", saes / real["path"] / "params.npz")
    assert populate_hf_cache(cache, MODEL_ID, tiny.model, MODEL_COMMIT) == MODEL_COMMIT
    assert populate_hf_cache(cache, SAE_ID, saes, SAE_COMMIT) == SAE_COMMIT

    hub_config = write_config_file(root / "hub.json", MODEL_ID, SAE_ID, tiny.configs)
    # the same entries under repo ids that are not in the cache
    absent_config = write_config_file(
        root / "absent.json", "google/gemma-2-9b", "google/gemma-scope-9b-pt-res", tiny.configs
    )
    with_missing = json.loads(hub_config.read_text())
    with_missing["configs"].append({"layer": 12, "average_l0": 999, "path": "layer_12/width_16k/average_l0_999"})
    missing_entry_config = root / "missing-entry.json"
    missing_entry_config.write_text(json.dumps(with_missing))
    # the legacy schema without neuronpedia fields; one entry names its own source, which wins
    legacy = [{k: _entry(name)[k] for k in ("layer", "average_l0", "path")} for name in (LINKED_ENTRY, REAL_ENTRY)]
    legacy.append({"layer": 0, "average_l0": 6, "path": tiny.configs[0].path, "neuronpedia": "custom/0-mine"})
    legacy_config = root / "legacy.json"
    legacy_config.write_text(json.dumps({"model": MODEL_ID, "sae_repo": SAE_ID, "configs": legacy}))

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(root / "hf-home")}
    common = ("--input", tiny.csv, "--quiet", "--chunk-fragments", CHUNK)
    runs = {
        "hub": ("--config", hub_config),
        "override": (
            "--config",
            absent_config,
            "--model",
            MODEL_ID,
            "--sae-repo",
            SAE_ID,
            "--configs",
            "layer_12_l0_6,layer_25_l0_20",
        ),
        "real_config": ("--configs", REAL_ENTRY),  # the default config file: the real one
        "legacy_links": ("--config", legacy_config),
        "missing_model": ("--config", absent_config),
        "missing_sae_repo": ("--config", absent_config, "--model", MODEL_ID),
        "missing_sae_entry": ("--config", missing_entry_config, "--configs", "layer_0_l0_6,layer_12_l0_999"),
    }

    def one(item):
        name, args = item
        output = root / f"{name}.zarr"
        return name, (output, run_cli("build", "--output", output, *common, *args, env=env, cwd=root))

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(one, runs.items()))
    local = root / "local.zarr"
    build(BuildOptions(input=tiny.csv, output=local, config_file=tiny.config_file, quiet=True, chunk_fragments=CHUNK))
    return {"root": root, "cache": cache, "local": local, "runs": results}


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def _ok(hub, name) -> Path:
    output, process = hub["runs"][name]
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith(f"saezarr: built {output}")
    assert "Traceback" not in process.stderr
    return output


def test_hub_build_equals_local_build_bit_for_bit(hub, tiny):
    store = _ok(hub, "hub")
    hub_files, local_files = _files(store), _files(hub["local"])
    assert hub_files.keys() == local_files.keys()
    chunk_files = [k for k in hub_files if k.startswith("activations/c/")]
    assert len(chunk_files) == len(tiny.configs) * -(-540 // CHUNK)
    for key in hub_files:
        if key != "zarr.json":  # the root metadata holds the attributes, which name the sources
            assert hub_files[key] == local_files[key], key
    np.testing.assert_array_equal(
        zarr.open_array(store / "activations")[:], zarr.open_array(hub["local"] / "activations")[:]
    )


def test_hub_build_records_ids_and_commits(hub, tiny):
    attrs = zarr.open_group(_ok(hub, "hub"), mode="r").attrs.asdict()
    local = zarr.open_group(hub["local"], mode="r").attrs.asdict()
    assert attrs["model"] == MODEL_ID and attrs["model_revision"] == MODEL_COMMIT
    assert attrs["sae_repo"] == SAE_ID and attrs["sae_revision"] == SAE_COMMIT
    assert local["model_revision"] == local["sae_revision"] == "local"
    differ = {k for k in attrs.keys() | local.keys() if attrs.get(k) != local.get(k)}
    assert differ == {"model", "model_revision", "sae_repo", "sae_revision", "store_id"}  # store_id: new per store


def test_model_and_sae_repo_options_override_the_config_file(hub, tiny):
    store = _ok(hub, "override")
    attrs = zarr.open_group(store, mode="r").attrs.asdict()
    assert attrs["model"] == MODEL_ID and attrs["model_revision"] == MODEL_COMMIT
    assert attrs["sae_repo"] == SAE_ID and attrs["sae_revision"] == SAE_COMMIT
    assert attrs["configs"] == ["layer_12_l0_6", "layer_25_l0_20"]
    # the selected configs' chunks are byte for byte those of the full hub build (configs 2 and 5 there)
    full = _ok(hub, "hub")
    n_chunks = -(-540 // CHUNK)
    for mine, theirs in ((0, 2), (1, 5)):
        for chunk in range(n_chunks):
            a = (store / f"activations/c/{mine}/{chunk}/0").read_bytes()
            b = (full / f"activations/c/{theirs}/{chunk}/0").read_bytes()
            assert a == b, (mine, chunk)


def test_real_config_file_with_configs_selection(hub):
    store = _ok(hub, "real_config")
    group = zarr.open_group(store, mode="r")
    attrs = group.attrs.asdict()
    assert attrs["model"] == MODEL_ID and attrs["sae_repo"] == SAE_ID
    assert attrs["configs"] == [REAL_ENTRY]
    entry = _entry(REAL_ENTRY)
    assert group["sae_path"][:].tolist() == [entry["path"]]
    assert group["average_l0"][:].tolist() == [entry["average_l0"]]
    # served by a copy of the tiny layer_0_l0_6 SAE: equal to that config of the local build
    np.testing.assert_array_equal(group["activations"][0], zarr.open_array(hub["local"] / "activations")[0])


def _refused(hub, name) -> str:
    output, process = hub["runs"][name]
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert "Traceback" not in process.stderr
    assert process.stderr.count("\n") == 1 and process.stderr.startswith("saezarr: error: ")
    assert not output.exists()
    return process.stderr


def test_missing_model_repo_offline_is_one_clear_line(hub):
    message = _refused(hub, "missing_model")
    assert message.startswith("saezarr: error: --model google/gemma-2-9b: could not get config.json (")


def test_missing_sae_repo_offline_is_one_clear_line(hub, tiny):
    message = _refused(hub, "missing_sae_repo")
    first = tiny.configs[0].path
    assert message.startswith(
        f"saezarr: error: --sae-repo google/gemma-scope-9b-pt-res: could not get {first}/params.npz ("
    )


def test_missing_sae_in_a_cached_repo_is_one_clear_line(hub):
    message = _refused(hub, "missing_sae_entry")
    assert message.startswith(
        f"saezarr: error: --sae-repo {SAE_ID}: could not get layer_12/width_16k/average_l0_999/params.npz ("
    )


def test_nothing_was_downloaded_or_written_outside_the_cache(hub):
    """Offline runs leave the populated cache as it was (no new repos), and write no stray stores."""
    repos = sorted(p.name for p in hub["cache"].iterdir() if p.name.startswith("models--"))
    assert repos == ["models--google--gemma-2-2b", "models--google--gemma-scope-2b-pt-res"]
    stores = sorted(p.name for p in hub["root"].glob("*.zarr"))
    assert stores == ["hub.zarr", "legacy_links.zarr", "local.zarr", "override.zarr", "real_config.zarr"]


def test_a_legacy_config_gets_the_published_neuronpedia_sources(hub):
    """Without neuronpedia fields: the exact source of the SAE where published, none where not; a given one wins."""
    group = zarr.open_group(_ok(hub, "legacy_links"), mode="r")
    sources = [str(s) for s in group["neuronpedia_source"][:]]
    assert sources == [_entry(LINKED_ENTRY)["neuronpedia"], "", "custom/0-mine"]
    assert _entry(LINKED_ENTRY)["neuronpedia"] == "gemma-2-2b/0-gemmascope-res-16k"
