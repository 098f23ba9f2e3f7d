"""`saezarr export-npz`: the legacy files, checked against an independent reference, and their safety rules."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from clitools import run_cli, run_main

from saezarr import cli
from saezarr.compat import dtype_kwargs, layer_output
from saezarr.errors import SaezarrError
from saezarr.export.per_config import NPZ_KEYS, export_npz, npz_name, parallel_jobs
from saezarr.machine import usable_cores
from saezarr.store.format import Store

NEAR_THRESHOLD = 1e-5


def build_demo(path: Path, demo_config: Path, *options: str) -> Path:
    """Build the demo store at path with the session's generated demo assets (in-process: faster)."""
    assert cli.main(["build", "--demo", "--config", str(demo_config), "--output", str(path), "--quiet", *options]) == 0
    return path


@pytest.fixture(scope="module")
def demo_store(demo_complete) -> Path:
    """A complete demo store (6 configs, 512 features, chunks of 256 fragments: the last one short), built by
    `cli.main` (tests/conftest.py): read only, a test that changes it copies it."""
    return demo_complete


@pytest.fixture(scope="module")
def partial_store(demo_partial) -> Path:
    """A demo store whose build stopped after its first chunk of 64 fragments (tests/conftest.py): read only."""
    return demo_partial


def store_activations(store: Path, config: str) -> np.ndarray:
    """One config's activations, read with zarr alone."""
    names = list(zarr.open_group(store, mode="r")["config"][:])
    return zarr.open_array(store / "activations", mode="r")[names.index(config)]


def error_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("saezarr: error: "), lines[0]
    return lines[0]


# --- the reference: the test's own tokenization, hooks and numpy JumpReLU ---------------------------------


def reference_fragments(model_dir: Path, csv_path: Path) -> tuple[dict[str, np.ndarray], list[list[int]]]:
    """Token-level fragments of every sentence (each token after BOS ends one), and each sentence's ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list] = {
        key: []
        for key in (
            "fragments",
            "original_sentences",
            "concept_strength_labels",
            "sentence_indices",
            "token_positions",
            "is_final_token",
            "fragment_lengths",
        )
    }
    all_ids = []
    for index, row in enumerate(rows):
        sentence = row["sentence"]
        encoded = tokenizer(sentence, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        all_ids.append(ids)
        for position in range(1, len(ids)):
            text = sentence[: encoded["offset_mapping"][position][1]]
            columns["fragments"].append(text)
            columns["original_sentences"].append(sentence)
            columns["concept_strength_labels"].append(int(row["concept_strength_label"]))
            columns["sentence_indices"].append(index)
            columns["token_positions"].append(position)
            columns["is_final_token"].append(position == len(ids) - 1)
            columns["fragment_lengths"].append(len(text.split()))
    arrays = {key: np.array(values) for key, values in columns.items()}
    arrays["is_final_token"] = arrays["is_final_token"].astype(bool)
    return arrays, all_ids


def reference_residuals(model_dir: Path, all_ids: list[list[int]], layers: list[int]) -> dict[int, np.ndarray]:
    """The output of each decoder layer at every token but BOS, one unpadded sentence at a time."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", **dtype_kwargs(torch.float32)).eval()
    captured: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}

    def hook_for(layer):
        def hook(module, args, output):
            hidden = layer_output(output)
            captured[layer].append(hidden[0, 1:].detach().numpy().copy())

        return hook

    handles = [model.layers[layer].register_forward_hook(hook_for(layer)) for layer in layers]
    with torch.no_grad():
        for ids in all_ids:
            model(input_ids=torch.tensor([ids]))
    for handle in handles:
        handle.remove()
    return {layer: np.concatenate(parts) for layer, parts in captured.items()}


