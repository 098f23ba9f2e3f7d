"""Stored activations against an independent, one-sentence-at-a-time computation with our own hooks."""

from __future__ import annotations

import hashlib
import math
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

import saezarr
from saezarr.build.pipeline import BuildOptions, build
from saezarr.compat import dtype_kwargs, layer_output
from saezarr.inputs.fragments import FRAGMENT_FIELDS, make_fragments
from saezarr.inputs.sentences import read_labeled_csv
from saezarr.models.language_model import load_tokenizer, resolve_model

CHUNK = 64
GATE_MARGIN = 1e-5  # entries whose pre-activation is this close to the threshold may flip either way
RTOL, ATOL = 1e-4, 1e-5


def _build(tiny, output: Path, **kwargs):
    options = dict(input=tiny.csv, output=output, config_file=tiny.config_file, quiet=True, chunk_fragments=CHUNK)
    options.update(kwargs)
    return build(BuildOptions(**options))


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory):
    """Token stores with batch sizes 16 and 1, and word and final stores: {name: (path, summary)}."""
    root = tmp_path_factory.mktemp("activations")
    built = {}
    for name, kwargs in {
        "token": {},
        "token_batch1": {"batch_size": 1},
        "word": {"fragments": "word"},
        "final": {"fragments": "final", "batch_size": 7},
    }.items():
        path = root / f"{name}.zarr"
        built[name] = (path, _build(tiny, path, **kwargs))
    return built


def hooked_residuals(tiny, sentences):
    """Per sentence: {layer: resid_post [seq, hidden]} from our own hooks, each sentence run alone and unpadded."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    model = AutoModel.from_pretrained(tiny.model, attn_implementation="eager", **dtype_kwargs(torch.float32)).eval()
    layers = sorted({c.layer for c in tiny.configs})
    captured: dict[int, torch.Tensor] = {}

    def hook_for(layer):
        def hook(module, args, output):
            captured[layer] = layer_output(output).detach().clone()

        return hook

    handles = [model.layers[layer].register_forward_hook(hook_for(layer)) for layer in layers]
    per_sentence = []
    try:
        with torch.no_grad():
            for sentence in sentences:
                # sentences are text: a literal "<bos>" in one is characters, not the control token
                ids = tokenizer(sentence, split_special_tokens=True)["input_ids"]
                assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
                captured.clear()
                model(input_ids=torch.tensor([ids]))
                per_sentence.append({layer: captured[layer][0].numpy() for layer in layers})
    finally:
        for handle in handles:
            handle.remove()
    return per_sentence


@pytest.fixture(scope="module")
def reference(tiny):
    """Per demo sentence: {layer: resid_post [seq, hidden]} from our own hooks."""
    return hooked_residuals(tiny, read_labeled_csv(tiny.csv).sentences)


def sae_params(tiny, config):
    with np.load(tiny.saes / config.path / "params.npz") as params:
        return params["W_enc"], params["b_enc"], params["threshold"]


def expected_latents(tiny, reference, config, rows):
    """JumpReLU in numpy on the reference residuals at (sentence, position) rows; also the gate-ambiguity mask."""
    W_enc, b_enc, threshold = sae_params(tiny, config)
    x = np.stack([reference[s][config.layer][p] for s, p in rows]).astype(np.float64)
    pre = x @ W_enc.astype(np.float64) + b_enc
    latents = np.where(pre > threshold, pre, 0.0)
    ambiguous = np.abs(pre - threshold) < GATE_MARGIN
    return latents, ambiguous


def expected_rows(tiny, granularity):
    """(sentence, position) of each fragment, worked out from the tokenizer without saezarr."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    rows = []
    for s, sentence in enumerate(read_labeled_csv(tiny.csv).sentences):
        encoded = tokenizer(sentence, return_offsets_mapping=True)
        n = len(encoded["input_ids"])
        if granularity == "token":
            rows += [(s, p) for p in range(1, n)]
        elif granularity == "final":
            rows.append((s, n - 1))
        else:  # the demo sentences: single spaces, each word's last token ends exactly at the word's end
            word_ends, start = [], 0
            for word in sentence.split(" "):
                start += len(word)
                word_ends.append(start)
                start += 1
            ends = [end for _, end in encoded["offset_mapping"]]
            # the word's last token: the last one ending there (several do for byte-fallback pieces)
            rows += [(s, max(p for p, e in enumerate(ends) if e == end)) for end in word_ends]
    return rows


