"""`saezarr info`: provenance, sizes and completion of complete and partial stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import run_cli

from saezarr.inputs.sentences import file_sha256
from saezarr.machine import human_bytes
from saezarr.store.format import Store, directory_bytes
from saezarr.testing.synthetic import DEMO_CSV


@pytest.fixture(scope="module")
def stores(demo_complete, demo_partial) -> dict[str, Path]:
    """A complete demo store and one whose build stopped after its first chunk of 64 fragments, both built by
    `cli.main(["build", "--demo", ...])` (tests/conftest.py)."""
    return {"complete": demo_complete, "partial": demo_partial}


def info_json(path: Path) -> dict:
    result = run_cli("info", path, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def expected_completion(path: Path) -> dict[str, tuple[int, int]]:
    """Each config's (done, total) chunks, from the store's completion marks."""
    store = Store(path)
    done = store.done_matrix()
    return {name: (int(done[ci].sum()), store.n_chunks) for ci, name in enumerate(store.config_names)}


@pytest.mark.parametrize("kind", ["complete", "partial"])
def test_json_reports_provenance_sizes_and_completion(stores, kind):
    path = stores[kind]
    info = info_json(path)
    store = Store(path)
    for field in ("model", "model_revision", "sae_repo", "sae_revision", "fragments", "n_sentences", "input_file"):
        assert info[field] == store.attrs[field], field
    assert info["input_sha256"] == file_sha256(DEMO_CSV)
    assert (info["n_fragments"], info["n_features"], info["n_chunks"]) == (
        store.n_fragments,
        store.width,
        store.n_chunks,
    )
    completion = {c["name"]: (c["done_chunks"], c["total_chunks"]) for c in info["configs"]}
    assert completion == expected_completion(path)
    assert info["complete"] == (kind == "complete")
    assert info["bytes_on_disk"] == directory_bytes(path)
    done_fragments = sum(
        stop - start
        for ci in range(store.n_configs)
        for k in range(store.n_chunks)
        if store.is_done(ci, k)
        for start, stop in [store.chunk_bounds(k)]
    )
    assert info["dense_float32_bytes"] == done_fragments * store.width * 4
    assert info["compression_ratio"] == pytest.approx(info["dense_float32_bytes"] / info["bytes_on_disk"], abs=0.01)


def test_the_partial_store_is_partly_built(stores):
    assert all(0 < done < total for done, total in expected_completion(stores["partial"]).values())


@pytest.mark.parametrize("kind", ["complete", "partial"])
def test_text_summary_names_everything(stores, kind):
    path = stores[kind]
    result = run_cli("info", path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    info = info_json(path)
    for value in (
        info["model"],
        info["model_revision"],
        info["sae_repo"],
        info["sae_revision"],
        info["input_sha256"],
        f"{info['n_sentences']} sentences",
        f"{info['n_fragments']} fragments",
        info["fragments"],
        human_bytes(info["bytes_on_disk"]),
        f"{info['compression_ratio']:.1f}x",
    ):
        assert str(value) in text, value
    for name, (done, total) in expected_completion(path).items():
        assert f"{name} {done}/{total}" in text
    layer_lines = [line for line in text.splitlines() if line.strip().startswith("layer ")]
    assert len(layer_lines) == len({c["layer"] for c in info["configs"]})


@pytest.mark.parametrize("name", ["missing.zarr", "plain-folder"])
def test_not_a_store_is_one_line(tmp_path, name):
    (tmp_path / "plain-folder").mkdir()
    result = run_cli("info", tmp_path / name)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"saezarr: error: {tmp_path / name}: ")
    assert result.stdout == ""
