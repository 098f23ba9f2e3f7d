"""Gemma 3 with Gemma Scope 2 and SAELens-format SAEs: stores equal an independent per-sentence computation,
from local folders and from an offline Hugging Face cache under official repo ids; multimodal checkpoints too."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from clitools import run_cli
from safetensors.numpy import load_file

from saezarr.build.pipeline import BuildOptions, build
from saezarr.compat import gemma3_layers, layer_output, load_base_model
from saezarr.testing.synthetic import (
    DEMO_CSV,
    calibration_residuals,
    populate_hf_cache,
    random_sae,
    saelens_cfg,
    write_gemma3_model,
    write_gemma_scope_2_sae,
    write_saelens_sae,
)

WIDTH = 64
LAYERS = 4
GS2 = "resid_post_all/layer_1_width_16k_l0_small"
JUMPRELU = "blocks.2.hook_resid_post"
TOPK = "topk"
TOPK_K = 5
RTOL, ATOL = 1e-4, 1e-5
GATE_MARGIN = 1e-5
MODEL_ID, GS2_ID, SAELENS_ID = "google/gemma-3-270m", "google/gemma-scope-2-270m-pt", "saelens-user/tiny-gemma-3-saes"


@dataclass(frozen=True)
class Gemma3Assets:
    root: Path
    model: Path
    multimodal: Path
    saes: Path
    csv: Path
    sentences: tuple[str, ...]


def write_config(path: Path, model, sae_repo, entries) -> Path:
    path.write_text(json.dumps({"model": str(model), "sae_repo": str(sae_repo), "configs": entries}))
    return path


ENTRIES = [{"path": GS2}, {"path": JUMPRELU}, {"path": TOPK, "name": "topk_layer_3"}]


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory) -> Gemma3Assets:
    """A 4-layer Gemma 3 text model, a multimodal one, and one tiny SAE per layout (width 64)."""
    root = tmp_path_factory.mktemp("gemma3")
    frame = pd.read_csv(DEMO_CSV).iloc[::3]
    csv = root / "sentences.csv"
    frame.to_csv(csv, index=False)
    sentences = tuple(frame["sentence"])
    corpus = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    write_gemma3_model(root / "model", corpus, num_layers=LAYERS)
    write_gemma3_model(root / "multimodal", corpus, num_layers=LAYERS, multimodal=True, seed=1)
    residuals = calibration_residuals(root / "model", [1, 2, 3], corpus)
    rng = np.random.default_rng(0)
    saes = root / "saes"
    gs2 = random_sae(residuals[1], WIDTH, 8, rng)
    write_gemma_scope_2_sae(saes / GS2, gs2, {"architecture": "jump_relu", "hf_hook_point_in": "model.layers.1.output"})
    jump = random_sae(residuals[2], WIDTH, 8, rng, b_dec_scale=0.5)
    cfg = saelens_cfg(2, residuals[2].shape[1], WIDTH, "jumprelu", apply_b_dec_to_input=True)
    write_saelens_sae(saes / JUMPRELU, jump, cfg)
    top = random_sae(residuals[3], WIDTH, 8, rng, b_dec_scale=0.5)
    del top["threshold"]
    cfg = saelens_cfg(3, residuals[3].shape[1], WIDTH, "standard", new_layout=False, apply_b_dec_to_input=False)
    cfg.update(activation_fn_str="topk", activation_fn_kwargs={"k": TOPK_K})
    write_saelens_sae(saes / TOPK, top, cfg)
    return Gemma3Assets(root, root / "model", root / "multimodal", saes, csv, sentences)


def per_sentence_residuals(model_folder: Path, sentences, layers) -> list[dict[int, np.ndarray]]:
    """Each sentence run alone through the HF model, resid_post of each layer taken by our own hooks."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = load_base_model(model_folder, torch.float32, attn_implementation="eager").eval()
    # the multimodal model holds the text model's layers
    decoder_layers = model.get_submodule(gemma3_layers() if model.config.model_type == "gemma3" else "layers")
    captured = {}
    handles = [
        decoder_layers[layer].register_forward_hook(
            lambda module, args, output, layer=layer: captured.__setitem__(layer, layer_output(output)[0].clone())
        )
        for layer in layers
    ]
    result = []
    try:
        with torch.no_grad():
            for sentence in sentences:
                ids = tokenizer(sentence)["input_ids"]
                model(input_ids=torch.tensor([ids]))
                result.append({layer: captured[layer].numpy().astype(np.float64) for layer in layers})
    finally:
        for handle in handles:
            handle.remove()
    return result


