"""Prove that a refactoring left every output of saezarr byte-identical.

Drives saezarr only through its command line (`python -m saezarr ...` subprocesses, never an import of its modules),
so it works on any code layout:

    python scripts/check_identical.py --code DIR --work WORKDIR --manifest OUT.json
    python scripts/check_identical.py --compare A.json B.json   # prints the differences, exit 1 if any

`--code DIR` is a checkout whose `saezarr` package is used: the subprocesses run with PYTHONPATH=DIR prepended (it is
checked that this copy, not an installed one, is imported), SAEZARR_CACHE=WORKDIR/cache (the demo's model, tokenizer
and SAEs are generated afresh) and HF_HUB_OFFLINE=1, in the cwd WORKDIR/outputs; WORKDIR must be empty or new. The
subprocesses run under the Python that runs this script: run it with another environment's to compare environments,
with `--assets CACHE` (a SAEZARR_CACHE holding a generated demo, copied into WORKDIR/cache) so that both use the
same demo model and SAEs rather than ones each generates with its own library versions.

What runs (a demo build takes about 5 s; all of it about 1 min on 2 cores):
  demo.zarr, demo_res.zarr        build --demo, and with --residuals
  extend_*.zarr                   build from the CSV's first 20 rows and 4 of the 6 SAEs (128-fragment chunks), then
                                  --extend: rows and SAEs at once (with residuals); rows, then SAEs in a second
                                  extension; only SAEs, read from the stored residuals without the model
  dask.zarr                       build --demo --local-workers 2
  npz/, sentences/                export-npz of demo.zarr (per config); export-npz --per-sentence of demo_res.zarr
  analysis_demo/, analysis_res/   analyze of demo.zarr and demo_res.zarr (20 permutations, 3 folds, the README's
                                  looser demo thresholds)
  comparison/                     compare of the two analyses
  info/*.txt                      `saezarr info` of every store
  demo-assets/                    the generated demo model, tokenizer, SAEs and config file (from the cache)

The manifest maps every file's path (relative to WORKDIR/outputs; demo assets under demo-assets/) to its sha256.

Normalisation before hashing. Each rule is shown to vary between two runs of the same code (the baseline run twice
into two work dirs: of 783 files, 19 differed, all covered here); nothing else is excluded or normalised:
  - WORKDIR's absolute path is replaced by `<WORK>` in every text file (.json, .csv, .html, .txt). The demo assets
    live in WORKDIR/cache, and their folders are recorded as `model` and `sae_repo` in the stores' root zarr.json,
    analysis.json, comparison.json, the reports (report.html of analyze and compare), `info` and the demo config.json.
  - JSON key `store_id`, in the root zarr.json of every store: a random uuid4 drawn at each build. Those 6 files are
    hashed as a normalised copy (parsed, the key dropped, dumped with key order kept), so of them only the values and
    key order are compared, not the whitespace. The key appears nowhere else (not in the reports nor analyses).
Not hashed, as not outputs: WORKDIR/cache/analysis and cache/coordinates (analyze's cache, keyed by the store_id so
named differently in every run; its contents are what the analysis files are made of) and the commands' stdout and
stderr (durations, dask worker addresses). No timestamps, hostnames, lock files or code paths were found in the
outputs (the checkout's path appears in none).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HALF_ROWS = 20  # rows of the demo CSV the extended stores start from
OLD_CONFIGS = "layer_0_l0_8,layer_0_l0_24,layer_2_l0_8,layer_2_l0_24"  # the SAEs the extended stores start from
EXTEND_CHUNK = "128"  # fragments per chunk of the extended stores: several chunks, the last one partial
ANALYZE = ["--permutations", "20", "--folds", "3", "--min-pearson", "0.2", "--min-tpr", "0.2", "--max-fpr", "0.3"]
TEXT_SUFFIXES = {".json", ".csv", ".html", ".txt"}
VOLATILE_KEYS = {"store_id"}  # JSON keys whose values are random per build
WORK_TOKEN = "<WORK>"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line: a run (--code, --work, --manifest) or a comparison (--compare A B)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, help="checkout whose saezarr package is run")
    parser.add_argument("--work", type=Path, help="work folder, empty or new")
    parser.add_argument("--manifest", type=Path, help="JSON file to write: path -> sha256")
    parser.add_argument("--assets", type=Path, help="a SAEZARR_CACHE with the demo generated, to use instead")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two manifests")
    args = parser.parse_args(argv)
    if args.compare is None and None in (args.code, args.work, args.manifest):
        parser.error("give --code, --work and --manifest, or --compare A B")
    return args


def environment(code: Path, work: Path) -> dict[str, str]:
    """The subprocesses' environment: code first on PYTHONPATH, a private demo cache, the hub offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    env["SAEZARR_CACHE"] = str(work / "cache")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def check_import(code: Path, env: dict[str, str], cwd: Path) -> str:
    """The saezarr the subprocesses import; refuse if it is not the one under code."""
    probe = [sys.executable, "-c", "import saezarr; print(saezarr.__file__)"]
    found = Path(subprocess.run(probe, env=env, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip())
    if not found.resolve().is_relative_to(code.resolve()):
        sys.exit(f"check_identical: saezarr is imported from {found}, not from {code}")
    return str(found)


def demo_csv(code: Path) -> Path:
    """The bundled demo CSV of the checkout, wherever its package keeps it."""
    found = sorted((code / "saezarr").rglob("aggression_demo.csv"))
    if len(found) != 1:
        sys.exit(f"check_identical: expected one aggression_demo.csv under {code / 'saezarr'}, found {found}")
    return found[0]


def write_inputs(code: Path, inputs: Path) -> tuple[Path, Path]:
    """Copy the demo CSV, and write its header and first HALF_ROWS rows; return (full, half)."""
    inputs.mkdir(parents=True)
    full = inputs / "aggression_demo.csv"
    shutil.copyfile(demo_csv(code), full)
    half = inputs / "aggression_demo_half.csv"
    with full.open(newline="") as src, half.open("w", newline="") as dst:
        rows = list(csv.reader(src))
        csv.writer(dst, lineterminator="\n").writerows(rows[: HALF_ROWS + 1])
    return full, half


def extend_steps(full: Path, half: Path) -> list[list[str]]:
    """Three extended stores: rows and SAEs at once, rows then SAEs, SAEs alone from stored residuals."""
    start = ["build", "--demo", "--configs", OLD_CONFIGS, "--chunk-fragments", EXTEND_CHUNK, "--quiet"]
    extend = ["build", "--demo", "--extend", "--quiet", "--input", str(full)]
    return [
        [*start, "--input", str(half), "--output", "extend_both.zarr", "--residuals"],
        [*extend, "--output", "extend_both.zarr"],
        [*start, "--input", str(half), "--output", "extend_steps.zarr"],
        [*extend, "--output", "extend_steps.zarr", "--configs", OLD_CONFIGS],
        [*extend, "--output", "extend_steps.zarr"],
        [*start, "--input", str(full), "--output", "extend_saes.zarr", "--residuals"],
        [*extend, "--output", "extend_saes.zarr"],
    ]


def steps(full: Path, half: Path) -> list[list[str]]:
    """Every saezarr command line to run, in order."""
    demo = ["build", "--demo", "--quiet", "--input", str(full)]
    return [
        [*demo, "--output", "demo.zarr"],
        [*demo, "--output", "demo_res.zarr", "--residuals"],
        *extend_steps(full, half),
        [*demo, "--output", "dask.zarr", "--local-workers", "2"],
        ["export-npz", "demo.zarr", "--output", "npz"],
        ["export-npz", "demo_res.zarr", "--output", "sentences", "--per-sentence"],
        ["analyze", "demo.zarr", "--output", "analysis_demo", "--quiet", *ANALYZE],
        ["analyze", "demo_res.zarr", "--output", "analysis_res", "--quiet", *ANALYZE],
        ["compare", "analysis_demo", "analysis_res", "--output", "comparison"],
    ]


def saezarr(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run one saezarr command; its stdout, or exit with its stderr when it fails."""
    result = subprocess.run([sys.executable, "-m", "saezarr", *args], env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"check_identical: `saezarr {' '.join(args)}` exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def run_all(code: Path, work: Path, assets: Path | None) -> dict[str, float]:
    """Run every step and `info` of every store in work/outputs (the demo assets copied from `assets`, if given);
    seconds per step."""
    env, outputs = environment(code, work), work / "outputs"
    outputs.mkdir(parents=True)
    if assets is not None:
        copy_assets(assets, work / "cache")
    check_import(code, env, outputs)
    full, half = write_inputs(code, work / "inputs")
    seconds: dict[str, float] = {}
    for args in steps(full, half):
        began = time.perf_counter()
        saezarr(args, env, outputs)
        seconds[" ".join(args).replace(str(work), WORK_TOKEN)] = round(time.perf_counter() - began, 2)
    (outputs / "info").mkdir()
    for store in sorted(outputs.glob("*.zarr")):
        (outputs / "info" / f"{store.stem}.txt").write_text(saezarr(["info", store.name], env, outputs))
    return seconds


def drop_keys(value: object) -> object:
    """A JSON value with the VOLATILE_KEYS dropped at every depth, key order kept."""
    if isinstance(value, dict):
        return {k: drop_keys(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [drop_keys(v) for v in value]
    return value


def has_volatile(value: object) -> bool:
    """Whether a JSON value holds one of the VOLATILE_KEYS at any depth."""
    if isinstance(value, dict):
        return bool(VOLATILE_KEYS & value.keys()) or any(has_volatile(v) for v in value.values())
    return isinstance(value, list) and any(has_volatile(v) for v in value)


def normalise(path: Path, data: bytes, work: Path) -> tuple[bytes, list[str]]:
    """The bytes to hash of one file, and the names of the normalisations applied."""
    if path.suffix not in TEXT_SUFFIXES:
        return data, []
    text, applied = data.decode("utf-8"), []
    if str(work) in text:
        text, applied = text.replace(str(work), WORK_TOKEN), ["work-path"]
    if path.suffix == ".json":
        value = json.loads(text)
        if has_volatile(value):
            text, applied = json.dumps(drop_keys(value), indent=1, ensure_ascii=False), [*applied, "volatile-keys"]
    return text.encode("utf-8"), applied


def copy_assets(assets: Path, cache: Path) -> None:
    """Copy the generated demo of the cache `assets` into the cache folder, its config file's paths made the copy's."""
    source = demo_assets(assets)
    shutil.copytree(source, cache / source.name)
    config = cache / source.name / "config.json"
    config.write_text(config.read_text().replace(str(assets), str(cache)))


def demo_assets(cache: Path) -> Path:
    """The folder of the generated demo assets in a SAEZARR_CACHE (the one holding config.json)."""
    found = sorted(cache.glob("*/config.json"))
    if len(found) != 1:
        sys.exit(f"check_identical: expected one demo asset folder in {cache}, found {found}")
    return found[0].parent


def hash_tree(root: Path, prefix: str, work: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """sha256 of every file under root by prefixed relative path, and the normalisations applied per file."""
    digests, notes = {}, {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(root).as_posix()
        data, applied = normalise(path, path.read_bytes(), work)
        digests[key] = hashlib.sha256(data).hexdigest()
        if applied:
            notes[key] = applied
    return digests, notes


def make_manifest(code: Path, work: Path, assets: Path | None = None) -> dict:
    """Run everything and hash every output; the manifest."""
    began = time.perf_counter()
    seconds = run_all(code, work, assets)
    outputs = work / "outputs"
    files, notes = hash_tree(outputs, "", work)
    asset_files, asset_notes = hash_tree(demo_assets(work / "cache"), "demo-assets/", work)
    return {
        "meta": {
            "code": str(code),
            "saezarr": check_import(code, environment(code, work), outputs),
            "python": sys.version.split()[0],
            "seconds": round(time.perf_counter() - began, 1),
            "steps": seconds,
        },
        "normalised": {**notes, **asset_notes},
        "files": {**files, **asset_files},
    }


def compare(a: Path, b: Path) -> int:
    """Print how two manifests' files differ; 1 if they do, else 0."""
    left, right = (json.loads(p.read_text())["files"] for p in (a, b))
    lines = [f"only in {a}: {k}" for k in sorted(left.keys() - right.keys())]
    lines += [f"only in {b}: {k}" for k in sorted(right.keys() - left.keys())]
    lines += [f"differs: {k}" for k in sorted(left.keys() & right.keys()) if left[k] != right[k]]
    print("\n".join(lines) if lines else f"identical: {len(left)} files")
    return 1 if lines else 0


def main(argv: list[str] | None = None) -> int:
    """Run and write a manifest, or compare two."""
    args = parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    code, work = args.code.resolve(), args.work.resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"check_identical: {work} is not empty; give a fresh --work folder")
    manifest = make_manifest(code, work, args.assets.resolve() if args.assets else None)
    args.manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    meta = manifest["meta"]
    print(f"check_identical: {len(manifest['files'])} files hashed in {meta['seconds']} s -> {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
