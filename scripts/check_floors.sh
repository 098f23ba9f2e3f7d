#!/usr/bin/env bash
# Verify the dependency floors in pyproject.toml: install saezarr into a fresh venv with every runtime dependency
# pinned to its lower bound (or to NAME==VERSION overrides given as arguments), then run the store tests and a smoke
# check of the analysis/dask APIs. Usage: scripts/check_floors.sh [--quick] [--venv DIR] [NAME==VERSION ...]
# torch is always installed as 2.13.0 first: that CPU wheel lies on the dev machines' disk (see USAGE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=/tmp/floors-venv
TESTS=(tests/store/test_open_zarr.py tests/build/test_resume.py tests/export/test_export.py tests/store/test_info.py
       tests/test_usage_examples.py tests/store/test_shards.py tests/models/test_hub_offline.py)
OVERRIDES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) TESTS=(tests/store/test_shards.py tests/test_usage_examples.py tests/store/test_info.py tests/models/test_hub_offline.py) ;;
        --venv) VENV="$2"; shift ;;
        *) OVERRIDES+=("$1") ;;
    esac
    shift
done

# NAME>=X in pyproject becomes NAME==X, unless overridden on the command line
mapfile -t PINS < <(python3 - "${OVERRIDES[@]}" <<'PY'
import re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = {re.split("[<>=!~ ]", d)[0].lower(): re.sub(r">=", "==", d, count=1).split(",")[0] for d in deps}
pins.pop("torch")
for override in sys.argv[1:]:
    pins[re.split("[<>=!~ ]", override)[0].lower()] = override
print("\n".join(pins.values()))
PY
)

rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e '.[dev]' "${PINS[@]}"
echo "installed: ${PINS[*]}"
"$VENV/bin/pip" check

"$VENV/bin/python" - <<'PY'
"""Smoke check of the APIs the analysis and dask code uses (scipy, pyarrow, matplotlib, distributed)."""
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import scipy.stats
from distributed import Client, LocalCluster

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ranks = scipy.stats.rankdata(np.array([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]]), axis=1)
assert ranks.tolist() == [[3.0, 1.0, 2.0], [2.5, 2.5, 1.0]], ranks
with tempfile.TemporaryDirectory() as tmp:
    frame = pd.DataFrame({"feature": np.arange(3), "text": ["a", "b", "c"], "mean": [0.5, 1.0, 1.5]})
    frame.to_parquet(Path(tmp) / "t.parquet", engine="pyarrow")
    pd.testing.assert_frame_equal(pd.read_parquet(Path(tmp) / "t.parquet", engine="pyarrow"), frame)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(Path(tmp) / "p.png")
    assert (Path(tmp) / "p.png").read_bytes()[:4] == b"\x89PNG"
with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
    with Client(cluster) as client:
        assert client.submit(sum, [1, 2, 3]).result() == 6
print("smoke: scipy, pyarrow, matplotlib, distributed OK")
PY

env -u PYTHONPATH "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