def expected(saes: Path, path: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents by the published formulas, in float64, and where the gate is too close to call."""
    if path == GS2:
        w = load_file(saes / path / "params.safetensors")
        pre = x @ w["w_enc"] + w["b_enc"]
        return np.where(pre > w["threshold"], pre, 0.0), np.abs(pre - w["threshold"]) < GATE_MARGIN
    w = load_file(saes / path / "sae_weights.safetensors")
    cfg = json.loads((saes / path / "cfg.json").read_text())
    if cfg.get("apply_b_dec_to_input"):
        x = x - w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if path == JUMPRELU:
        return np.where(pre > w["threshold"], pre, 0.0), np.abs(pre - w["threshold"]) < GATE_MARGIN
    order = np.sort(pre, axis=1)
    kth, next_ = order[:, -TOPK_K : -TOPK_K + 1], order[:, -TOPK_K - 1 : -TOPK_K]
    latents = np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
    return latents, np.broadcast_to((kth - next_) < GATE_MARGIN, pre.shape) | (np.abs(pre) < GATE_MARGIN)


def check_store(store: Path, assets: Gemma3Assets, model_folder: Path) -> None:
    group = zarr.open_group(store, mode="r")
    layers = group["layer"][:].tolist()
    reference = per_sentence_residuals(model_folder, assets.sentences, sorted(set(layers)))
    sentence, position = group["sentence_index"][:], group["token_position"][:]
    for ci, path in enumerate(str(p) for p in group["sae_path"][:]):
        x = np.stack([reference[s][layers[ci]][p] for s, p in zip(sentence, position)])
        want, ambiguous = expected(assets.saes, path, x)
        got = group["activations"][ci]
        assert got.dtype == np.float32 and not np.signbit(got[got == 0]).any()
        keep = ~ambiguous
        assert keep.mean() > 0.95
        np.testing.assert_allclose(got[keep], want[keep], rtol=RTOL, atol=ATOL)
        assert np.array_equal(got[keep] > 0, want[keep] > 0)
        if path == TOPK:
            assert ((got > 0).sum(axis=1) <= TOPK_K).all()


@pytest.fixture(scope="module")
def local_store(gemma3, tmp_path_factory) -> Path:
    config = write_config(gemma3.root / "local.json", gemma3.model, gemma3.saes, ENTRIES)
    store = tmp_path_factory.mktemp("stores") / "local.zarr"
    build(BuildOptions(input=gemma3.csv, output=store, config_file=config, quiet=True, chunk_fragments=16))
    return store


def test_every_layout_on_gemma3_equals_a_per_sentence_computation(gemma3, local_store):
    check_store(local_store, gemma3, gemma3.model)


def test_the_store_records_each_configs_layout(local_store):
    group = zarr.open_group(local_store, mode="r")
    assert [str(n) for n in group["config"][:]] == [GS2.rsplit("/", 1)[1], JUMPRELU, "topk_layer_3"]
    assert group["layer"][:].tolist() == [1, 2, 3]
    assert group["width"][:].tolist() == [WIDTH] * 3
    assert [str(a) for a in group["architecture"][:]] == ["jumprelu", "jumprelu", "topk"]
    assert group["average_l0"][:].tolist() == [-1, -1, -1]
    assert [str(p) for p in group["sae_path"][:]] == [GS2, JUMPRELU, TOPK]
    assert [str(s) for s in group["neuronpedia_source"][:]] == ["", "", ""]


def test_a_multimodal_checkpoint_reads_its_language_model(gemma3, tmp_path):
    config = write_config(tmp_path / "mm.json", gemma3.multimodal, gemma3.saes, ENTRIES[:2])
    store = tmp_path / "mm.zarr"
    build(BuildOptions(input=gemma3.csv, output=store, config_file=config, quiet=True, chunk_fragments=16))
    check_store(store, gemma3, gemma3.multimodal)


def test_official_repo_ids_from_an_offline_cache_give_the_same_store(gemma3, local_store, tmp_path):
    cache = tmp_path / "hf-cache"
    populate_hf_cache(cache, MODEL_ID, gemma3.model)
    gs2_source, saelens_source = tmp_path / "gs2", tmp_path / "saelens"
    shutil.copytree(gemma3.saes / GS2, gs2_source / GS2)
    for path in (JUMPRELU, TOPK):
        shutil.copytree(gemma3.saes / path, saelens_source / path)
    populate_hf_cache(cache, GS2_ID, gs2_source)
    populate_hf_cache(cache, SAELENS_ID, saelens_source)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}
    stores = []
    for name, repo, entries in (("gs2", GS2_ID, ENTRIES[:1]), ("saelens", SAELENS_ID, ENTRIES[1:])):
        config = write_config(tmp_path / f"{name}.json", MODEL_ID, repo, entries)
        store = tmp_path / f"{name}.zarr"
        args = ("--input", gemma3.csv, "--output", store, "--config", config, "--quiet", "--chunk-fragments", 16)
        result = run_cli("build", *args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        stores.append(zarr.open_group(store, mode="r"))
    local = zarr.open_group(local_store, mode="r")
    offline = np.concatenate([store["activations"][:] for store in stores])
    np.testing.assert_array_equal(offline, local["activations"][:])
    assert stores[0].attrs["sae_repo"] == GS2_ID and stores[1].attrs["sae_repo"] == SAELENS_ID
    assert stores[0].attrs["model"] == MODEL_ID


def test_export_and_analyze_read_a_store_of_saes_without_average_l0(local_store, tmp_path):
    """export-npz names each file by its config (no average L0 to name it by); analyze ranks every config."""
    from saezarr.analysis.run import AnalyzeOptions, analyze
    from saezarr.export.per_config import export_npz

    export_npz(local_store, tmp_path / "npz")
    group = zarr.open_group(local_store, mode="r")
    names = [str(n) for n in group["config"][:]]
    assert sorted(p.name for p in (tmp_path / "npz").iterdir()) == sorted(f"{n}_activations.npz" for n in names)
    with np.load(tmp_path / "npz" / f"{names[2]}_activations.npz") as npz:
        np.testing.assert_array_equal(npz["activations"], group["activations"][2])
    summary = analyze(
        AnalyzeOptions(store=local_store, output=tmp_path / "analysis", quiet=True, cache=tmp_path / "cache")
    )
    assert summary.n_configs == 3 and summary.n_features == WIDTH  # features per config
    features = pd.read_parquet(tmp_path / "analysis" / "features.parquet")
    assert sorted(features["config"].unique()) == sorted(names)


def test_two_saes_of_one_layer_without_average_l0_keep_their_own_examples(gemma3, tmp_path):
    """Gemma Scope 2's l0_small and l0_big of one layer both have L0 -1: their examples and report sections are
    keyed by config name, not by (layer, L0), so neither overwrites the other."""
    from saezarr.analysis.run import AnalyzeOptions, analyze

    big = GS2.replace("l0_small", "l0_big")
    shutil.copytree(gemma3.saes / GS2, gemma3.saes / big, dirs_exist_ok=True)  # same weights: equal activations
    config = write_config(tmp_path / "two.json", gemma3.model, gemma3.saes, [{"path": GS2}, {"path": big}])
    store = tmp_path / "two.zarr"
    build(BuildOptions(input=gemma3.csv, output=store, config_file=config, quiet=True))
    loose = {"min_pearson": -1.0, "min_tpr": 0.0, "max_fpr": 1.0, "top_n": 2 * WIDTH, "permutations": 0, "folds": 0}
    analyze(AnalyzeOptions(store=store, output=tmp_path / "out", quiet=True, cache=tmp_path / "cache", **loose))
    examples = json.loads((tmp_path / "out" / "feature_examples.json").read_text())
    ranked = pd.read_csv(tmp_path / "out" / "ranked_features.csv")
    assert len(examples) == len(ranked) and set(ranked["config"]) == {
        "layer_1_width_16k_l0_small",
        "layer_1_width_16k_l0_big",
    }
    assert {key.rsplit("_feature_", 1)[0] for key in examples} == set(ranked["config"])
