"""Stopping and resuming: a resumed store equals an uninterrupted one bit for bit; mismatched resumes are refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from clitools import run_main
from faults.faultkit import compare_stores

from saezarr.build.pipeline import BuildOptions, build
from saezarr.errors import SaezarrError

CHUNK = 32
N_FRAGMENTS = 540  # token fragments of the demo CSV with the tiny tokenizer
N_CHUNKS = -(-N_FRAGMENTS // CHUNK)
PARTIAL = 5
SUMMARY = re.compile(
    r"^saezarr: (?P<state>built|partly built) (?P<store>.+?): (?P<configs>\d+) configs x (?P<fragments>\d+) fragments .*"
    r"model passes (?P<passes>\d+), SAE loads (?P<loads>\d+), "
    r"chunks written (?P<written>\d+), already done (?P<skipped>\d+) of (?P<total>\d+)\n$"
)
SMALL_SAE_MEMORY = 40_000  # two 32x128 encoders (17 KiB each) per pass: one pass per layer


def options(tiny, output: Path, **kwargs) -> BuildOptions:
    values = dict(input=tiny.csv, output=output, config_file=tiny.config_file, quiet=True, chunk_fragments=CHUNK)
    values.update(kwargs)
    return BuildOptions(**values)


def files(store: Path) -> dict[str, bytes]:
    """Every file of a store by relative path, with its bytes (the root zarr.json without the random store_id)."""
    out = {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}
    if "zarr.json" in out:
        root = json.loads(out["zarr.json"])
        root.get("attributes", {}).pop("store_id", None)
        out["zarr.json"] = json.dumps(root, sort_keys=True).encode()
    return out


def marks(store: Path) -> set[tuple[str, int]]:
    return {(p.parent.name, int(p.name)) for p in (store / "_saezarr" / "done").glob("*/*")}


def parse_summary(stdout: str) -> dict:
    match = SUMMARY.match(stdout)
    assert match, stdout
    return {k: (int(v) if v.isdigit() else v) for k, v in match.groupdict().items()}


@pytest.fixture(scope="module")
def runs(tiny, tiny_store, tmp_path_factory):
    """An uninterrupted store (tests/conftest.py's tiny_store: `options(tiny, ...)`, built once for the files that
    compare with it); a store stopped by --max-chunks then resumed (both by the command line); and the command-line
    refusals."""
    root = tmp_path_factory.mktemp("resume")
    full, full_summary = tiny_store.path, tiny_store.summary
    assert full_summary.complete and full_summary.n_fragments == N_FRAGMENTS
    guarded = root / "guarded.zarr"  # a partial store that refused commands must leave alone
    build(options(tiny, guarded, max_chunks=2))
    guarded_before = files(guarded)

    resumed = root / "resumed.zarr"
    common = ("--input", tiny.csv, "--config", tiny.config_file, "--quiet")
    first = {
        "partial": ("build", "--output", resumed, *common, "--chunk-fragments", CHUNK, "--max-chunks", PARTIAL),
        "exists": ("build", "--output", guarded, *common),
        "dtype": ("build", "--output", guarded, *common, "--resume", "--dtype", "bfloat16"),
    }
    processes = {name: run_main(*args) for name, args in first.items()}
    partial_files = files(resumed)
    processes["resume"] = run_main("build", "--output", resumed, *common, "--resume")
    return {
        "root": root,
        "full": full,
        "full_summary": full_summary,
        "resumed": resumed,
        "partial_files": partial_files,
        "guarded": guarded,
        "guarded_before": guarded_before,
        "processes": processes,
    }


def test_partial_build_stops_after_max_chunks(runs, tiny):
    process = runs["processes"]["partial"]
    assert process.returncode == 0, process.stderr
    summary = parse_summary(process.stdout)
    assert summary["state"] == "partly built"
    n = len(tiny.configs)
    assert (summary["written"], summary["skipped"], summary["total"]) == (PARTIAL * n, 0, N_CHUNKS * n)
    partial = runs["partial_files"]
    assert {(name, chunk) for name in (c.name for c in tiny.configs) for chunk in range(PARTIAL)} == {
        (Path(k).parent.name, int(Path(k).name)) for k in partial if k.startswith("_saezarr/done/")
    }
    assert "_saezarr/lock" not in partial
    chunk_files = {k for k in partial if k.startswith("activations/c/")}
    assert chunk_files == {f"activations/c/{c}/{k}/0" for c in range(n) for k in range(PARTIAL)}
    # the written chunks already equal the uninterrupted build's
    full = files(runs["full"])
    for key in chunk_files:
        assert partial[key] == full[key], key


def test_resumed_build_equals_uninterrupted_bit_for_bit(runs):
    process = runs["processes"]["resume"]
    assert process.returncode == 0, process.stderr
    assert compare_stores(runs["resumed"], runs["full"]) == []  # every file's bytes (root metadata: but its store_id)
    assert len([k for k in files(runs["full"]) if k.startswith("activations/c/")]) == 6 * N_CHUNKS
    a = zarr.open_array(runs["resumed"] / "activations", mode="r")[:]
    b = zarr.open_array(runs["full"] / "activations", mode="r")[:]
    assert not np.isnan(a).any()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("overlap", [True, False], ids=["writes behind the compute (GPU mode)", "writes between steps"])
def test_both_write_modes_give_the_same_store(tiny, runs, tmp_path, overlap):
    store = tmp_path / "store.zarr"
    assert build(options(tiny, store, overlap_writes=overlap, workers=3)).complete
    assert compare_stores(store, runs["full"]) == []


def test_resume_does_not_recompute_marked_chunks(runs, tiny):
    summary = parse_summary(runs["processes"]["resume"].stdout)
    n = len(tiny.configs)
    assert summary["state"] == "built"
    assert summary["total"] == N_CHUNKS * n == runs["full_summary"].units_total
    assert summary["skipped"] == PARTIAL * n
    assert summary["written"] == summary["total"] - summary["skipped"]
    assert (summary["passes"], summary["loads"]) == (1, n)
    # the chunk files written before the stop were not rewritten
    resumed = runs["resumed"]
    for key, content in runs["partial_files"].items():
        if key.startswith("activations/c/"):
            assert (resumed / key).read_bytes() == content


def test_existing_store_without_resume_is_refused(runs):
    process = runs["processes"]["exists"]
    guarded = runs["guarded"]
    assert process.returncode == 2
    assert process.stderr == (
        f"saezarr: error: --output {guarded}: a store exists there; use --resume to continue it or --overwrite to replace it\n"
    )
    assert files(guarded) == runs["guarded_before"]


def test_resume_with_other_dtype_is_refused_on_the_command_line(runs):
    process = runs["processes"]["dtype"]
    guarded = runs["guarded"]
    assert process.returncode == 2
    assert process.stdout == ""
    assert process.stderr == (
        f"saezarr: error: --resume {guarded}: the store was started with a different model dtype "
        '("float32", now "bfloat16"); use --overwrite to start over\n'
    )
    assert files(guarded) == runs["guarded_before"]


@pytest.fixture(scope="module")
def copies(tiny, runs):
    """Byte-identical copies of the model and SAE folders at other paths, and an edited input."""
    root = runs["root"]
    model = shutil.copytree(tiny.model, root / "model-copy")
    saes = shutil.copytree(tiny.saes, root / "saes-copy")
    text = tiny.csv.read_text(encoding="utf-8")
    edited = root / "edited.csv"
    edited.write_text(text.replace(",0\n", ",1\n", 1), encoding="utf-8")
    same = root / "same-bytes.csv"
    same.write_bytes(tiny.csv.read_bytes())
    return {"model": model, "saes": saes, "edited": edited, "same": same}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"input": "edited"}, "input sha256"),
        ({"configs": ["layer_0_l0_6", "layer_12_l0_6"]}, "configs"),
        ({"layers": [25]}, "configs"),
        ({"model": "model"}, "model"),
        ({"sae_repo": "saes"}, "sae repo"),
        ({"dtype": "bfloat16"}, "model dtype"),
        ({"fragments": "word"}, "fragments"),
    ],
    ids=["input", "configs", "layers", "model", "sae_repo", "dtype", "fragments"],
)
def test_resume_with_a_difference_is_refused(tiny, runs, copies, change, field):
    guarded = runs["guarded"]
    kwargs = {
        key: (copies[value] if isinstance(value, str) and value in copies else value) for key, value in change.items()
    }
    for key in ("model", "sae_repo"):
        if key in kwargs:
            kwargs[key] = str(kwargs[key])
    with pytest.raises(SaezarrError) as caught:
        build(options(tiny, guarded, resume=True, **kwargs))
    message = str(caught.value)
    assert message.startswith(f"resume=True {guarded}: the store was started with a different {field} (")
    assert message.endswith("); use overwrite=True to start over")
    assert "\n" not in message
    if field == "model":
        assert str(tiny.model.resolve()) in message and str(copies["model"].resolve()) in message
    if field == "fragments":
        assert '("token", now "word")' in message
    assert files(guarded) == runs["guarded_before"]


def test_resume_accepts_a_byte_identical_copy_of_the_input(tiny, runs, copies, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(runs["guarded"], store)
    summary = build(options(tiny, store, input=copies["same"], resume=True))
    assert summary.complete and summary.units_skipped == 2 * len(tiny.configs)
    assert summary.units_written == summary.units_total - summary.units_skipped
    assert compare_stores(store, runs["full"]) == []


def test_resume_on_a_missing_store_starts_it(tiny, runs, tmp_path):
    store = tmp_path / "fresh.zarr"
    summary = build(options(tiny, store, resume=True))
    assert summary.complete and summary.units_skipped == 0 and summary.units_written == summary.units_total
    assert compare_stores(store, runs["full"]) == []


def test_resume_of_a_complete_store_writes_nothing(tiny, runs, tmp_path):
    store = tmp_path / "complete.zarr"
    shutil.copytree(runs["full"], store)
    before = files(store)
    summary = build(options(tiny, store, resume=True))
    assert summary.complete
    assert (summary.units_written, summary.forward_batches, summary.model_passes, summary.sae_loads) == (0, 0, 0, 0)
    assert summary.units_skipped == summary.units_total
    assert files(store) == before


def test_overwrite_replaces_the_store(tiny, runs, tmp_path):
    store = tmp_path / "replaced.zarr"
    shutil.copytree(runs["guarded"], store)
    summary = build(options(tiny, store, overwrite=True, fragments="final", configs=["layer_25_l0_6"]))
    assert summary.complete and summary.n_fragments == 40 and summary.units_total == 2
    attrs = zarr.open_group(store, mode="r").attrs.asdict()
    assert attrs["fragments"] == "final" and attrs["configs"] == ["layer_25_l0_6"]
    assert marks(store) == {("layer_25_l0_6", 0), ("layer_25_l0_6", 1)}
    assert {k for k in files(store) if k.startswith("activations/c/")} == {"activations/c/0/0/0", "activations/c/0/1/0"}
    # nothing of the replaced store or of the staging is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replaced.zarr"]
    # the final fragments' values are the token store's values at each sentence's last token
    import xarray as xr

    full = xr.open_zarr(runs["full"])
    finals = full["activations"].sel(config="layer_25_l0_6").values[full["is_final_token"].values]
    np.testing.assert_allclose(zarr.open_array(store / "activations", mode="r")[0], finals, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def multipass(tiny, runs):
    """One pass per layer (small SAE memory): a build stopped inside the second pass, then resumed."""
    root = runs["root"]
    full = root / "multipass-full.zarr"
    build(options(tiny, full, sae_memory=SMALL_SAE_MEMORY))
    store = root / "multipass.zarr"
    stop = N_CHUNKS + 3
    partial = build(options(tiny, store, sae_memory=SMALL_SAE_MEMORY, max_chunks=stop))
    done_after_partial = marks(store)
    resumed = build(options(tiny, store, sae_memory=SMALL_SAE_MEMORY, resume=True))
    return {"full": full, "store": store, "partial": partial, "resumed": resumed, "done": done_after_partial}


def test_multipass_resume_equals_uninterrupted(multipass):
    assert compare_stores(multipass["store"], multipass["full"]) == []
    a = zarr.open_array(multipass["store"] / "activations", mode="r")[:]
    assert not np.isnan(a).any()
    np.testing.assert_array_equal(a, zarr.open_array(multipass["full"] / "activations", mode="r")[:])


def test_multipass_resume_counters(tiny, multipass):
    partial, resumed = multipass["partial"], multipass["resumed"]
    # pass 1 (layer 0) finished, pass 2 (layer 12) stopped after 3 chunks, pass 3 (layer 25) not started
    expected = {(n, k) for n in ("layer_0_l0_6", "layer_0_l0_20") for k in range(N_CHUNKS)}
    expected |= {(n, k) for n in ("layer_12_l0_6", "layer_12_l0_20") for k in range(3)}
    assert multipass["done"] == expected
    assert not partial.complete and partial.units_written == len(expected)
    assert (partial.model_passes, partial.sae_loads) == (2, 4)
    assert resumed.complete
    assert resumed.units_skipped == len(expected)
    assert resumed.units_written == resumed.units_total - len(expected) == 6 * N_CHUNKS - len(expected)
    # the finished layer-0 pass is not run again
    assert (resumed.model_passes, resumed.sae_loads) == (2, 4)


def test_max_chunks_used_up_at_a_pass_boundary_loads_no_more_saes(tiny, tmp_path):
    """A budget that ends with a pass must not load (and count) the next pass's SAEs."""
    summary = build(options(tiny, tmp_path / "boundary.zarr", sae_memory=SMALL_SAE_MEMORY, max_chunks=N_CHUNKS))
    assert summary.units_written == 2 * N_CHUNKS
    assert (summary.model_passes, summary.sae_loads) == (1, 2)


