"""Planted data for the resampling tests: sentences whose label-3 ones all end in one rare word (a cue a tiny random
model cannot miss), the same sentences with shuffled labels, a tiny model trained on them, and stores of both with
the residual stream kept (`build --residuals`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from analyzetools import build_store

from saezarr.testing.synthetic import DEMO_CSV, demo_configs, write_config_file, write_model, write_saes

CUE = "zyzzyva"
EMBEDDING_SCALE = 25.0  # as the analyze benchmark's model: a token's residual follows the token more than its context
LAYERS = (0, 2)
RESIDUAL_LAYERS = (0, 1, 2)  # every layer of the 3-layer model: what `--residuals` alone keeps


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
    """Write the CSVs, a 3-layer tiny model and SAEs trained on them, and build both stores keeping every layer's
    residual stream."""
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
        stores[name] = build_store(
            root / name, config_file, root / f"{name}.csv", "--fragments", "final", "--residuals"
        )
    return Planted(stores["cued"], stores["shuffled"], config_file, model)


def _bench_script():
    """scripts/bench_analyze.py as a module (its emphasise_tokens)."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_analyze.py"
    spec = importlib.util.spec_from_file_location("bench_analyze", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
