"""SiteReader's reuse of its buffers: each read, of one batch or several, returns what fresh readers read of its
batches one by one, whatever the reads before it; what it returns is writable outside inference mode."""

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
# the sentences of each batch
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
        return reader.read([batch])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_read_of_a_reader_equals_its_batches_read_by_fresh_readers(model_folder, dtype):
    folder, model_type = model_folder
    model = load_base_model(folder, dtype, attn_implementation="eager").eval()
    hooks = every_hook(model_type)
    assert any(hook.endswith("hook_normalized") for hook in hooks)
    every = batches(folder)
    expected = [fresh_read(model, hooks, batch) for batch in every]
    reader = SiteReader(model, hooks)
    # the buffers grow, serve smaller reads, then grow again
    for read in ([0], [1, 2], [2], [3, 0], [0, 1, 2, 3], [1]):
        with reader:  # one reader, its hooks attached around each read (not beside a fresh one's)
            got = reader.read([every[i] for i in read])
        assert got.keys() == set(hooks)
        for hook in hooks:
            assert got[hook].dtype == expected[0][hook].dtype, hook
            assert torch.equal(got[hook], torch.cat([expected[i][hook] for i in read])), hook


def test_what_a_read_returns_is_an_ordinary_tensor_that_the_next_read_overwrites(model_folder):
    folder, model_type = model_folder
    model = load_base_model(folder, torch.float32, attn_implementation="eager").eval()
    hooks = every_hook(model_type)
    first, second = batches(folder)[1:3]
    with SiteReader(model, hooks) as reader:
        got = reader.read([first])
        assert not any(tensor.is_inference() for tensor in got.values())
        for tensor in got.values():
            tensor[:2] = 0  # as task_residuals writes stored rows over the computed ones, outside inference mode
        again = reader.read([second])
        assert reader.read([]) == {}
    for hook in hooks:
        assert again[hook].data_ptr() == got[hook].data_ptr(), hook  # the same buffer, overwritten
        assert torch.equal(again[hook], fresh_read(model, hooks, second)[hook]), hook