def compare(stored, expected, ambiguous):
    assert stored.shape == expected.shape
    assert np.isfinite(stored).all()
    keep = ~ambiguous
    assert keep.mean() > 0.99
    np.testing.assert_allclose(stored[keep], expected[keep], rtol=RTOL, atol=ATOL)
    # where the gate is clear, firing and silence agree exactly
    assert np.array_equal(stored[keep] > 0, expected[keep] > 0)


@pytest.mark.parametrize("layer", [0, 12, 25])
def test_token_store_matches_independent_computation(tiny, stores, reference, layer):
    path, _ = stores["token"]
    array = zarr.open_array(path / "activations", mode="r")
    rows = expected_rows(tiny, "token")
    for index, config in enumerate(tiny.configs):
        if config.layer != layer:
            continue
        expected, ambiguous = expected_latents(tiny, reference, config, rows)
        stored = array[index]
        compare(stored, expected, ambiguous)
        # sparse: about average_l0 features fire per fragment (thresholds were calibrated on these sentences)
        l0 = (stored > 0).sum(1).mean()
        assert 0.5 * config.average_l0 < l0 < 2 * config.average_l0


@pytest.mark.parametrize("granularity", ["word", "final"])
def test_word_and_final_stores_select_the_right_rows(tiny, stores, reference, granularity):
    path, _ = stores[granularity]
    dataset = xr.open_zarr(path)
    rows = expected_rows(tiny, granularity)
    assert list(zip(dataset["sentence_index"].values.tolist(), dataset["token_position"].values.tolist())) == rows
    assert dataset.attrs["fragments"] == granularity
    for index, config in enumerate(tiny.configs):
        expected, ambiguous = expected_latents(tiny, reference, config, rows)
        compare(dataset["activations"][index].values, expected, ambiguous)
    # the same rows of the token store hold the same values
    token = xr.open_zarr(stores["token"][0])
    token_index = {(s, p): i for i, (s, p) in enumerate(expected_rows(tiny, "token"))}
    picked = token["activations"].values[:, [token_index[r] for r in rows], :]
    np.testing.assert_allclose(dataset["activations"].values, picked, rtol=RTOL, atol=ATOL)
    for field in ("fragment_text", "original_sentence", "concept_strength_label", "fragment_length"):
        assert dataset[field].values.tolist() == token[field].values[[token_index[r] for r in rows]].tolist()


def test_batch_size_does_not_change_results(tiny, stores):
    one = zarr.open_array(stores["token_batch1"][0] / "activations", mode="r")[:]
    many = zarr.open_array(stores["token"][0] / "activations", mode="r")[:]
    thresholds = np.stack([sae_params(tiny, c)[2] for c in tiny.configs])[:, None, :]
    # a value just above its threshold in one store may be gated off in the other
    ambiguous = (np.abs(one - thresholds) < GATE_MARGIN) | (np.abs(many - thresholds) < GATE_MARGIN)
    assert ambiguous.mean() < 1e-3
    np.testing.assert_allclose(one[~ambiguous], many[~ambiguous], rtol=RTOL, atol=ATOL)
    assert np.array_equal(one[~ambiguous] > 0, many[~ambiguous] > 0)


def test_gated_off_entries_are_positive_zero(stores):
    """A JumpReLU output is never negative, and its zeros carry no sign bit (which would spoil compression)."""
    stored = zarr.open_array(stores["token"][0] / "activations", mode="r")[:]
    assert (stored >= 0).all()
    assert not np.signbit(stored).any()


@pytest.mark.parametrize("granularity", ["token", "word", "final"])
def test_coordinates_equal_the_fragment_table(tiny, stores, granularity):
    path, _ = stores[granularity]
    data = read_labeled_csv(tiny.csv)
    table = make_fragments(data, load_tokenizer(resolve_model(str(tiny.model))), granularity).table
    dataset = xr.open_zarr(path)
    assert dataset["activations"].dims == ("config", "fragment", "feature")
    assert dataset["activations"].shape == (len(tiny.configs), len(table), 128)
    assert dataset["activations"].dtype == np.float32
    for field in FRAGMENT_FIELDS:
        assert dataset[field].dims == ("fragment",)
        assert dataset[field].values.tolist() == table[field].tolist(), field
    assert dataset["is_final_token"].dtype == bool
    assert dataset["concept_strength_label"].dtype == np.int64
    assert dataset["config"].values.tolist() == [c.name for c in tiny.configs]
    assert dataset["layer"].values.tolist() == [c.layer for c in tiny.configs]
    assert dataset["average_l0"].values.tolist() == [c.average_l0 for c in tiny.configs]
    assert dataset["sae_path"].values.tolist() == [c.path for c in tiny.configs]
    np.testing.assert_array_equal(dataset["feature"].values, np.arange(128))
    # select by name
    layer12 = dataset["activations"].sel(config="layer_12_l0_20")
    np.testing.assert_array_equal(layer12.values, dataset["activations"].values[3])


