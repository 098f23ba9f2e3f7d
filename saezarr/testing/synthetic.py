"""Tiny stand-ins for Gemma-2-2B and Gemma Scope, generated offline for the demo, tests and benchmarks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from saezarr.compat import load_base_model, portable_tokenizer
from saezarr.inputs.configs import SAEConfig
from saezarr.sites import resid_post

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
# Gemma's special token ids: pad 0, eos 1, bos 2, unk 3
SPECIAL_TOKENS = [PAD, EOS, BOS, UNK]
_CORPUS_EXTRA = (
    "the quick brown fox jumps over the lazy dog. I think that you are right, and we can talk about it later! "
    "Numbers 0 1 2 3 4 5 6 7 8 9, punctuation: ; - ( ) ' \" ? and accents é ü ñ ç à."
)


def write_tokenizer(folder: Path, corpus: Iterable[str], vocab_size: int = 512) -> None:
    """Train a small Gemma-like BPE tokenizer (metaspace, BOS prepended, byte fallback) and save it."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + 256, special_tokens=SPECIAL_TOKENS + byte_tokens, show_progress=False
    )
    tokenizer.train_from_iterator([*corpus, _CORPUS_EXTRA], trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="right"
    )
    fast.save_pretrained(folder)
    portable_tokenizer(Path(folder))  # one generated demo serves environments of transformers 4.x and 5.x


def _with_tokenizer(folder: str | Path, corpus: Iterable[str], vocab_size: int) -> tuple[Path, int]:
    """The model folder, made, with a tokenizer trained on corpus; and the tokenizer's vocabulary size."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder, corpus, vocab_size)
    return folder, len(AutoTokenizer.from_pretrained(folder))


def _decoder_dims(vocab, num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim) -> dict:
    """The config fields a tiny Gemma 2 and a tiny Gemma 3 text model share."""
    return {
        "vocab_size": vocab,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    }


def write_model(
    folder: str | Path,
    corpus: Iterable[str],
    *,
    num_layers: int = 6,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 32,
    max_tokens: int = 512,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight Gemma-2 checkpoint (`Gemma2ForCausalLM`, safetensors) with its tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    folder, vocab = _with_tokenizer(folder, corpus, vocab_size)
    dims = _decoder_dims(vocab, num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim)
    config = Gemma2Config(**dims, max_position_embeddings=max_tokens, sliding_window=min(4096, max_tokens))
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config).eval()
    model.save_pretrained(folder)
    return folder


def write_gpt2_model(
    folder: str | Path,
    corpus: Iterable[str],
    *,
    num_layers: int = 3,
    hidden_size: int = 32,
    num_heads: int = 2,
    max_tokens: int = 256,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight GPT-2 checkpoint (`GPT2LMHeadModel`: LayerNorm, blocks in `.h`, a final `ln_f`) with a
    tokenizer that puts BOS first."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder, vocab = _with_tokenizer(folder, corpus, vocab_size)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=max_tokens,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    return folder


def write_gemma3_model(
    folder: str | Path,
    corpus: Iterable[str],
    *,
    num_layers: int = 4,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 16,
    max_tokens: int = 512,
    vocab_size: int = 512,
    multimodal: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random-weight Gemma 3 text checkpoint (`Gemma3ForCausalLM`), or a multimodal one
    (`Gemma3ForConditionalGeneration` with a tiny vision tower) as Gemma 3 4B-27B are, with a Gemma-style tokenizer."""
    from transformers import (
        Gemma3Config,
        Gemma3ForCausalLM,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    folder, vocab = _with_tokenizer(folder, corpus, vocab_size)
    dims = _decoder_dims(vocab, num_layers, hidden_size, intermediate_size, num_heads, num_kv_heads, head_dim)
    # a sliding window shorter than the sentences, so sliding and full attention layers differ
    text = Gemma3TextConfig(**dims, max_position_embeddings=max_tokens, sliding_window=8)
    torch.manual_seed(seed)
    if not multimodal:
        model = Gemma3ForCausalLM(text).eval()
    else:
        vision = SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=vocab)
        model = Gemma3ForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    return folder


