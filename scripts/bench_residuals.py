#!/usr/bin/env python
"""Benchmark the residual stream in the store and `build --extend`, each ratio against a baseline measured in the same
run, on the workloads of scripts/bench_build.py (its asset generator):

1. `--residuals` overhead, write-bound workload (tiny model of hidden 64 and 4 layers, 16 SAEs of width 16384,
   ~2000 fragments): a build keeping every layer's residuals against the same build without. Target <= 1.3x.
2. `--extend` by 10% more sentences, same workload: extending a store of the first 90% of the sentences against a
   full rebuild of all of them. Target <= 0.15.
3. SAEs added from stored residuals, real Gemma-2 widths (d_model 2304, 16384-wide random SAEs; an 8-layer model of
   Gemma-2-2B's layer shape, the new SAEs on its last 3 layers, ~130 fragments): `--extend` adding 6 SAEs to a store holding every layer's residuals
   (no model loaded) against a build of the same 6 SAEs that runs the model. Target >= 3x faster.

Every build runs in this process after one warm-up build (imports and page cache warm); times are wall seconds of
`build()`, model loading included where a build loads it.

    python scripts/bench_residuals.py                 # ~6 min on 2 cores, assets generated once in $TMPDIR
    python scripts/bench_residuals.py --out-md scripts/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_build  # noqa: E402  (the workloads' asset generator)

from saezarr.build.pipeline import BuildOptions, build  # noqa: E402
from saezarr.inputs.configs import load_config_file  # noqa: E402
from saezarr.testing.synthetic import write_config_file  # noqa: E402

SIZES = {"w1_fragments": 96, "w2_layers": 4, "w2_l0s_per_layer": 4, "w2_fragments": 2000, "rss_factor": 1}
CHUNK = 256
EXTEND_CHUNK = 64  # 2000 fragments in chunks of 64: the last partial chunk weighs what one of 512 does in 16k fragments
TARGETS = {"residuals_over_plain": 1.3, "extend_over_rebuild": 0.15, "model_build_over_extend": 3.0}


def assets(root: Path, workload: int) -> Path:
    """The workload's model, SAEs, config file and CSV (generated once)."""
    folder = root / f"resid-assets-w{workload}"
    if not (folder / "meta.json").is_file():
        print(f"generating workload {workload} assets in {folder} ...", flush=True)
        bench_build.task_gen({"folder": str(folder), "workload": workload, "sizes": SIZES})
    return folder


def timed(chunk: int = CHUNK, **kwargs) -> tuple[float, object]:
    """Wall seconds of one build (chunks of `chunk` fragments for a new store), and its summary."""
    started = time.perf_counter()
    summary = build(BuildOptions(quiet=True, chunk_fragments=None if kwargs.get("extend") else chunk, **kwargs))
    return time.perf_counter() - started, summary


def config_subset(source: Path, target: Path, keep) -> Path:
    """A copy of a config file with the configs for which keep(config) is true."""
    file = load_config_file(source)
    return write_config_file(target, file.model, file.sae_repo, [c for c in file.configs if keep(c)])


def residual_overhead_and_extend(root: Path, work: Path) -> dict:
    folder = assets(root, 2)
    csv, config = folder / "input.csv", folder / "config.json"
    timed(input=csv, output=work / "warm.zarr", config_file=config)  # warm-up: imports, page cache
    plain, _ = timed(input=csv, output=work / "plain.zarr", config_file=config)
    kept, summary = timed(input=csv, output=work / "residuals.zarr", config_file=config, residuals="all")
    table = pd.read_csv(csv)
    old_csv = work / "old.csv"
    table.iloc[: int(round(len(table) * 0.9))].to_csv(old_csv, index=False)
    timed(input=old_csv, output=work / "extended.zarr", config_file=config, chunk=EXTEND_CHUNK)
    extend, grown = timed(input=csv, output=work / "extended.zarr", config_file=config, extend=True)
    rebuild, full = timed(input=csv, output=work / "rebuild.zarr", config_file=config, chunk=EXTEND_CHUNK)
    return {
        "fragments": summary.n_fragments,
        "configs": summary.n_configs,
        "plain_s": plain,
        "residuals_s": kept,
        "residuals_over_plain": kept / plain,
        "residual_bytes": _bytes(work / "residuals.zarr" / "residuals")
        + _bytes(work / "residuals.zarr" / "embeddings"),
        "store_bytes": _bytes(work / "plain.zarr"),
        "extend_s": extend,
        "rebuild_s": rebuild,
        "extend_over_rebuild": extend / rebuild,
        "new_sentences": len(table) - int(round(len(table) * 0.9)),
        "extend_units": grown.units_written,
        "rebuild_units": full.units_written,
        "sentences": len(table),
    }


DEEP_LAYERS = 8  # Gemma-2-2B's layer shape; the new SAEs read its deeper half, as mid-depth Gemma Scope SAEs do
DEEP_FRAGMENTS = 128