def jumprelu(residuals: np.ndarray, params_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """JumpReLU latents and their distance to the threshold, in numpy."""
    with np.load(params_path) as params:
        pre = residuals @ params["W_enc"] + params["b_enc"]
        threshold = params["threshold"]
    return np.where(pre > threshold, pre, 0).astype(np.float32), np.abs(pre - threshold)


def test_export_matches_an_independent_reference(tiny, tmp_path):
    store, out = tmp_path / "tiny.zarr", tmp_path / "npz"
    built = run_main(
        "build",
        "--input",
        tiny.csv,
        "--output",
        store,
        "--config",
        tiny.config_file,
        "--chunk-fragments",
        "100",
        "--batch-size",
        "7",
        "--quiet",
    )
    assert built.returncode == 0, built.stderr
    exported = run_cli("export-npz", store, "--output", out, "--jobs", "2")
    assert exported.returncode == 0, exported.stderr

    fragments, all_ids = reference_fragments(tiny.model, tiny.csv)
    residuals = reference_residuals(tiny.model, all_ids, sorted({c.layer for c in tiny.configs}))
    assert sorted(p.name for p in out.iterdir()) == sorted(npz_name(c.layer, c.average_l0) for c in tiny.configs)
    for config in tiny.configs:
        latents, distance = jumprelu(residuals[config.layer], tiny.saes / config.path / "params.npz")
        reference = {
            "activations": latents,
            **fragments,
            "layer": np.array(config.layer),
            "average_l0": np.array(float(config.average_l0)),
            "num_features": np.array(latents.shape[1]),
        }
        with np.load(out / npz_name(config.layer, config.average_l0)) as npz:
            assert sorted(npz.files) == sorted(reference)
            for key, expected in reference.items():
                got = npz[key]
                assert (got.dtype, got.shape) == (expected.dtype, expected.shape), key
                if key != "activations":
                    np.testing.assert_array_equal(got, expected, err_msg=key)
        clear = distance > NEAR_THRESHOLD
        assert clear.mean() > 0.99
        assert (latents[clear] > 0).any()
        with np.load(out / npz_name(config.layer, config.average_l0)) as npz:
            np.testing.assert_allclose(npz["activations"][clear], latents[clear], rtol=1e-4, atol=1e-5)


# --- options ------------------------------------------------------------------------------------------------


def test_layers_selection_and_uncompressed(demo_store, tmp_path):
    result = run_cli("export-npz", demo_store, "--output", tmp_path, "--layers", "5", "--uncompressed")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [npz_name(5, 24), npz_name(5, 8)]
    path = tmp_path / npz_name(5, 24)
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["activations"], store_activations(demo_store, "layer_5_l0_24"))
        assert npz["layer"] == 5 and npz["average_l0"] == 24.0 and npz["num_features"] == 512


def test_configs_selection_is_compressed_and_loads_without_pickle(demo_store, tmp_path):
    result = run_cli("export-npz", demo_store, "--output", tmp_path, "--configs", "layer_2_l0_24,layer_0_l0_8")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [npz_name(0, 8), npz_name(2, 24)]
    path = tmp_path / npz_name(2, 24)
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(path, allow_pickle=False) as npz:
        assert tuple(npz.files) == NPZ_KEYS
        assert npz["fragments"].dtype.kind == "U" and npz["original_sentences"].dtype.kind == "U"
        np.testing.assert_array_equal(npz["activations"], store_activations(demo_store, "layer_2_l0_24"))
        np.testing.assert_array_equal(
            npz["fragments"], zarr.open_array(demo_store / "fragment_text", mode="r")[:].tolist()
        )


def test_rerun_skips_complete_files_rewrites_broken_ones_and_overwrite_rewrites_all(demo_store, tmp_path):
    assert run_cli("export-npz", demo_store, "--output", tmp_path).returncode == 0
    before = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    broken = tmp_path / npz_name(0, 8)
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])

    rerun = run_cli("export-npz", demo_store, "--output", tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "exported 1 configs" in rerun.stdout and "5 up-to-date" in rerun.stdout
    after = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    assert [name for name in before if after[name] != before[name]] == [broken.name]
    with np.load(broken) as npz:
        np.testing.assert_array_equal(npz["activations"], store_activations(demo_store, "layer_0_l0_8"))

    assert run_cli("export-npz", demo_store, "--output", tmp_path, "--overwrite").returncode == 0
    rewritten = {p.name: p.stat().st_ino for p in tmp_path.iterdir()}
    assert all(rewritten[name] != after[name] for name in after)


def test_files_older_than_a_rebuild_are_rewritten(demo_config, tmp_path):
    store = build_demo(tmp_path / "one.zarr", demo_config, "--configs", "layer_0_l0_8")
    out = tmp_path / "npz"
    assert run_cli("export-npz", store, "--output", out).returncode == 0
    inode = (out / npz_name(0, 8)).stat().st_ino
    build_demo(store, demo_config, "--configs", "layer_0_l0_8", "--overwrite")
    rerun = run_cli("export-npz", store, "--output", out)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / npz_name(0, 8)).stat().st_ino != inode


def test_jobs_are_capped_by_files_and_memory(monkeypatch):
    monkeypatch.setattr("saezarr.export.per_config._available_memory", lambda: 1000)
    assert parallel_jobs(8, 3, 100) == 3
    assert parallel_jobs(8, 20, 100) == 8
    assert parallel_jobs(8, 20, 300) == 2
    assert parallel_jobs(8, 20, 10_000) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_default_jobs_follow_the_cpu_affinity(monkeypatch):
    monkeypatch.setattr("saezarr.export.per_config._available_memory", lambda: 10**12)
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # as `taskset -c N` or a batch scheduler would
        assert usable_cores() == 1
        assert parallel_jobs(None, 20, 100) == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert parallel_jobs(None, 20, 100) == min(len(allowed), 20)


# --- crashes and leftovers --------------------------------------------------------------------------------------


def _write_part_then_fail(error: BaseException):
    def fake_savez_compressed(file, *args, **arrays):
        file.write(b"PK\x03\x04" + b"\0" * 1000)
        raise error

    return fake_savez_compressed


