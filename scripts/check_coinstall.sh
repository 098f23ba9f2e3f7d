#!/usr/bin/env bash
# Check that saezarr installs beside the interpretability packages researchers use with it. For each set below: a
# fresh venv with torch pinned (2.13.0, the CPU wheel on the dev machines' disk, where the set allows), saezarr and
# the set installed together (resolved by uv: pip's resolver backtracked for over 15 minutes on sae-dashboard's
# pins), `pip check`, one import of saezarr and the set, then saezarr's demo build and an analysis of it; a summary
# line per set at the end. Not run in CI: each set downloads hundreds of MB.
# Usage: scripts/check_coinstall.sh [--venvs DIR] [SET ...]   (SET: an index into SETS)
set -uo pipefail
cd "$(dirname "$0")/.."
VENVS="${TMPDIR:-/tmp}/saezarr-coinstall"
# sae-dashboard 0.8 holds numpy below 2 (through transformer-lens 2), and pyarrow 26 refuses numpy 1.x at import
# without saying so in its metadata: that set pins pyarrow below 26, as such an environment must
SETS=("sae-lens>=6,<7 transformer-lens>=3,<4" "sae-dashboard>=0.8,<0.9 pyarrow<26" "nnsight")
IMPORTS=("sae_lens transformer_lens" "sae_dashboard" "nnsight")
# sae-dashboard needs torchvision (through decode-clt), and PyPI's fails to load beside the CPU torch 2.13.0 wheel
# ('operator torchvision::nms does not exist'): that set takes the CUDA pair the dev machines' disk also holds
TORCH=("torch==2.13.0" "torch==2.14.1 torchvision==0.29.1" "torch==2.13.0")
CHOSEN=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --venvs) VENVS="$2"; shift ;;
        *) CHOSEN+=("$1") ;;
    esac
    shift
done
[[ ${#CHOSEN[@]} -gt 0 ]] || CHOSEN=("${!SETS[@]}")

summary=()
for i in "${CHOSEN[@]}"; do
    read -ra packages <<< "${SETS[$i]}"
    read -ra modules <<< "${IMPORTS[$i]}"
    read -ra torch <<< "${TORCH[$i]}"
    venv="$VENVS/set$i"
    log="$VENVS/set$i.log"
    rm -rf "$venv" && mkdir -p "$VENVS" && python3 -m venv "$venv"
    began=$SECONDS
    echo "== ${SETS[$i]}" | tee "$log"
    if ! "$venv/bin/pip" install -q "${torch[@]}" uv >> "$log" 2>&1 ||
        ! "$venv/bin/uv" pip install -q --python "$venv/bin/python" --constraint <(printf '%s\n' "${torch[@]}") . \
            "${packages[@]}" >> "$log" 2>&1; then
        summary+=("FAIL install  ${SETS[$i]}: $(grep -E 'ERROR|conflict|requires' "$log" | tail -3 | tr '\n' ' ')")
        continue
    fi
    names=(saezarr torch transformers huggingface_hub numpy xarray zarr "${packages[@]%%[<>=]*}" sae-lens transformer-lens)
    versions=$("$venv/bin/python" -c 'import sys; from importlib.metadata import PackageNotFoundError, version
def known(name):
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return None
print(", ".join(dict.fromkeys(filter(None, map(known, sys.argv[1:])))))' "${names[@]}" 2>> "$log")
    if ! "$venv/bin/pip" check >> "$log" 2>&1; then
        summary+=("FAIL pip check  ${SETS[$i]}: $versions; $(tail -3 "$log" | tr '\n' ' ')")
    elif ! "$venv/bin/python" -c "import saezarr.models.language_model, $(IFS=,; echo "${modules[*]}")" >> "$log" 2>&1; then
        summary+=("FAIL import  ${SETS[$i]}: $versions; $(tail -1 "$log")")
    elif ! (cd "$venv" && export SAEZARR_CACHE="$venv/demo-cache" && bin/python -m saezarr build --demo --quiet &&
            bin/python -m saezarr analyze saezarr-demo.zarr --output demo-analysis --quiet --min-pearson 0.2) \
            >> "$log" 2>&1; then
        summary+=("FAIL demo  ${SETS[$i]}: $versions; $(tail -1 "$log")")
    else
        summary+=("PASS  ${SETS[$i]}: $versions ($((SECONDS - began)) s)")
    fi
done
printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q '^FAIL'
