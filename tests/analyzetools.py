"""Helpers for the analyze tests: stores built from the tiny fixtures, and an independent per-feature reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from clitools import run_cli, run_main
from scipy import stats

from saezarr.testing.synthetic import DEMO_CSV

# the tiny SAEs' Neuronpedia sources: a canonical SAE, a published variant of the same layer, the rest unpublished
SOURCES = {"layer_12_l0_6": "tiny-model/12-res-16k", "layer_12_l0_20": "tiny-model/12-res-16k__l0-20"}
DEMO_THRESHOLDS = ("--min-pearson", "0.2", "--min-tpr", "0.2", "--max-fpr", "0.3")  # the README's, for the demo
LEVELS = np.array([0.25, 0.5, 1.5, 3.0])  # dyadic: label means are exact, so equal ones tie in every summation order


def write_linked_config(path: Path, tiny) -> Path:
    """The tiny config file with a `neuronpedia` field per SAE."""
    data = json.loads(Path(tiny.config_file).read_text())
    for entry in data["configs"]:
        entry["neuronpedia"] = SOURCES.get(f"layer_{entry['layer']}_l0_{entry['average_l0']}")
    path.write_text(json.dumps(data))
    return path


def build_store(folder: Path, config: Path, csv: Path = DEMO_CSV, *extra: str) -> Path:
    """Build a store from a CSV with the tiny model, through the command line (its `main`, in this process)."""
    store = folder / "store.zarr"
    result = run_main("build", "--input", csv, "--output", store, "--config", config, "--quiet", *extra)
    assert result.returncode == 0, result.stderr
    return store


def analyze_demo(folder: Path, demo_config: Path) -> tuple[Path, str]:
    """The README's demo through the command line, in folder: `build --demo`, then `analyze` with its looser
    thresholds; the analysis folder and the analyze command's stdout."""
    built = run_cli("build", "--demo", "--config", demo_config, "--quiet", cwd=folder)
    assert built.returncode == 0, built.stderr
    analysis = folder / "analysis"
    result = run_cli(
        "analyze", "saezarr-demo.zarr", "--output", analysis, "--quiet", *DEMO_THRESHOLDS,
        cwd=folder, env={"SAEZARR_CACHE": str(folder / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return analysis, result.stdout


def dead_pid() -> int:
    """The PID of a process that has finished."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def csv_without(folder: Path, label: int) -> Path:
    """The demo CSV without the sentences of one label."""
    data = pd.read_csv(DEMO_CSV)
    path = folder / f"no_label_{label}.csv"
    data[data.concept_strength_label != label].to_csv(path, index=False)
    return path


def strip_neuronpedia(store: Path) -> None:
    """Make a store look as if built before saezarr recorded Neuronpedia sources."""
    shutil.rmtree(store / "neuronpedia_source")
    for meta_path in (store / "zarr.json", store / "activations" / "zarr.json"):
        meta = json.loads(meta_path.read_text())
        nodes = meta.get("consolidated_metadata", {}).get("metadata", {})
        nodes.pop("neuronpedia_source", None)
        for attrs in [meta.get("attributes", {}), nodes.get("activations", {}).get("attributes", {})]:
            if "coordinates" in attrs:
                attrs["coordinates"] = " ".join(c for c in attrs["coordinates"].split() if c != "neuronpedia_source")
        meta_path.write_text(json.dumps(meta))


def reference_pooled(store: Path, pool: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-sentence activations [config, sentence, feature] by a plain loop over sentences; labels; sentences."""
    group = zarr.open_group(store, mode="r")
    acts = group["activations"][:].astype(np.float64)
    sentence = group["sentence_index"][:]
    final = group["is_final_token"][:]
    label = group["concept_strength_label"][:]
    texts = group["original_sentence"][:]
    pooled, labels, sentences = [], [], []
    for s in np.unique(sentence):
        rows = sentence == s
        if pool == "final":
            pooled.append(acts[:, rows & final, :][:, 0, :])
        elif pool == "max":
            pooled.append(acts[:, rows, :].max(axis=1))
        else:
            pooled.append(acts[:, rows, :].mean(axis=1))
        labels.append(int(label[rows][0]))
        sentences.append(str(texts[rows][0]))
    return np.stack(pooled, axis=1), np.array(labels), sentences


def reference_feature(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """One feature's metrics the way the legacy script computes them, with scipy, plus the new ones."""
    means = {k: float(x[y == k].mean()) if (y == k).any() else 0.0 for k in range(4)}
    x0, x3 = x[y == 0], x[y == 3]
    out = {f"mean_label_{k}": means[k] for k in range(4)}
    out["monotonic"] = float(means[0] <= means[1] <= means[2] <= means[3])
    out["frac_active"] = float((x > 0).mean())
    for k in range(4):
        out[f"frac_active_label_{k}"] = float((x[y == k] > 0).mean()) if (y == k).any() else np.nan
    out["max_activation"] = float(x.max())
    if len(x3) and len(x0):
        out["auroc_3v0"] = float(stats.mannwhitneyu(x3, x0).statistic / (len(x3) * len(x0)))
        sd = np.sqrt(((len(x3) - 1) * x3.var(ddof=1) + (len(x0) - 1) * x0.var(ddof=1)) / (len(x3) + len(x0) - 2))
        out["cohens_d_3v0"] = float((x3.mean() - x0.mean()) / sd) if sd > 0 else np.nan
    else:
        out["auroc_3v0"] = out["cohens_d_3v0"] = np.nan
    legacy = ("pearson_corr", "spearman_corr", "separation_score", "threshold", "tpr", "fpr", "interpretability_score")
    if np.all(x == x[0]) or not len(x0) or not len(x3):  # the legacy script skips these features
        return {**out, **dict.fromkeys(legacy, np.nan)}
    pearson = stats.pearsonr(x, y).statistic
    spearman = stats.spearmanr(x, y).statistic
    separation = (means[3] - means[0]) / np.std(x)
    threshold = np.percentile(x0, 95)
    tpr, fpr = float(np.mean(x3 > threshold)), float(np.mean(x0 > threshold))
    return {
        **out,
        "pearson_corr": pearson,
        "spearman_corr": spearman,
        "separation_score": separation,
        "threshold": threshold,
        "tpr": tpr,
        "fpr": fpr,
        "interpretability_score": 0.4 * pearson + 0.3 * separation + 0.3 * (tpr - fpr),
    }


def reference_metrics(pooled: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """reference_feature for every (config, feature), as [config, feature] arrays."""
    rows = [
        [reference_feature(pooled[c, :, f], labels) for f in range(pooled.shape[2])] for c in range(pooled.shape[0])
    ]
    return {name: np.array([[r[name] for r in row] for row in rows]) for name in rows[0][0]}


def sae_like(counts: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mostly-zero non-negative float32 activations with the awkward columns, and shuffled labels of these counts."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(4), counts))
    n = len(labels)
    x = np.where(rng.random((n, 40)) < 0.12, rng.choice(LEVELS, (n, 40)), 0.0)  # ties among the positives
    x[:, 20:] = np.where(rng.random((n, 20)) < 0.12, rng.exponential(1.0, (n, 20)), 0.0)
    x[:, 0] = 0.0  # all zero
    x[:, 1] = 0.0
    x[rng.integers(n), 1] = 2.5  # a single positive
    x[labels == 0, 2] = rng.choice(LEVELS, counts[0])  # every label-0 value positive
    x[:, 3] = 1.5  # constant, not zero
    x[:, 4] = np.where(labels == 3, rng.choice(LEVELS, n), 0.0)  # positive for label 3 only
    x[:, 5] = np.where(labels == 0, rng.exponential(1.0, n), 0.0)  # positive for label 0 only
    x[:, 6] = 0.0
    x[np.flatnonzero(labels == labels[0])[:1], 6] = 0.75  # one positive, in one label
    return x.astype(np.float32), labels
