"""SAE layouts behind one encoder: whole and tiled encoders agree with the published formulas; config names;
bad SAEs and configs are one line each with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saezarr.cli import main
from saezarr.errors import SaezarrError
from saezarr.hub import Source
from saezarr.inputs.configs import SAEConfig, load_config_file
from saezarr.saes.encoder import load_encoder
from saezarr.saes.locate import describe_configs, locate_sae
from saezarr.testing.synthetic import (
    model_of_width,
    random_sae,
    saelens_cfg,
    write_gemma_scope_2_sae,
    write_saelens_sae,
)

D_MODEL, WIDE = 24, 2500  # wide enough for three tiles of MIN_TILE_FEATURES


def local(folder: Path) -> Source:
    return Source(str(folder), "local", folder)


@pytest.fixture(scope="module")
def wide_saes(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """One wide SAE per layout and architecture, and residuals to encode."""
    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, D_MODEL)).astype(np.float32) * 3
    weights = random_sae(x, WIDE, 30, rng, b_dec_scale=0.5)
    np.savez(root / "params.npz", **weights)
    write_gemma_scope_2_sae(root / "gs2", weights)
    write_saelens_sae(root / "jumprelu", weights, saelens_cfg(0, D_MODEL, WIDE, "jumprelu", apply_b_dec_to_input=True))
    relu = {k: v for k, v in weights.items() if k != "threshold"}
    write_saelens_sae(root / "relu", relu, saelens_cfg(0, D_MODEL, WIDE, "standard", apply_b_dec_to_input=True))
    write_saelens_sae(root / "topk", relu, saelens_cfg(0, D_MODEL, WIDE, "topk", k=7))
    return root, x


def formula(folder: Path, path: str, x: np.ndarray) -> np.ndarray:
    """Each layout's published encode, in float64 numpy."""
    from safetensors.numpy import load_file

    if path == ".":
        w = dict(np.load(folder / "params.npz"))
    elif path == "gs2":
        w = {k.replace("w_", "W_"): v for k, v in load_file(folder / path / "params.safetensors").items()}
    else:
        w = load_file(folder / path / "sae_weights.safetensors")
        if json.loads((folder / path / "cfg.json").read_text())["apply_b_dec_to_input"]:
            x = x - w["b_dec"]
    pre = x.astype(np.float64) @ w["W_enc"] + w["b_enc"]
    if path == "relu":
        return np.maximum(pre, 0.0)
    if path == "topk":
        kth = np.sort(pre, axis=1)[:, -7:-6]
        return np.where(pre >= kth, np.maximum(pre, 0.0), 0.0)
    return np.where(pre > w["threshold"], pre, 0.0)


