#!/usr/bin/env python
"""Micro-benchmark of `block_metrics` (the metrics kernel of `saezarr analyze`) against the version on a git ref.

Data: [sentences x 16384 features] float32 arrays like the per-sentence SAE activations analyze feeds it: 55% of
the features all zero, the others about 1% nonzero with exponential values, labels 0-3 balanced and shuffled; timed
as one block and in the feature blocks analyze passes (feature_block). The previous implementation is
saezarr at REF (default main), taken with `git archive` and imported from a temporary folder, so both run in the same
process on the same arrays (best of N). Their outputs must be equal: threshold, tpr, fpr,
frac_active*, max_activation and monotonic bit for bit, the others (sums in another order) to rtol 1e-9.

    python scripts/bench_metrics.py                  # 800 and 3200 sentences, best of 3
    python scripts/bench_metrics.py --ref HEAD~1 --sentences 800
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from saezarr.analysis.stats.metrics import METRICS, block_metrics, feature_block

WIDTH = 16384
EXACT = (
    "threshold",
    "tpr",
    "fpr",
    "monotonic",
    "max_activation",
    "frac_active",
    *(f"frac_active_label_{k}" for k in range(4)),
)


def sae_block(n_sentences: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A [sentences, WIDTH] float32 block shaped like final-token SAE activations, and balanced shuffled labels."""
    rng = np.random.default_rng(seed)
    active = rng.random(WIDTH) >= 0.55
    mask = (rng.random((n_sentences, WIDTH)) < 0.01) & active
    x = np.where(mask, rng.exponential(1.0, (n_sentences, WIDTH)), 0.0).astype(np.float32)
    labels = np.arange(n_sentences) % 4
    rng.shuffle(labels)
    return x, labels


def previous_block_metrics(ref: str):
    """block_metrics of saezarr at the git ref: the ref's package, taken with `git archive` into a temporary folder,
    is imported in place of this one's modules, which are put back after (the ref's functions keep their own)."""
    folder = Path(tempfile.mkdtemp())
    archive = subprocess.run(["git", "archive", ref, "saezarr"], cwd=REPO, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    ours = set_aside_saezarr()
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("saezarr.analysis.stats.metrics").block_metrics
    finally:
        sys.path.remove(str(folder))
        set_aside_saezarr()
        sys.modules.update(ours)


def set_aside_saezarr() -> dict:
    """Remove saezarr's modules from sys.modules, and return them."""
    names = [name for name in sys.modules if name == "saezarr" or name.startswith("saezarr.")]
    return {name: sys.modules.pop(name) for name in names}


def best_of(repeats: int, function, *args) -> tuple[float, object]:
    """The fastest of `repeats` calls, in seconds, and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def one_block(function, x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """function of all of x at once."""
    return function(x, labels)


def in_blocks(function, x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """function over x's features in the blocks analyze gives it (feature_block), joined."""
    block = feature_block(*x.shape)
    parts = [function(x[:, start : start + block], labels) for start in range(0, x.shape[1], block)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def assert_same(new: dict[str, np.ndarray], old: dict[str, np.ndarray]) -> None:
    """Equal metrics: the exact ones bit for bit (NaN equal to NaN), the sums to rtol 1e-9."""
    assert list(new) == list(old) == list(METRICS)
    for name in METRICS:
        if name in EXACT:
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)
        else:
            np.testing.assert_allclose(new[name], old[name], rtol=1e-9, atol=1e-12, err_msg=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="git ref of the previous implementation (default: main)")
    parser.add_argument("--sentences", type=int, nargs="+", default=[800, 3200])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    previous = previous_block_metrics(args.ref)
    for n in args.sentences:
        x, labels = sae_block(n)
        for how, call in (("one block", one_block), (f"blocks of {feature_block(*x.shape)} (analyze's)", in_blocks)):
            old_s, old = best_of(args.repeats, call, previous, x, labels)
            new_s, new = best_of(args.repeats, call, block_metrics, x, labels)
            assert_same(new, old)
            print(
                f"{n} sentences x {WIDTH} features, {how}: {args.ref} {old_s * 1e3:.1f} ms, "
                f"now {new_s * 1e3:.1f} ms ({old_s / new_s:.2f}x faster), outputs equal"
            )


if __name__ == "__main__":
    main()