def deep_assets(root: Path) -> Path:
    """A Gemma-2-2B-shaped model of DEEP_LAYERS layers, one SAE on layer 0 and two on each of the last three layers
    (2304 x 16384, Gemma Scope layout), and a CSV of ~DEEP_FRAGMENTS fragments (generated once)."""
    from transformers import AutoTokenizer

    from saezarr.inputs.configs import SAEConfig
    from saezarr.testing.synthetic import DEMO_CSV, calibration_residuals, write_model

    final = root / f"resid-assets-deep{DEEP_LAYERS}"
    if (final / "config.json").is_file():
        return final
    print(f"generating the {DEEP_LAYERS}-layer workload in {final} ...", flush=True)
    folder = final.with_name(final.name + ".partial")
    shutil.rmtree(folder, ignore_errors=True)
    pool = pd.read_csv(DEMO_CSV)["sentence"].tolist() + bench_build._sentence_pool(200, seed=5)
    write_model(folder / "model", pool, **{**bench_build.W1_MODEL, "num_layers": DEEP_LAYERS})
    tokenizer = AutoTokenizer.from_pretrained(folder / "model")
    chosen, _ = bench_build._take_fragments(tokenizer, pool, DEEP_FRAGMENTS)
    bench_build._write_csv(folder / "input.csv", chosen, seed=5)
    deep = range(DEEP_LAYERS - 3, DEEP_LAYERS)
    configs = [SAEConfig(0, 25, "layer_0/width_16k/average_l0_25")] + [
        SAEConfig(layer, l0, f"layer_{layer}/width_16k/average_l0_{l0}") for layer in deep for l0 in (20, 40)
    ]
    residuals = calibration_residuals(folder / "model", sorted({c.layer for c in configs}), chosen[:16])
    bench_build._write_sae_params(folder / "saes", configs, residuals, bench_build.SAE_WIDTH, seed=5)
    write_config_file(folder / "config.json", str(final / "model"), str(final / "saes"), configs)
    os.rename(folder, final)
    return final


def saes_from_residuals(root: Path, work: Path) -> dict:
    folder = deep_assets(root)
    csv, config = folder / "input.csv", folder / "config.json"
    old = config_subset(config, work / "old.json", lambda c: c.layer == 0)
    new = config_subset(config, work / "new.json", lambda c: c.layer != 0)
    timed(input=csv, output=work / "warm1.zarr", config_file=old)  # warm-up
    timed(input=csv, output=work / "grown.zarr", config_file=old, residuals="all")
    extend, summary = timed(input=None, output=work / "grown.zarr", config_file=config, extend=True)
    model_build, _ = timed(input=csv, output=work / "model.zarr", config_file=new)
    return {
        "fragments": summary.n_fragments,
        "new_saes": len(load_config_file(new).configs),
        "extend_s": extend,
        "extend_model_passes": summary.model_passes,
        "extend_forward_batches": summary.forward_batches,
        "model_build_s": model_build,
        "model_build_over_extend": model_build / extend,
    }


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def markdown(w2: dict, w1: dict) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    met = {
        "residuals_over_plain": w2["residuals_over_plain"] <= TARGETS["residuals_over_plain"],
        "extend_over_rebuild": w2["extend_over_rebuild"] <= TARGETS["extend_over_rebuild"],
        "model_build_over_extend": w1["model_build_over_extend"] >= TARGETS["model_build_over_extend"],
    }
    ok = {key: "met" if value else "MISSED" for key, value in met.items()}
    return f"""
## Residual stream and `build --extend` (scripts/bench_residuals.py, {date})

{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load shared with other work; one run, every
ratio's two sides in the same run, after a warm-up build; chunks of {CHUNK} fragments.

| figure | value | target |
|---|---|---|
| build with `--residuals` (all 4 layers + embeddings) / without, write-bound workload ({w2["configs"]} SAEs x 16384, {w2["fragments"]} fragments, hidden 64) | {w2["residuals_s"]:.2f} s / {w2["plain_s"]:.2f} s = **{w2["residuals_over_plain"]:.2f}x** | <= 1.3x ({ok["residuals_over_plain"]}) |
| residual stream on disk / the plain store | {w2["residual_bytes"] / 1e6:.2f} MB / {w2["store_bytes"] / 1e6:.2f} MB | |
| `--extend` by {w2["new_sentences"]} sentences (10% of {w2["sentences"]}) / full rebuild, chunks of {EXTEND_CHUNK} (units written {w2["extend_units"]} / {w2["rebuild_units"]}) | {w2["extend_s"]:.2f} s / {w2["rebuild_s"]:.2f} s = **{w2["extend_over_rebuild"]:.3f}** | <= 0.15 ({ok["extend_over_rebuild"]}) |
| build of {w1["new_saes"]} SAEs running the model / `--extend` adding them from stored residuals (d_model 2304, width 16384, {DEEP_LAYERS}-layer model, {w1["fragments"]} fragments; forward batches in the extension: {w1["extend_forward_batches"]}) | {w1["model_build_s"]:.2f} s / {w1["extend_s"]:.2f} s = **{w1["model_build_over_extend"]:.1f}x** | >= 3x ({ok["model_build_over_extend"]}) |
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, default=Path(tempfile.gettempdir()) / "saezarr-bench")
    parser.add_argument("--out-md", type=Path, default=None, help="append the figures to this markdown file")
    parser.add_argument("--w2-json", type=Path, default=None, help="reuse parts 1-2's figures from this JSON file")
    args = parser.parse_args(argv)
    args.assets.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-resid-", dir=args.assets))
    try:
        if args.w2_json:
            w2 = json.loads(args.w2_json.read_text())
        else:
            w2 = residual_overhead_and_extend(args.assets, work)
        print(json.dumps(w2, indent=1), flush=True)
        w1 = saes_from_residuals(args.assets, work)
        print(json.dumps(w1, indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(w2, w1)
    print(text)
    if args.out_md:
        with open(args.out_md, "a", encoding="utf-8") as file:
            file.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
