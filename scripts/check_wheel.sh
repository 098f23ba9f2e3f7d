#!/usr/bin/env bash
# Build saezarr's wheel, install it (not editable) into a fresh virtual environment whose dependencies come from the
# current interpreter, and run the offline demo build and an analysis from a folder outside the checkout.
set -euo pipefail
unset PYTHONPATH  # the wheel alone: never a source tree on the path
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
# SAELens' registry ships inside the package: its releases are listed, and usable as --config RELEASE
"$python" -m saezarr catalogues > catalogues.txt
grep -q "^gpt2-small-res-jb " catalogues.txt || { echo "check_wheel: no SAELens release in the listing" >&2; exit 1; }
# the default config ships inside the package: offline, the build gets as far as asking the hub for its model
printf 'sentence,concept_strength_label\nYou are a fool.,3\nThe sky is blue.,0\n' > two.csv
if HF_HUB_OFFLINE=1 HF_HOME="$work/hf" "$python" -m saezarr build --input two.csv --output default.zarr 2> default.err; then
    echo "check_wheel: an offline build with the default config should stop at the model download" >&2; exit 1
fi
grep -q -- "--model google/gemma-2-2b: could not get config.json" default.err || { cat default.err >&2; exit 1; }
test ! -e default.zarr
echo "check_wheel: the wheel's build --demo and analyze ran from $work"