# per model type: the config fields of a tiny model laid out as the named checkpoints of its architecture are
# (parallel attention, rotary fraction, sandwich norms, rope scaling, ...), the dims filled in by `_tiny_dims`
ARCHITECTURE_FIELDS: dict[str, dict] = {
    "gpt2": {"n_ctx": 1024},
    "gptj": {"rotary_dim": 4},
    "gpt_neox": {"rotary_pct": 0.25, "use_parallel_residual": True},
    "llama": {
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "mistral": {"sliding_window": 4096, "rope_theta": 10000.0},
    "qwen2": {"rope_theta": 1000000.0},
    "qwen3": {"rope_theta": 1000000.0},
    "gemma": {"hidden_act": "gelu", "hidden_activation": "gelu"},  # as TransformerLens' table has Gemma 1
    "gemma2": {"query_pre_attn_scalar": 256, "sliding_window": 4096},
    "gemma3_text": {"query_pre_attn_scalar": 256, "sliding_window": 512, "rope_local_base_freq": 10000.0},
}


def _tiny_dims(
    model_type: str, vocab: int, num_layers: int, hidden_size: int, num_heads: int, head_dim: int | None = None
) -> dict:
    """The dims of a tiny model of `model_type`, in its config's own field names."""
    if model_type in ("gpt2", "gptj"):
        return {"vocab_size": vocab, "n_embd": hidden_size, "n_layer": num_layers, "n_head": num_heads}
    head_dim = head_dim or hidden_size // num_heads
    dims = {"vocab_size": vocab, "hidden_size": hidden_size, "num_hidden_layers": num_layers}
    dims |= {"num_attention_heads": num_heads, "intermediate_size": 2 * hidden_size}
    if model_type != "gpt_neox":
        dims |= {"num_key_value_heads": max(1, num_heads // 2), "head_dim": head_dim}
    return dims


def write_architecture_model(
    folder: str | Path,
    corpus: Iterable[str],
    model_type: str,
    *,
    num_layers: int = 2,
    hidden_size: int = 32,
    num_heads: int = 4,
    vocab_size: int = 256,
    seed: int = 0,
    head_dim: int | None = None,
) -> Path:
    """Write a random-weight checkpoint of `model_type` (laid out as ARCHITECTURE_FIELDS says, other types with their
    config's defaults) with a tokenizer that puts BOS first; every weight is perturbed (norm gains and biases too), so
    no site equals another by accident. `head_dim`: one other than hidden / heads (not for GPT-2 and GPT-J)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, vocab = _with_tokenizer(folder, corpus, vocab_size)
    dims = _tiny_dims(model_type, vocab, num_layers, hidden_size, num_heads, head_dim)
    special = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    config = AutoConfig.for_model(model_type, **dims, **special, **ARCHITECTURE_FIELDS.get(model_type, {}))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return folder


def write_saes(
    folder: str | Path,
    model_folder: str | Path,
    configs: Sequence[SAEConfig],
    calibration: Sequence[str],
    width: int = 256,
    seed: int = 0,
) -> Path:
    """Write one Gemma Scope-layout `params.npz` per config, thresholds calibrated to its average_l0."""
    folder = Path(folder)
    residuals = calibration_residuals(Path(model_folder), sorted({c.known_layer for c in configs}), calibration)
    rng = np.random.default_rng(seed)
    for config in configs:
        assert config.average_l0 is not None, f"config {config.name}: a synthetic SAE is calibrated to its L0"
        weights = random_sae(residuals[config.known_layer], width, config.average_l0, rng)
        target = folder / config.path
        target.mkdir(parents=True, exist_ok=True)
        np.savez(target / "params.npz", **weights)  # type: ignore[arg-type]  # numpy's stubs: ** might be allow_pickle
    return folder


def random_sae(
    x: np.ndarray, width: int, average_l0: int, rng: np.random.Generator, b_dec_scale: float = 0.0
) -> dict[str, np.ndarray]:
    """Random JumpReLU SAE arrays for residuals x [tokens, d_model] (W_enc, W_dec, b_enc, b_dec, threshold, float32).

    Thresholds make about `average_l0` features fire per token; b_dec is zero unless `b_dec_scale` is given (then
    thresholds are calibrated on x - b_dec, as an SAE that subtracts it would see)."""
    d_model = x.shape[1]
    b_dec = np.zeros(d_model, dtype=np.float32)
    if b_dec_scale:  # drawn only then: SAEs without b_dec stay those saezarr generated before b_dec_scale existed
        b_dec = (rng.standard_normal(d_model) * b_dec_scale * x.std()).astype(np.float32)
        x = x - b_dec
    W_enc = rng.standard_normal((d_model, width), dtype=np.float32) / np.float32(np.sqrt(d_model))
    W_enc /= np.float32(np.sqrt((x**2).sum(1).mean() / d_model))
    b_enc = rng.normal(0, 0.1, width).astype(np.float32)
    pre = x @ W_enc + b_enc
    keep = min(max(average_l0, 1), width) / width
    threshold = np.maximum(np.quantile(pre, 1 - keep, axis=0), 1e-3).astype(np.float32)
    return {
        "W_enc": W_enc,
        "W_dec": np.ascontiguousarray(W_enc.T),
        "b_enc": b_enc,
        "b_dec": b_dec,
        "threshold": threshold,
    }


def write_gemma_scope_2_sae(folder: str | Path, weights: dict[str, np.ndarray], config: dict | None = None) -> Path:
    """Write one SAE in Gemma Scope 2's layout: `params.safetensors` with lowercase keys, `config.json` if given."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {key.lower(): np.ascontiguousarray(array) for key, array in weights.items()}, folder / "params.safetensors"
    )
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_saelens_sae(folder: str | Path, weights: dict[str, np.ndarray], cfg: dict) -> Path:
    """Write one SAE in SAELens' format: `cfg.json` and `sae_weights.safetensors` (W_enc, b_enc, W_dec, b_dec, ...)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({key: np.ascontiguousarray(array) for key, array in weights.items()}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def saelens_cfg(
    layer: int, d_in: int, d_sae: int, architecture: str, new_layout: bool = True, **fields: object
) -> dict[str, object]:
    """A SAELens cfg.json for a resid_post SAE: the 6.x layout (hook under `metadata`) or the pre-6.0 one."""
    hook = f"blocks.{layer}.hook_resid_post"
    cfg = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu"}
    cfg.update(normalize_activations="none", apply_b_dec_to_input=False)
    if new_layout:
        cfg["metadata"] = {"sae_lens_version": "6.12.1", "hook_name": hook}
    else:
        cfg.update(sae_lens_version="5.9.0", hook_name=hook, hook_layer=layer)
    cfg.update(fields)
    return cfg


def calibration_residuals(model_folder: Path, layers: list[int], sentences: Sequence[str]) -> dict[int, np.ndarray]:
    """Residuals after each layer at every non-BOS token of the sentences, as float32 [tokens, d_model]."""
    from transformers import AutoTokenizer

    from saezarr.models.language_model import SiteReader

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = load_base_model(model_folder, torch.float32, attn_implementation="eager").eval()
    ids = [np.asarray(t) for t in tokenizer(list(sentences))["input_ids"]]
    rows = np.concatenate([np.full(len(t) - 1, i) for i, t in enumerate(ids)])
    positions = np.concatenate([np.arange(1, len(t)) for t in ids])
    with SiteReader(model, map(resid_post, layers)) as reader:
        captured = reader.read([(ids, rows, positions)])
    return {layer: captured[resid_post(layer)].float().numpy() for layer in layers}


def populate_hf_cache(cache_dir: str | Path, repo_id: str, source: str | Path, commit: str | None = None) -> str:
    """Copy a folder into a Hugging Face hub cache as `repo_id` at `commit`, usable with HF_HUB_OFFLINE=1."""
    commit = commit or "0123456789abcdef0123456789abcdef01234567"
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot, dirs_exist_ok=True)
    return commit


def demo_configs(layers: Sequence[int] = (0, 2, 5), l0s: Sequence[int] = (8, 24)) -> list[SAEConfig]:
    """Gemma Scope-style configs for the demo model."""
    return [SAEConfig(layer, l0, f"layer_{layer}/width_16k/average_l0_{l0}") for layer in layers for l0 in l0s]


def write_config_file(path: str | Path, model: str, sae_repo: str, configs: Sequence[SAEConfig]) -> Path:
    """Write a config file in the `gemma_scope_16k_configurations.json` schema, each entry with the site it reads."""
    entries = [{"layer": c.layer, "average_l0": c.average_l0, "path": c.path, "hook": c.site_hook} for c in configs]
    Path(path).write_text(json.dumps({"model": model, "sae_repo": sae_repo, "configs": entries}, indent=1))
    return Path(path)


DEMO_CSV = Path(__file__).parents[1] / "data" / "aggression_demo.csv"
DEMO_VERSION = "demo-v2"  # v2: the config file names each SAE's hook


def default_cache() -> Path:
    """Where generated demo assets live: $SAEZARR_CACHE, else ~/.cache/saezarr."""
    import os

    return Path(os.environ.get("SAEZARR_CACHE") or Path.home() / ".cache" / "saezarr")


def ensure_demo(cache: str | Path | None = None) -> Path:
    """Generate the demo model, SAEs and config file once; return the config file's path."""
    import os
    import tempfile

    import pandas as pd

    root = Path(cache or default_cache()) / DEMO_VERSION
    config_file = root / "config.json"
    if config_file.exists():
        return config_file
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    write_model(staging / "model", sentences)
    configs = demo_configs()
    write_saes(staging / "saes", staging / "model", configs, sentences, width=512)
    write_config_file(staging / "config.json", str(root / "model"), str(root / "saes"), configs)
    try:
        os.rename(staging, root)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return config_file


def model_of_width(d_model: int, name: str = "tiny"):
    """The ModelInfo of a model known only by its hidden size and name (a folder called `name`), for reading SAEs
    without a model."""
    from saezarr.hub import Source
    from saezarr.models.language_model import ModelInfo

    return ModelInfo(Source(name, "local", Path(name)), num_layers=0, hidden_size=d_model, max_tokens=None)
