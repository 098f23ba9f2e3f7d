#!/usr/bin/env bash
# Check the dependency floors in pyproject.toml: a fresh venv with torch 2.13.0 (the CPU wheel on the dev machines'
# disk, see USAGE.md) and every other runtime dependency at its floor (uv's --resolution lowest-direct: saezarr's own
# requirements at their lowest allowed versions, what they pull in at the newest that fits), the test tools at the
# newest that fit those, then the tests of build, resume, export, analyze, compare, dask, the offline hub and Gemma 3.
# Usage: scripts/check_floors.sh [--venv DIR] [NAME==VERSION ...]
# A NAME==VERSION replaces that package's requirement (uv's --override), below its floor too, to probe a lower one;
# pip check is skipped then, as saezarr's own metadata still asks for the floor.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TMPDIR:-/tmp}/saezarr-floors"
TESTS=(tests/test_compat.py tests/store/test_shards.py tests/store/test_open_zarr.py tests/store/test_info.py
       tests/build/test_resume.py tests/build/test_residuals.py tests/export/test_export.py tests/test_usage_examples.py
       tests/models/test_hub_offline.py tests/models/test_gemma3.py tests/analysis/test_analyze_cli.py
       tests/analysis/test_emergence.py tests/analysis/test_compare.py
       tests/build/test_cluster.py::test_local_cluster_build_equals_single_process
       tests/build/test_cluster.py::test_analyze_on_a_cluster_equals_local)
PINS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --venv) VENV="$2"; shift ;;
        *) PINS+=("$1") ;;
    esac
    shift
done

began=$SECONDS
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0 uv
uv=("$VENV/bin/uv" pip install -q --python "$VENV/bin/python")
"${uv[@]}" --resolution lowest-direct --constraint <(echo torch==2.13.0) --override <(printf '%s\n' "${PINS[@]}") -e .
# the test tools at their newest, without moving any runtime dependency off its floor
"${uv[@]}" --constraint <("$VENV/bin/pip" freeze --exclude-editable) pytest pytest-xdist hypothesis psutil scikit-learn
if [[ ${#PINS[@]} -eq 0 ]]; then "$VENV/bin/pip" check; fi
"$VENV/bin/python" - <<'PY'
import re, tomllib
from importlib.metadata import version
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("floors:", ", ".join(f"{name} {version(name)}" for name in (re.split("[<>=!~ ;]", d)[0] for d in deps)))
PY
echo "check_floors: installed in $((SECONDS - began)) s"
env -u PYTHONPATH "$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 "${TESTS[@]}"
echo "check_floors: done in $((SECONDS - began)) s"
