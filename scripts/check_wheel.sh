#!/usr/bin/env bash
# Build saezarr's wheel, install it (not editable) into a fresh virtual environment whose dependencies come from the
# current interpreter, and run the offline demo build and an analysis from a folder outside the checkout.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
python3 -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --no-deps "$work"/dist/saezarr-*.whl
cd "$work"
export SAEZARR_CACHE="$work/cache"
python="$work/venv/bin/python"
"$python" -c 'import saezarr, sys; assert saezarr.__file__.startswith(sys.prefix), saezarr.__file__'
"$python" -m saezarr build --demo --quiet
"$python" -m saezarr analyze saezarr-demo.zarr --output demo-analysis --quiet \
    --min-pearson 0.2 --min-tpr 0.2 --max-fpr 0.3
test -s demo-analysis/report.html
echo "check_wheel: the wheel's build --demo and analyze ran from $work"
