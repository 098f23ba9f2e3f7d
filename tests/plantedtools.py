"""Planted data for the resampling tests: sentences whose label-3 ones all end in one rare word (a cue a tiny random
model cannot miss), the same sentences with shuffled labels, a tiny model trained on them, and stores of both with
the residual stream written in beside the activations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from analyzetools import build_store

from saezarr.synthetic import DEMO_CSV, demo_configs, write_config_file, write_model, write_saes

CUE = "zyzzyva"
EMBEDDING_SCALE = 25.0  # as the analyze benchmark's model: a token's residual follows the token more than its context
LAYERS = (0, 2)
RESIDUAL_LAYERS = (0, 1, 2)


@dataclass(frozen=True)
class Planted:
    """Stores of the planted sentences (`cued`) and of the same sentences with shuffled labels (`shuffled`)."""

    cued: Path
    shuffled: Path
    config_file: Path
    model: Path


def planted_frame() -> pd.DataFrame:
    """The demo sentences without their final punctuation (so that they end in varied words), every label-3 one
    ending in CUE and no other one."""
    demo = pd.read_csv(DEMO_CSV)
    sentence = demo.sentence.str.rstrip(" .!?")
    demo["sentence"] = np.where(demo.concept_strength_label == 3, sentence + " " + CUE, sentence)
    return demo


def make_planted(root: Path) -> Planted:
    """Write the CSVs, a 3-layer tiny model and SAEs trained on them, and build both stores with residuals."""
    cued = planted_frame()
    shuffled = cued.assign(concept_strength_label=np.random.default_rng(7).permutation(cued.concept_strength_label))
    cued.to_csv(root / "cued.csv", index=False)
    shuffled.to_csv(root / "shuffled.csv", index=False)
    sentences = cued.sentence.tolist()
    model = write_model(root / "model", sentences * 3, num_layers=3, hidden_size=32, intermediate_size=64, head_dim=16)
    _bench_script().emphasise_tokens(model, EMBEDDING_SCALE)
    configs = demo_configs(LAYERS, (4, 12))
    write_saes(root / "saes", model, configs, sentences, width=64)
    config_file = write_config_file(root / "config.json", str(model), str(root / "saes"), configs)
    stores = {}
    for name in ("cued", "shuffled"):
        (root / name).mkdir()
        stores[name] = build_store(root / name, config_file, root / f"{name}.csv", "--fragments", "final")
        add_residuals(stores[name], model)
    return Planted(stores["cued"], stores["shuffled"], config_file, model)


def _bench_script():
    """scripts/bench_analyze.py as a module (its emphasise_tokens)."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_analyze.py"
    spec = importlib.util.spec_from_file_location("bench_analyze", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_residuals(store: Path, model_folder: Path) -> None:
    """Write `residuals` (residual_layer x fragment x hidden, resid_post at each final-token fragment) into a store
    of final fragments, computed here with the model and forward hooks."""
    import xarray as xr
    import zarr
    from transformers import AutoModel, AutoTokenizer

    from saezarr import open_store
    from saezarr.extract.residuals import ResidualReader

    ds = open_store(store)
    texts = [str(t) for t in ds.original_sentence.values]
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModel.from_pretrained(model_folder, dtype=torch.float32, attn_implementation="eager").eval()
    ids = [np.asarray(t) for t in tokenizer(texts)["input_ids"]]
    with ResidualReader(model, list(RESIDUAL_LAYERS)) as reader:
        captured = reader.read(ids, np.arange(len(ids)), np.array([len(t) - 1 for t in ids]))
    values = np.stack([captured[layer].float().numpy() for layer in RESIDUAL_LAYERS])
    residuals = xr.Dataset(
        {"residuals": (("residual_layer", "fragment", "hidden"), values.astype(np.float32))},
        coords={"residual_layer": np.array(RESIDUAL_LAYERS, dtype=np.int64)},
        attrs=dict(zarr.open_group(store, mode="r").attrs),  # to_zarr(mode="a") sets the group's attributes to these
    )
    residuals.to_zarr(store, mode="a", consolidated=True)
    assert dict(zarr.open_group(store, mode="r").attrs) == residuals.attrs