def test_resume_with_a_changed_sae_path_is_refused(tiny, runs):
    """Same config name, another SAE folder: the store's `sae_path` coordinate decides."""
    from saezarr.inputs.configs import SAEConfig
    from saezarr.testing.synthetic import write_config_file

    guarded = runs["guarded"]
    other = "layer_0/width_16k/average_l0_20"  # a real SAE of the repo, under the name layer_0_l0_6
    moved = [SAEConfig(c.layer, c.average_l0, other) if c.name == "layer_0_l0_6" else c for c in tiny.configs]
    config_file = write_config_file(runs["root"] / "moved.json", str(tiny.model), str(tiny.saes), moved)
    with pytest.raises(SaezarrError) as caught:
        build(options(tiny, guarded, config_file=config_file, resume=True))
    assert str(caught.value) == (
        f"resume=True {guarded}: the store was started with a different SAE path for config layer_0_l0_6 "
        f'("layer_0/width_16k/average_l0_6", now "{other}"); use overwrite=True to start over'
    )
    assert files(guarded) == runs["guarded_before"]


def test_resume_after_a_tokenizer_change_is_refused(tiny, tmp_path):
    """A retrained tokenizer in the same model folder must not add a second tokenization to the store."""
    from saezarr.inputs.fragments import make_fragments
    from saezarr.inputs.sentences import read_labeled_csv
    from saezarr.models.language_model import load_tokenizer, resolve_model
    from saezarr.testing.synthetic import write_tokenizer

    model = shutil.copytree(tiny.model, tmp_path / "model")
    store = tmp_path / "store.zarr"
    build(options(tiny, store, model=str(model), max_chunks=1))
    before = files(store)
    started = zarr.open_group(store, mode="r").attrs["tokens_sha256"]
    write_tokenizer(model, tiny.sentences, vocab_size=300)  # a smaller vocabulary splits words differently
    now = make_fragments(read_labeled_csv(tiny.csv), load_tokenizer(resolve_model(str(model))), "token").tokens_sha256()
    assert now != started
    with pytest.raises(SaezarrError) as caught:
        build(options(tiny, store, model=str(model), resume=True))
    assert str(caught.value) == (
        f"resume=True {store}: the store was started with a different tokenization (sha256 of the token ids and fragment "
        f'positions) ("{started}", now "{now}"); use overwrite=True to start over'
    )
    assert files(store) == before


def test_resume_of_a_store_without_a_token_fingerprint_is_refused(tiny, runs, tmp_path):
    """Stores from before the fingerprint: the tokenization cannot be checked, so the resume is refused."""
    import json

    store = tmp_path / "old.zarr"
    shutil.copytree(runs["guarded"], store)
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["tokens_sha256"]
    (store / "zarr.json").write_text(json.dumps(meta))
    before = files(store)
    with pytest.raises(SaezarrError) as caught:
        build(options(tiny, store, resume=True))
    version = meta["attributes"]["saezarr_version"]
    assert str(caught.value) == (
        f"resume=True {store}: the store records no tokenization (sha256 of the token ids and fragment positions): an "
        f"older saezarr ({version}) started it, so this resume could not be checked against it; finish it with that "
        "saezarr or use overwrite=True to start over"
    )
    assert files(store) == before
