"""SiteReader's reuse of its buffers: each read returns what a fresh reader reads, whatever the reads before it, and
read_batches returns tensors of their own, equal to the batches read one by one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from saezarr.compat import load_base_model
from saezarr.models.architectures import ARCHITECTURES
from saezarr.models.language_model import SiteReader
from saezarr.testing.synthetic import DEMO_CSV, write_architecture_model

LAYERS = 2
# sentences per read: the buffers grow, then serve smaller reads, then grow again
BATCHES = [(0, 2), (2, 9), (9, 10), (10, 22)]


@pytest.fixture(scope="module", params=["gemma2", "gpt2"])  # an RMSNorm and a LayerNorm hook_normalized
def model_folder(request, tmp_path_factory):
    corpus = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    folder = tmp_path_factory.mktemp(request.param)
    return write_architecture_model(folder, corpus[:50], request.param, num_layers=LAYERS), request.param


def every_hook(model_type: str) -> list[str]:
    kinds = ARCHITECTURES[model_type].sites
    return sorted(
        {kind if kind == "hook_embed" else f"blocks.{layer}.{kind}" for kind in kinds for layer in range(LAYERS)}
    )


def batches(folder) -> list[tuple[list[np.ndarray], np.ndarray, np.ndarray]]:
    """(token ids, rows, positions) of each batch of BATCHES, every token but BOS selected."""
    from transformers import AutoTokenizer

    corpus = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = []
    for first, stop in BATCHES:
        ids = [np.asarray(t) for t in tokenizer(corpus[first:stop])["input_ids"]]
        rows = np.concatenate([np.full(len(t) - 1, row) for row, t in enumerate(ids)])
        positions = np.concatenate([np.arange(1, len(t)) for t in ids])
        out.append((ids, rows, positions))
    return out


def fresh_read(model, hooks, batch) -> dict[str, torch.Tensor]:
    with SiteReader(model, hooks) as reader:
        return reader.read(*batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_read_of_a_reader_equals_a_fresh_readers(model_folder, dtype):
    folder, model_type = model_folder
    model = load_base_model(folder, dtype, attn_implementation="eager").eval()
    hooks = every_hook(model_type)
    assert any(hook.endswith("hook_normalized") for hook in hooks)
    reader = SiteReader(model, hooks)
    for batch in batches(folder) + batches(folder)[:1]:
        expected = fresh_read(model, hooks, batch)
        with reader:  # one reader, its hooks attached around each read (not beside the fresh one's)
            got = reader.read(*batch)
        assert got.keys() == expected.keys()
        for hook in hooks:
            assert got[hook].dtype == expected[hook].dtype, hook
            assert got[hook].shape == (len(batch[1]), *expected[hook].shape[1:]), hook
            assert torch.equal(got[hook], expected[hook]), hook


def test_read_batches_lands_each_batch_in_place_in_tensors_of_its_own(model_folder):
    folder, model_type = model_folder
    model = load_base_model(folder, torch.float32, attn_implementation="eager").eval()
    hooks = every_hook(model_type)
    every = batches(folder)
    with SiteReader(model, hooks) as reader:
        together = reader.read_batches(every)
        reader.read(*every[-1])  # neither this read nor the next read_batches touches them
        reader.read_batches(every[:2])
        assert reader.read_batches([]) == {}
    for hook in hooks:
        one_by_one = torch.cat([fresh_read(model, hooks, batch)[hook] for batch in every])
        assert torch.equal(together[hook], one_by_one), hook
        assert not together[hook].is_inference()  # ordinary tensors, as torch.cat's were
