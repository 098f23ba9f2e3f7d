"""Large input: 100,000 sentences are validated, fragmented and planned, and the store initialised, in bounded memory."""

from __future__ import annotations

import csv
import os
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr
from faultkit import REPORT, note

from saezarr.testing.synthetic import DEMO_CSV

N_SENTENCES = 100_000
PEAK_RSS_LIMIT = 3 * 2**30


def _write_large_csv(path, n: int, seed: int = 0) -> None:
    """Sentences of 2 to 7 words drawn from the demo's vocabulary, with commas and quotes now and then."""
    words = " ".join(pd.read_csv(DEMO_CSV)["sentence"]).replace(".", "").replace(",", "").split()
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 8, n)
    picks = iter(rng.integers(0, len(words), int(lengths.sum())).tolist())
    labels = rng.integers(0, 4, n).tolist()
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "concept_strength_label"])
        for i, length in enumerate(lengths.tolist()):
            text = " ".join(words[next(picks)] for _ in range(length)).capitalize()
            if i % 7 == 0:
                text = f'{text}, "{text.split()[0].lower()}" too'
            writer.writerow([text + ".", labels[i]])


@pytest.mark.slow
def test_100k_sentences_plan_in_bounded_memory(demo_config, tmp_path):
    source, store = tmp_path / "large.csv", tmp_path / "large.zarr"
    _write_large_csv(source, N_SENTENCES)
    args = [
        sys.executable,
        "-m",
        "saezarr",
        "build",
        "--input",
        str(source),
        "--output",
        str(store),
        "--config",
        str(demo_config),
        "--max-chunks",
        "1",
        "--quiet",
    ]
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        started = time.monotonic()
        pid = os.posix_spawn(
            sys.executable,
            args,
            {**os.environ, "TOKENIZERS_PARALLELISM": "false"},
            file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, err.fileno(), 2)],
        )
        _, status, usage = os.wait4(pid, 0)  # this child's own peak RSS, not the session's largest child
        elapsed = time.monotonic() - started
        err.seek(0)
        stderr = err.read()
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    REPORT["large input: sentences planned"] += N_SENTENCES
    note(
        f"large input: {N_SENTENCES} sentences validated and planned, store initialised, 1 chunk built: "
        f"{elapsed:.1f} s wall, peak RSS {peak / 2**20:.0f} MiB (bound {PEAK_RSS_LIMIT / 2**30:.0f} GiB)"
    )
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    assert "Traceback" not in stderr
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    group = zarr.open_group(store, mode="r")
    n_fragments = group["activations"].shape[1]
    sentence_index = group["sentence_index"][:]
    assert sentence_index[0] == 0 and sentence_index[-1] == N_SENTENCES - 1
    assert np.all(np.diff(sentence_index) >= 0) and len(np.unique(sentence_index)) == N_SENTENCES
    assert n_fragments == len(sentence_index) > N_SENTENCES
    assert group.attrs["n_sentences"] == N_SENTENCES
    marks = [m for d in (store / "_saezarr" / "done").iterdir() for m in d.iterdir()]
    assert sorted({m.name for m in marks}) == ["0"], "exactly the first chunk of each config is built"
    assert not (store / "_saezarr" / "lock").exists()
