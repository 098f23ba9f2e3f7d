#!/usr/bin/env python
"""The legacy analysis step, re-created as the baseline for `scripts/bench_analyze.py`.

For each `layer_{L}_l0_{N}_activations.npz` in a folder (as `saezarr export-npz` writes them), it loads the file
whole, keeps the final-token fragments (one per sentence), then loops over the features one at a time with
scipy: Pearson and Spearman correlation with the 0-3 label, means by label, monotonicity, the 95th percentile of
the label-0 activations as a threshold, TPR/FPR above it, the separation score and the interpretability score.
Constant features are skipped. Features passing the filter (pearson >= 0.4, monotonic, tpr >= 0.5, fpr <= 0.2)
go into ranked_features.csv; the top 50 with their best example sentences per label into feature_examples.json.
Like the legacy script, every feature links to its layer's canonical Neuronpedia page, whichever SAE it is from.

    python scripts/legacy_analyze.py NPZDIR --output DIR

The last line printed is `LEGACY_TIMES {json}`: seconds spent loading the files, in the feature loop, and writing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

FILE_PATTERN = re.compile(r"^layer_(\d+)_l0_(\d+)_activations\.npz$")
COLUMNS = [
    "rank",
    "layer",
    "average_l0",
    "feature_id",
    "neuronpedia_url",
    "interpretability_score",
    "pearson_corr",
    "spearman_corr",
    "separation_score",
    "tpr",
    "fpr",
    "mean_label_0",
    "mean_label_1",
    "mean_label_2",
    "mean_label_3",
    "monotonic",
]
TIMES_TAG = "LEGACY_TIMES "


def neuronpedia_url(layer: int, feature_id: int) -> str:
    """The legacy link: the layer's canonical 16k page, whichever SAE the feature comes from."""
    return f"https://www.neuronpedia.org/gemma-2-2b/{layer}-gemmascope-res-16k/{feature_id}"


def load_final_tokens(path: Path) -> dict:
    """Load one legacy file whole and keep its final-token fragments."""
    with np.load(path) as data:
        activations = data["activations"][...]
        final = data["is_final_token"].astype(bool)
        return {
            "activations": activations[final],
            "labels": data["concept_strength_labels"][final].astype(np.int64),
            "sentences": data["original_sentences"][final],
            "layer": int(data["layer"]),
            "average_l0": float(data["average_l0"]),
            "num_features": int(data["num_features"]),
        }


def feature_row(x: np.ndarray, labels: np.ndarray, masks: list[np.ndarray]) -> dict | None:
    """The legacy metrics of one feature over the sentences; None for a constant feature."""
    if x.max() == x.min():
        return None
    pearson, _ = stats.pearsonr(x, labels)
    spearman, _ = stats.spearmanr(x, labels)
    means = [float(np.mean(x[m])) if m.any() else 0.0 for m in masks]
    monotonic = means[0] <= means[1] <= means[2] <= means[3]
    separation = (means[3] - means[0]) / np.std(x)
    label_0, label_3 = x[masks[0]], x[masks[3]]
    threshold = np.percentile(label_0, 95)
    tpr = float(np.mean(label_3 > threshold))
    fpr = float(np.mean(label_0 > threshold))
    score = 0.4 * pearson + 0.3 * separation + 0.3 * (tpr - fpr)
    return {
        "interpretability_score": float(score),
        "pearson_corr": float(pearson),
        "spearman_corr": float(spearman),
        "separation_score": float(separation),
        "tpr": tpr,
        "fpr": fpr,
        **{f"mean_label_{k}": means[k] for k in range(4)},
        "monotonic": bool(monotonic),
    }


def passes(row: dict, args: argparse.Namespace) -> bool:
    """The legacy filter."""
    return (
        row["pearson_corr"] >= args.min_pearson
        and row["monotonic"]
        and row["tpr"] >= args.min_tpr
        and row["fpr"] <= args.max_fpr
    )


def top_examples(x: np.ndarray, labels: np.ndarray, sentences: np.ndarray, per_label: int) -> dict:
    """The sentences with the highest activation for each label."""
    out = {}
    for label in range(4):
        rows = np.flatnonzero(labels == label)
        best = rows[np.argsort(-x[rows], kind="stable")[:per_label]]
        out[str(label)] = [{"sentence": str(sentences[i]), "activation": float(x[i])} for i in best]
    return out


def analyze_file(path: Path, args: argparse.Namespace, times: dict) -> list[dict]:
    """Every passing feature of one file, with its examples."""
    started = time.perf_counter()
    data = load_final_tokens(path)
    times["load"] += time.perf_counter() - started
    started = time.perf_counter()
    labels = data["labels"]
    masks = [labels == k for k in range(4)]
    if not (masks[0].any() and masks[3].any()):
        print(f"{path.name}: no label-0 or no label-3 sentences; skipped", file=sys.stderr)
        return []
    rows = []
    for feature_id in range(data["num_features"]):
        x = data["activations"][:, feature_id].astype(np.float64)
        row = feature_row(x, labels, masks)
        if row is None or not passes(row, args):
            continue
        rows.append(
            {
                "layer": data["layer"],
                "average_l0": data["average_l0"],
                "feature_id": feature_id,
                "neuronpedia_url": neuronpedia_url(data["layer"], feature_id),
                **row,
                "examples_by_label": top_examples(x, labels, data["sentences"], args.examples_per_label),
            }
        )
    times["loop"] += time.perf_counter() - started
    return rows


def write_outputs(rows: list[dict], output: Path, top_n: int) -> None:
    """ranked_features.csv and feature_examples.json in the legacy layouts."""
    output.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["interpretability_score"], reverse=True)
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    pd.DataFrame(rows, columns=COLUMNS).to_csv(output / "ranked_features.csv", index=False)
    examples = {}
    for row in rows[:top_n]:
        key = f"layer_{row['layer']}_l0_{row['average_l0']}_feature_{row['feature_id']}"
        examples[key] = {
            "rank": row["rank"],
            "layer": row["layer"],
            "average_l0": row["average_l0"],
            "feature_id": row["feature_id"],
            "neuronpedia_url": row["neuronpedia_url"],
            "interpretability_score": row["interpretability_score"],
            "pearson_correlation": row["pearson_corr"],
            "tpr": row["tpr"],
            "fpr": row["fpr"],
            "examples_by_label": row["examples_by_label"],
        }
    (output / "feature_examples.json").write_text(json.dumps(examples, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("npz_dir", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--min-pearson", type=float, default=0.4)
    parser.add_argument("--min-tpr", type=float, default=0.5)
    parser.add_argument("--max-fpr", type=float, default=0.2)
    parser.add_argument("--top-n", type=int, default=50)
    parser.add_argument("--examples-per-label", type=int, default=5)
    args = parser.parse_args(argv)
    files = sorted(
        (p for p in args.npz_dir.iterdir() if FILE_PATTERN.match(p.name)),
        key=lambda p: tuple(map(int, FILE_PATTERN.match(p.name).groups())),
    )
    if not files:
        parser.error(f"no layer_*_l0_*_activations.npz files in {args.npz_dir}")
    times = {"load": 0.0, "loop": 0.0, "write": 0.0}
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's small-sample warnings, as the legacy run printed them away
        for path in files:
            rows += analyze_file(path, args, times)
    started = time.perf_counter()
    write_outputs(rows, args.output, args.top_n)
    times["write"] = time.perf_counter() - started
    print(f"{len(files)} files, {len(rows)} passing features -> {args.output}")
    print(TIMES_TAG + json.dumps({**times, "files": len(files), "passing": len(rows)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