def test_a_crash_while_writing_leaves_no_file_and_the_next_run_writes_it(demo_store, tmp_path, monkeypatch):
    monkeypatch.setattr(np, "savez_compressed", _write_part_then_fail(RuntimeError("simulated crash")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_npz(demo_store, tmp_path, configs=["layer_2_l0_24"], jobs=1)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    export_npz(demo_store, tmp_path, configs=["layer_2_l0_24"], jobs=1)
    assert [p.name for p in tmp_path.iterdir()] == [npz_name(2, 24)]
    with np.load(tmp_path / npz_name(2, 24)) as npz:
        np.testing.assert_array_equal(npz["activations"], store_activations(demo_store, "layer_2_l0_24"))


def test_a_disk_error_while_writing_is_one_line(demo_store, tmp_path, monkeypatch, capsys):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(np, "savez_compressed", _write_part_then_fail(full))
    code = cli.main(["export-npz", str(demo_store), "--output", str(tmp_path), "--jobs", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert str(tmp_path) in lines[0] and os.strerror(errno.ENOSPC) in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_export_are_removed(demo_store, tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    leftover = tmp_path / f".{npz_name(2, 24)}.{finished.pid}.abcd1234.partial"
    leftover.write_bytes(b"PK\x03\x04 half a file")
    export_npz(demo_store, tmp_path, configs=["layer_2_l0_24"], jobs=1)
    assert [p.name for p in tmp_path.iterdir()] == [npz_name(2, 24)]


# --- refusals ------------------------------------------------------------------------------------------------------


def test_a_partial_store_is_refused_with_each_configs_progress(partial_store, tmp_path):
    out = tmp_path / "npz"
    result = run_cli("export-npz", partial_store, "--output", out)
    assert result.returncode != 0
    line = error_line(result)
    store = Store(partial_store)
    done = store.done_matrix()
    assert not done.all(axis=1).any()
    for ci, name in enumerate(store.config_names):
        assert f"{name} ({int(done[ci].sum())}/{store.n_chunks} chunks)" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (("{missing}",), "no such store"),
        (("{foreign}",), "not a saezarr store"),
        (("{store}", "--configs", "layer_2_l0_25"), "did you mean 'layer_2_l0_24'"),
        (("{store}", "--layers", "3"), "no config on layer 3"),
    ],
    ids=["missing-store", "not-a-store", "unknown-config", "unknown-layer"],
)
def test_input_errors_are_one_line(demo_store, tmp_path, arguments, expected):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.txt").write_text("not zarr")
    paths = {"missing": tmp_path / "nope.zarr", "foreign": tmp_path / "foreign", "store": demo_store}
    out = tmp_path / "npz"
    result = run_cli("export-npz", *(a.format(**paths) for a in arguments), "--output", out)
    assert result.returncode == 2
    assert expected in error_line(result)
    assert not out.exists()


def test_output_that_is_a_file_is_one_line(demo_store, tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"mine")
    result = run_cli("export-npz", demo_store, "--output", target)
    assert result.returncode == 2
    assert f"--output {target}: is a file" in error_line(result)
    assert target.read_bytes() == b"mine"


def test_unwritable_output_folder_is_one_line(demo_store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "locked"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))

    monkeypatch.setattr("saezarr.export.per_config.tempfile.mkstemp", denied)
    code = cli.main(["export-npz", str(demo_store), "--output", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert f"--output {out}: permission denied" in lines[0]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder_is_one_line(demo_store, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        result = run_cli("export-npz", demo_store, "--output", out)
    finally:
        out.chmod(0o700)
    assert result.returncode == 2
    assert f"--output {out}: permission denied" in error_line(result)


def test_a_damaged_chunk_is_one_line_and_leaves_no_file(demo_store, tmp_path, capsys):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(demo_store, damaged)
    store = Store(damaged)
    shard = damaged / "activations" / store.array.metadata.encode_chunk_key((2, 1, 0))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    out = tmp_path / "npz"
    code = cli.main(["export-npz", str(damaged), "--output", str(out), "--configs", store.config_names[2]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1
    assert f"cannot read chunk 1 of {store.config_names[2]}" in lines[0]
    assert list(out.iterdir()) == []


def test_library_errors_are_saezarr_errors(tmp_path):
    with pytest.raises(SaezarrError, match="no such store"):
        export_npz(tmp_path / "missing", tmp_path / "out")


def test_a_file_under_an_exports_name_that_saezarr_did_not_write_is_never_replaced(demo_store, tmp_path):
    mine = tmp_path / npz_name(0, 8)
    mine.write_text("my own notes on layer 0\n")
    for extra in ((), ("--overwrite",)):
        result = run_cli("export-npz", demo_store, "--output", tmp_path, *extra)
        assert result.returncode == 2, result.stderr
        assert error_line(result) == (
            f"saezarr: error: --output {tmp_path}: {mine.name} exists and is not a per-config export; refusing to "
            "overwrite it (move it away or choose another --output)"
        )
        assert mine.read_text() == "my own notes on layer 0\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]  # nothing else written either