def test_attributes(tiny, stores):
    path, _ = stores["token"]
    attrs = xr.open_zarr(path).attrs
    assert attrs["saezarr_version"] == saezarr.__version__ == version("saezarr")
    assert attrs["model"] == str(tiny.model.resolve())
    assert attrs["model_revision"] == "local"
    assert attrs["sae_repo"] == str(tiny.saes.resolve())
    assert attrs["sae_revision"] == "local"
    assert attrs["model_dtype"] == "float32"
    assert attrs["fragments"] == "token"
    assert attrs["input_file"] == tiny.csv.name
    assert attrs["input_sha256"] == hashlib.sha256(tiny.csv.read_bytes()).hexdigest()
    assert attrs["n_sentences"] == len(tiny.sentences) == 40
    assert attrs["configs"] == [c.name for c in tiny.configs]


def test_summary_counters_and_marks(tiny, stores):
    path, summary = stores["token"]
    table = make_fragments(read_labeled_csv(tiny.csv), load_tokenizer(resolve_model(str(tiny.model))), "token").table
    n_chunks = math.ceil(len(table) / CHUNK)
    assert summary.n_fragments == len(table) and summary.n_configs == 6 and summary.n_sentences == 40
    assert summary.units_total == summary.units_written == 6 * n_chunks
    assert summary.units_skipped == 0
    assert summary.complete
    assert summary.model_passes == 1 and summary.sae_loads == 6
    sentences = table["sentence_index"].to_numpy()
    batches = sum(math.ceil(len(np.unique(sentences[c * CHUNK : (c + 1) * CHUNK])) / 16) for c in range(n_chunks))
    assert summary.forward_batches == batches
    assert stores["token_batch1"][1].forward_batches == sum(
        len(np.unique(sentences[c * CHUNK : (c + 1) * CHUNK])) for c in range(n_chunks)
    )
    for config in tiny.configs:
        marks = sorted(int(p.name) for p in (path / "_saezarr" / "done" / config.name).iterdir())
        assert marks == list(range(n_chunks))
    assert not (path / "_saezarr" / "lock").exists()
    assert summary.bytes_on_disk == sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    array = zarr.open_array(path / "activations", mode="r")
    assert array.shards == (1, CHUNK, 128)


SPECIAL_CSV = (
    "sentence,concept_strength_label\n"
    '"He typed <bos> into the chat, then <eos>.",1\n'
    "<bos> at the start is text too,0\n"
    '"Quote: <start_of_turn>user <pad><unk> <end_of_turn>",2\n'
    "Plain words here.,3\n"
)


def test_special_token_strings_are_encoded_as_text(tiny, tmp_path):
    """Sentences quoting <bos>, <eos>, <pad>, <unk>: stored latents equal a per-sentence run on the text's tokens."""
    from transformers import AutoTokenizer

    csv = tmp_path / "markup.csv"
    csv.write_text(SPECIAL_CSV, encoding="utf-8")
    path = tmp_path / "markup.zarr"
    assert _build(tiny, path, input=csv).complete
    sentences = read_labeled_csv(csv).sentences
    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    lengths = [len(tokenizer(s, split_special_tokens=True)["input_ids"]) for s in sentences]
    rows = [(s, p) for s, n in enumerate(lengths) for p in range(1, n)]
    dataset = xr.open_zarr(path)
    assert list(zip(dataset["sentence_index"].values.tolist(), dataset["token_position"].values.tolist())) == rows
    reference = hooked_residuals(tiny, sentences)
    for index, config in enumerate(tiny.configs):
        expected, ambiguous = expected_latents(tiny, reference, config, rows)
        compare(dataset["activations"][index].values, expected, ambiguous)
    finals = dataset["fragment_text"].values[dataset["is_final_token"].values].tolist()
    assert finals == sentences