@pytest.mark.parametrize("path", [".", "gs2", "jumprelu", "relu", "topk"])
def test_whole_and_tiled_encoders_give_the_formulas_values(wide_saes, path):
    folder, x = wide_saes
    sae = locate_sae(local(folder), SAEConfig(0, None, path, given_name="sae"), model_of_width(D_MODEL))
    whole = load_encoder(sae, "cpu")
    tiled = load_encoder(sae, "cpu", budget=sae.encoder_bytes // 2)
    assert not whole.tiled and tiled.tiled and tiled.tile < WIDE
    want = formula(folder, path, x)
    out = torch.full((len(x), WIDE), float("nan"))
    for got in (whole.encode(torch.from_numpy(x)), tiled.encode(torch.from_numpy(x), out=out)):
        assert got.dtype == torch.float32 and got.shape == (len(x), WIDE)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
        assert not torch.signbit(got[got == 0]).any()  # gated-off entries are +0.0
    np.testing.assert_allclose(out.numpy(), whole.encode(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)


def test_names_come_from_the_layout_unless_given(tmp_path):
    entries = [
        {"layer": 3, "average_l0": 59, "path": "layer_3/width_16k/average_l0_59"},
        {"path": "layer_12/width_16k/average_l0_82"},
        {"path": "layer_7/width_65k/canonical"},
        {"path": "resid_post_all/layer_5_width_16k_l0_small", "width": "16k"},
        {"path": "blocks.4.hook_resid_post", "layer": 4},
        {"path": "anything", "layer": 1, "name": "mine"},
    ]
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": "m", "sae_repo": "r", "configs": entries}))
    configs, _ = describe_configs(str(tmp_path / "saes"), load_config_file(config).configs, config)
    assert [c.name for c in configs] == [
        "layer_3_l0_59",
        "layer_12_l0_82",
        "layer_7_canonical",
        "layer_5_width_16k_l0_small",
        "blocks.4.hook_resid_post",
        "mine",
    ]
    assert [c.layer for c in configs] == [3, 12, 7, 5, 4, 1]
    assert configs[3].width == 16384 and configs[1].average_l0 == 82


def test_a_saelens_sae_at_the_repository_root_is_named_by_its_hook(tmp_path):
    rng = np.random.default_rng(0)
    weights = random_sae(rng.standard_normal((30, D_MODEL)).astype(np.float32), 32, 4, rng)
    write_saelens_sae(tmp_path / "repo", weights, saelens_cfg(6, D_MODEL, 32, "jumprelu", new_layout=False))
    configs, _ = describe_configs(str(tmp_path / "repo"), (SAEConfig(None, None, "."),), "where")
    assert configs[0].name == "blocks.6.hook_resid_post" and configs[0].layer == 6


def bad_saes(root: Path) -> dict[str, tuple[dict, str]]:
    """SAE folders that must be refused, with the config entry naming each and the message expected."""
    rng = np.random.default_rng(1)
    d_model = 32  # the tiny model's hidden size
    weights = random_sae(rng.standard_normal((50, d_model)).astype(np.float32), 64, 8, rng)
    (root / "empty").mkdir(parents=True)
    cases = {"unknown layout": ({"path": "empty", "layer": 0}, "no SAE in a known layout in empty")}
    for name, fields, message in (
        ("abstopk", {}, "architecture 'abstopk' is not implemented"),
        ("normalised", {"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
        ("mlp_out", {"metadata": {"hook_name": "blocks.3.mlp.hook_post"}}, "the SAE reads blocks.3.mlp.hook_post"),
        (
            "resid_pre",
            {"metadata": {"hook_name": "blocks.3.attn.hook_q"}},
            "blocks.3.attn.hook_q (hook_name in",
        ),
        ("head", {"hook_head_index": 1}, "hook_head_index 1 of blocks.3.hook_resid_post: one head is read only of"),
        (
            "old head",
            {"metadata": None, "hook_point": "blocks.3.hook_resid_post", "hook_point_head_index": 0},
            "hook_head_index 0 of blocks.3.hook_resid_post",
        ),
        ("kwargs", {"model_from_pretrained_kwargs": {"fold_ln": True, "n_ctx": 64}}, "kwargs n_ctx=64"),
        ("other model", {"model_name": "gemma-2-2b"}, "trained on 'gemma-2-2b', but --model is"),
        ("context", {"context_size": 4}, "more than the 4-token context SAE context was trained on"),
        ("no hook", {"metadata": {}}, "the cfg names no hook_name"),
    ):
        architecture = "abstopk" if name == "abstopk" else "jumprelu"
        write_saelens_sae(root / name, weights, saelens_cfg(3, d_model, 64, architecture, **fields))
        cases[name] = ({"path": name}, message)
    narrow = random_sae(rng.standard_normal((50, 16)).astype(np.float32), 64, 8, rng)
    write_gemma_scope_2_sae(root / "resid_post/layer_2_width_16k_l0_small", narrow)
    cases["d_in"] = (
        {"path": "resid_post/layer_2_width_16k_l0_small"},
        "w_enc is 16 x 64 but the model's hidden size is 32",
    )
    write_saelens_sae(root / "d_in_cfg", weights, saelens_cfg(3, 48, 64, "jumprelu"))
    cases["d_in cfg"] = ({"path": "d_in_cfg"}, "its settings say d_in 48 but the model's hidden size is 32")
    write_gemma_scope_2_sae(root / "resid_post/layer_3_width_16k_l0_small", weights)
    cases["width"] = (
        {"path": "resid_post/layer_3_width_16k_l0_small", "width": "16k"},
        "the config says width 16384 but the SAE has 64 features",
    )
    write_gemma_scope_2_sae(root / "resid_post/layer_12_width_16k_l0_small", weights)
    cases["entry hook"] = (
        {"path": "layer_0/width_16k/average_l0_6", "layer": 0, "hook": "blocks.0.mlp.hook_post"},
        "the SAE reads blocks.0.mlp.hook_post (the config file's hook), a site saezarr does not read",
    )
    cases["entry contradicts"] = (
        {"path": "resid_post/layer_12_width_16k_l0_small", "hook": "blocks.12.hook_mlp_out"},
        "says hook blocks.12.hook_mlp_out but the folder's prefix resid_post/ says blocks.12.hook_resid_post",
    )
    return cases


@pytest.fixture(scope="module")
def refused(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return root, bad_saes(root / "saes")


@pytest.mark.parametrize(
    "case",
    ["unknown layout", "abstopk", "normalised", "d_in", "d_in cfg", "width", "one name"]
    + ["mlp_out", "resid_pre", "head", "old head", "kwargs", "other model", "context", "no hook"]
    + ["entry hook", "entry contradicts"],
)
def test_a_bad_sae_or_config_is_one_line_and_nothing_is_written(tiny, refused, case, capsys):
    root, cases = refused
    if case == "one name":
        entries = [{"path": "layer_0/width_16k/average_l0_6", "name": "x"}, {"path": "layer_12/a", "name": "x"}]
        message = "config x appears more than once"
    else:
        entry, message = cases[case]
        entries = [entry]
    config = root / f"{case}.json"
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": str(root / "saes"), "configs": entries}))
    before = sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    output = root / f"{case}.zarr"
    code = main(["build", "--input", str(tiny.csv), "--output", str(output), "--config", str(config), "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("saezarr:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not output.exists()
    assert sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file()) == before


def test_a_layer_that_contradicts_the_layout_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    weights = random_sae(rng.standard_normal((30, D_MODEL)).astype(np.float32), 32, 4, rng)
    write_saelens_sae(tmp_path / "sae", weights, saelens_cfg(6, D_MODEL, 32, "jumprelu"))
    with pytest.raises(SaezarrError, match="'layer' is 2 but the SAE reads layer 6"):
        locate_sae(local(tmp_path), SAEConfig(2, None, "sae"), model_of_width(D_MODEL))


def test_a_build_in_tiles_equals_a_build_of_the_whole_encoder(tiny, tmp_path):
    """--sae-memory below the encoder's size: the store holds the same latents."""
    import zarr

    from saezarr.build.pipeline import BuildOptions, build
    from saezarr.testing.synthetic import calibration_residuals

    x = calibration_residuals(tiny.model, [12], tiny.sentences)[12]
    rng = np.random.default_rng(5)
    (tmp_path / "saes" / "wide").mkdir(parents=True)
    np.savez(tmp_path / "saes" / "wide" / "params.npz", **random_sae(x, WIDE, 40, rng))
    config = tmp_path / "wide.json"
    entries = [{"path": "wide", "layer": 12, "name": "wide"}]
    config.write_text(json.dumps({"model": str(tiny.model), "sae_repo": str(tmp_path / "saes"), "configs": entries}))
    stores = {}
    for name, budget in (("whole", None), ("tiled", 4 * 32 * 1200)):
        stores[name] = tmp_path / f"{name}.zarr"
        options = BuildOptions(tiny.csv, stores[name], config, sae_memory=budget, quiet=True, chunk_fragments=128)
        build(options)
    whole, tiled = (zarr.open_array(stores[n] / "activations")[:] for n in ("whole", "tiled"))
    assert whole.shape[2] == WIDE and np.isfinite(whole).all() and (whole > 0).any()
    np.testing.assert_allclose(tiled, whole, rtol=1e-6, atol=1e-6)


def test_units_and_inner_chunks_adapt_to_the_width():
    from saezarr.store.format import _feature_chunk, default_chunk_fragments

    for width, fragments, features in (
        (16384, 512, 2048),
        (65536, 256, 4096),
        (2**18, 128, 2**13),
        (2**20, 128, 2**13),
    ):
        assert (default_chunk_fragments(width), _feature_chunk(width)) == (fragments, features)
        assert 4 * fragments * width <= max(64 * 2**20, 4 * 128 * width) and 4 * fragments * features == 4 * 2**20
    assert _feature_chunk(3000) == 1500 and default_chunk_fragments(3000) == 512
