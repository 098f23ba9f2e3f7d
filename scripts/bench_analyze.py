#!/usr/bin/env python
"""Benchmark `saezarr analyze` against the legacy analysis and a plain read of the store, all in the same run.

Data: a tiny random Gemma-2 (`saezarr.testing.synthetic.write_model`), 8 Gemma Scope-layout SAEs of width 16384
(`write_saes`, 2 per layer on 4 layers) and a labeled CSV of N sentences with all four labels: random prefixes of
the bundled demo sentences of that label, most ending in a word typical of the label, so that some features
really track the label and the ranked tables are not empty. Two stores are built with `--fragments token`: N and
4N sentences.  Figures, each side measured in this run (whole processes are fresh children of this script;
matplotlib's font list, built once per machine, is built before the first timed analyze):

1. legacy vs analyze: `saezarr export-npz` + `scripts/legacy_analyze.py` (load each npz whole, per-feature scipy
   loop) against `python -m saezarr analyze`, whole processes. The target ratio compares the legacy analysis
   process with the analyze process (the npz files were the legacy input; the export is reported apart).  The
   two ranked_features.csv must hold the same features with the same numbers (neuronpedia_url differs by design).
2. peak RSS of the analyze process (the process tree: getrusage of the children, and psutil polling of the
   tree's summed RSS) for the N and 4N stores.
3. a cold final-token analysis against a plain decompression of the same chunks on all cores (zarr reading every
   shard of every config with a thread pool; the bare zstd decode of the shards' inner chunks is shown too).
   Both are timed inside fresh processes after their imports.
4. a re-run with other thresholds, top-n and examples on the unchanged store (cache hit) against the first run,
   as whole processes and inside processes after imports; beside it, the floor of any whole-process re-run: a
   process that only imports what a cached re-run imports, numpy, numcodecs, pyarrow.parquet and pandas (best of
   3), against each first run.
5. the same first run and re-run at the real scale: a third store of the N sentences over 135 generated SAEs of
   width 16384 with the layers, L0s and paths of config/gemma_scope_16k_configurations.json, on a random model
   with Gemma-2-2B's 26 layers (`--scale-configs K`: K of them, evenly spread over that list; `--quick`: 12 of
   width 2048; `--no-scale` skips it). Its SAEs (~1.1 GiB at full scale) are kept under `--cache`.

    python scripts/bench_analyze.py --quick                          # ~1 min on 2 cores
    python scripts/bench_analyze.py --quick --resampling-only        # analyze with/without --permutations, --folds
    python scripts/bench_analyze.py --quick --resampling-only --scale-configs 135 --repeats 2 --baseline-src OLD
                                     # the same beside another source tree's analyze (OLD/saezarr), in one run
    python scripts/bench_analyze.py --out-md scripts/BENCHMARKS.md   # full run, 5-7 min on 2 shared cores (+3 min
                                                                     # the first time, to generate the 135 SAEs)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LEGACY = REPO / "scripts" / "legacy_analyze.py"
REAL_CONFIGS = REPO / "config" / "gemma_scope_16k_configurations.json"
RESULT_TAG = "BENCH_RESULT "
ASSET_VERSION = "a6"

SIZES = {
    "full": {"sentences": 800, "layers": 4, "l0s": (20, 60), "width": 16384, "rss_factor": 4, "scale_configs": 135},
    "quick": {"sentences": 48, "layers": 2, "l0s": (20,), "width": 2048, "rss_factor": 4, "scale_configs": 12},
}
MODEL = dict(
    hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, head_dim=32, max_tokens=128, vocab_size=512
)
# words that end most sentences of each label; the SAEs are calibrated on sentences without them, and the model's
# embeddings are scaled up so that residuals follow the token more than its random context: then an ending fires
# the same features in every sentence, and some features track the label (the ranked tables are not empty)
ENDINGS = {0: ("gently",), 1: ("firmly",), 2: ("angrily",), 3: ("violently",)}
ENDING_SHARE = 0.65
EMBEDDING_SCALE = 25.0
RERUN_OPTIONS = [
    "--min-pearson",
    "0.3",
    "--min-tpr",
    "0.4",
    "--max-fpr",
    "0.3",
    "--top-n",
    "20",
    "--examples-per-label",
    "3",
]
NUMERIC = [
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
]
KEY = ["layer", "average_l0", "feature_id"]

TARGETS = {
    "speedup": 20.0,  # legacy analysis process / analyze process, at least
    "max_abs_diff": 1e-9,  # ranked tables' numeric columns, at most
    "rss_ratio": 1.2,  # peak RSS 4N / N, at most
    "read_ratio": 1.2,  # cold analysis / plain read of the same chunks, at most ("about one read")
    "rerun_ratio": 0.10,  # re-run / first run, at most
}


# ----------------------------------------------------------------------------------------------------------------
# child processes: each prints one RESULT_TAG line with a JSON object


def _child_main(spec: dict) -> None:
    task = spec.pop("task")
    result = CHILD_TASKS[task](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)


def make_sentences(n: int, seed: int, ending_share: float = ENDING_SHARE) -> tuple[list[str], list[int]]:
    """n sentences with labels 0-3 in equal shares: random prefixes of the demo sentences of the same label, most
    ending in a word typical of the label."""
    import numpy as np
    import pandas as pd

    from saezarr.testing.synthetic import DEMO_CSV

    demo = pd.read_csv(DEMO_CSV)
    words = {k: [s.strip(' .!?"').split() for s in demo.sentence[demo.concept_strength_label == k]] for k in range(4)}
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 4).tolist()
    sentences = []
    for label in labels:
        base = words[label][rng.integers(len(words[label]))]
        chosen = base[: rng.integers(min(3, len(base)), len(base) + 1)]
        if rng.random() < ending_share:
            chosen = [*chosen, ENDINGS[label][rng.integers(len(ENDINGS[label]))]]
        sentences.append(" ".join(chosen))
    return sentences, labels


def emphasise_tokens(model_folder: Path, scale: float) -> None:
    """Scale the random model's token embeddings so that a token's residual mostly depends on the token itself."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    path = model_folder / "model.safetensors"
    weights = load_file(path)
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * np.float32(scale)
    save_file(weights, path, metadata={"format": "pt"})


def task_gen(spec: dict) -> dict:
    """The model, SAEs, config file and the N and 4N CSVs, written into spec['folder'] atomically."""
    import pandas as pd

    from saezarr.inputs.configs import SAEConfig

    started = time.perf_counter()
    sizes = spec["sizes"]
    final = Path(spec["folder"])
    with staged_folder(final) as folder:
        n_big = sizes["sentences"] * sizes["rss_factor"]
        sentences, labels = make_sentences(n_big, seed=1)
        for name, n in (("input.csv", sizes["sentences"]), ("input_big.csv", n_big)):
            pd.DataFrame({"sentence": sentences[:n], "concept_strength_label": labels[:n]}).to_csv(
                folder / name, index=False
            )
        configs = [
            SAEConfig(layer, l0, f"layer_{layer}/width_16k/average_l0_{l0}")
            for layer in range(sizes["layers"])
            for l0 in sizes["l0s"]
        ]
        write_model_and_saes(folder, final, sentences, sizes["layers"], configs, sizes["width"])
    return {"seconds": time.perf_counter() - started, "configs": len(configs)}


def task_gen_scale(spec: dict) -> dict:
    """A model with the real Gemma-2-2B's layer count and SAEs for spec['configs'], written into spec['folder']."""
    from saezarr.inputs.configs import SAEConfig

    started = time.perf_counter()
    sizes = spec["sizes"]
    configs = [SAEConfig(**entry) for entry in spec["configs"]]
    sentences, _ = make_sentences(sizes["sentences"] * sizes["rss_factor"], seed=1)  # task_gen's tokenizer corpus
    final = Path(spec["folder"])
    with staged_folder(final) as folder:
        write_model_and_saes(folder, final, sentences, spec["layers"], configs, sizes["width"])
    return {"seconds": time.perf_counter() - started, "configs": len(configs)}


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A fresh folder beside `final` that replaces it once the block succeeds."""
    folder = final.with_name(final.name + ".partial")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(final, ignore_errors=True)
    os.rename(folder, final)


def write_model_and_saes(folder: Path, final: Path, corpus: list[str], layers: int, configs: list, width: int) -> None:
    """The token-emphasised random model, calibrated SAEs and a config file pointing at them once in `final`."""
    from saezarr.testing.synthetic import write_config_file, write_model, write_saes

    write_model(folder / "model", corpus, num_layers=layers, **MODEL)
    emphasise_tokens(folder / "model", EMBEDDING_SCALE)
    calibration, _ = make_sentences(256, seed=2, ending_share=0.0)
    write_saes(folder / "saes", folder / "model", configs, calibration, width=width, seed=1)
    write_config_file(folder / "config.json", str(final / "model"), str(final / "saes"), configs)


def task_measure(spec: dict) -> dict:
    """Run one command as a fresh process: wall time, CPU time and peak RSS of its process tree."""
    import resource

    import psutil

    started = time.perf_counter()
    process = psutil.Popen(
        spec["cmd"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **spec.get("env", {})},
        cwd=spec.get("cwd"),
    )
    import threading

    tree_peak = [0]

    def poll() -> None:
        while process.poll() is None:
            try:
                members = [process, *process.children(recursive=True)]
                tree_peak[0] = max(tree_peak[0], sum(_rss(p) for p in members))
            except psutil.Error:
                pass
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    output = process.communicate()[0]
    wall = time.perf_counter() - started
    poller.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "rc": process.returncode,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "maxrss": usage.ru_maxrss * 1024,
        "tree_peak": tree_peak[0],
        "output": output[-6000:],
    }


def _rss(process) -> int:
    import psutil

    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def task_read(spec: dict) -> dict:
    """Time a plain read of every shard of the store on all cores: through zarr, and as bare zstd decodes."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from saezarr.store.format import Store

    store = Store(spec["store"])
    cores = os.cpu_count() or 1
    units = [(c, k) for c in range(store.n_configs) for k in range(store.n_chunks)]

    def zarr_read(unit: tuple[int, int]) -> int:
        start, stop = store.chunk_bounds(unit[1])
        return store.array[unit[0], start:stop, :].nbytes

    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        dense = sum(pool.map(zarr_read, units))
    zarr_time = time.perf_counter() - started
    encoder = store._shard_encoder
    files = [store.shard_files(c, k)[0] for c, k in units]
    started = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        decoded = sum(pool.map(lambda path: _decode_shard(path, encoder.zstd), files))
    codec_time = time.perf_counter() - started
    assert decoded >= dense, (decoded, dense)  # edge shards are padded to whole inner chunks
    return {
        "zarr_read": zarr_time,
        "codec_decode": codec_time,
        "dense_bytes": dense,
        "decoded_bytes": decoded,
        "cores": cores,
        "units": len(units),
        "disk_bytes": int(sum(p.stat().st_size for p in files)),
        "nan_free": bool(np.isfinite(store.array[0, :, :8]).all()),
    }


def _decode_shard(path: Path, zstd) -> int:
    """Decompress every inner chunk of one shard file (zarr's sharding index at the end: offset, length pairs)."""
    import numpy as np

    data = path.read_bytes()
    n_inner = (len(data) - 4) // 16  # upper bound; the true count is where the index starts
    for n in range(1, n_inner + 1):
        index = np.frombuffer(data, dtype="<u8", count=2 * n, offset=len(data) - 4 - 16 * n).reshape(n, 2)
        if int(index[:, 1].sum()) + 16 * n + 4 == len(data):
            break
    return sum(len(zstd.decode(data[o : o + size])) for o, size in index.tolist())


def task_analyze(spec: dict) -> dict:
    """`saezarr analyze` in this process, timed after its imports."""
    import importlib
    import pkgutil

    started = time.perf_counter()
    import saezarr.analysis
    from saezarr import cli

    for module in pkgutil.iter_modules(saezarr.analysis.__path__, "saezarr.analysis."):
        importlib.import_module(module.name)
    for name in (
        "numpy",
        "pandas",
        "xarray",
        "dask.array",
        "zarr",
        "scipy.stats",
        "pyarrow.parquet",
        "matplotlib.pyplot",
    ):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    imports = time.perf_counter() - started
    cpu_before = os.times()
    started = time.perf_counter()
    rc = cli.main(spec["argv"])
    wall = time.perf_counter() - started
    cpu_after = os.times()
    cpu = sum(
        getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("user", "system", "children_user", "children_system")
    )
    return {"rc": rc, "wall": wall, "cpu": cpu, "imports": imports, "saezarr": str(Path(saezarr.__file__).parent)}


CHILD_TASKS = {
    "gen": task_gen,
    "gen_scale": task_gen_scale,
    "measure": task_measure,
    "read": task_read,
    "analyze": task_analyze,
}


# ----------------------------------------------------------------------------------------------------------------
# parent side


def run_child(spec: dict, env: dict | None = None) -> dict:
    """Run one child task of this script in a fresh process and return its result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise SystemExit(
        f"child {spec.get('task')} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


def measure(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Time one command as a fresh process; stop the benchmark if it fails."""
    result = run_child({"task": "measure", "cmd": cmd, "env": env or {}})
    if result["rc"] != 0:
        raise SystemExit(f"{what} failed (exit {result['rc']}): {' '.join(cmd)}\n{result['output']}")
    result["peak_rss"] = max(result["maxrss"], result["tree_peak"])
    return result


def saezarr_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "saezarr", *map(str, args)]


def analyze_available() -> bool:
    done = subprocess.run(saezarr_cmd("analyze", "--help"), capture_output=True, text=True, check=False)
    return done.returncode == 0


def store_files(path: Path) -> set[Path]:
    return {p for p in path.rglob("*")}


def forget_new_files(path: Path, before: set[Path]) -> list[str]:
    """Remove what appeared in the store since `before` (an analysis cache kept there), so the next run is cold."""
    removed = []
    for p in sorted(store_files(path) - before, key=lambda p: len(p.parts), reverse=True):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(str(p.relative_to(path)))
    return removed


def compare_tables(legacy_csv: Path, analyze_csv: Path) -> dict:
    """How far analyze's ranked table is from the legacy one on the numeric columns, matched by (layer, L0, id)."""
    import numpy as np
    import pandas as pd

    legacy, new = pd.read_csv(legacy_csv), pd.read_csv(analyze_csv)
    layout_ok = list(new.columns[: len(legacy.columns)]) == list(legacy.columns)
    for table in (legacy, new):
        table["average_l0"] = table["average_l0"].astype(float)
    merged = legacy.merge(new, on=KEY, how="outer", suffixes=("_legacy", "_new"), indicator=True)
    both = merged[merged["_merge"] == "both"]
    diffs = {
        c: float(np.nanmax(np.abs(both[f"{c}_legacy"].to_numpy(float) - both[f"{c}_new"].to_numpy(float)), initial=0.0))
        for c in NUMERIC
    }
    nan_mismatch = sum(int((both[f"{c}_legacy"].isna() != both[f"{c}_new"].isna()).sum()) for c in NUMERIC)
    return {
        "legacy_rows": len(legacy),
        "analyze_rows": len(new),
        "common": len(both),
        "only_legacy": int((merged["_merge"] == "left_only").sum()),
        "only_analyze": int((merged["_merge"] == "right_only").sum()),
        "max_abs_diff": max(diffs.values()) if diffs else 0.0,
        "worst_column": max(diffs, key=diffs.get) if diffs else "",
        "nan_mismatch": nan_mismatch,
        "layout_ok": layout_ok,
        "monotonic_same": bool((both["monotonic_legacy"].astype(bool) == both["monotonic_new"].astype(bool)).all()),
        "rank_same": bool((both["rank_legacy"] == both["rank_new"]).all()),
        "urls_differ": int((_text(both["neuronpedia_url_legacy"]) != _text(both["neuronpedia_url_new"])).sum()),
    }


def _text(column):
    return column.astype("string").fillna("")


def run_benchmark(root: Path, scratch: Path, mode: str, log, scale_configs: int = 0) -> tuple[list[str], dict]:
    """Generate the data, build the stores, measure everything; return the report lines and the raw figures."""
    sizes = SIZES[mode]
    assets = root / f"assets-{mode}-{ASSET_VERSION}"
    if not (assets / "config.json").exists():
        log("generating the model, SAEs and CSVs ...")
        run_child({"task": "gen", "folder": str(assets), "sizes": sizes})
    stores = {}
    for name, csv in (("N", "input.csv"), ("4N", "input_big.csv")):
        stores[name] = scratch / f"store-{name}.zarr"
        log(f"building the {name} store ...")
        build_store(assets / "config.json", assets / csv, stores[name], f"build of the {name} store")
    raw = {"sizes": sizes, "info": store_info(stores["N"]), "info_4n": store_info(stores["4N"])}

    log("legacy: export-npz ...")
    npz = scratch / "npz"
    raw["export"] = measure(saezarr_cmd("export-npz", stores["N"], "--output", npz), "export-npz")
    raw["npz_bytes"] = sum(p.stat().st_size for p in npz.iterdir())
    log(f"legacy: analysis of {len(list(npz.iterdir()))} npz files (per-feature scipy loop) ...")
    legacy_out = scratch / "legacy-out"
    raw["legacy"] = measure([sys.executable, str(LEGACY), str(npz), "--output", str(legacy_out)], "legacy analysis")
    raw["legacy_times"] = next(
        json.loads(line.split(" ", 1)[1])
        for line in raw["legacy"]["output"].splitlines()
        if line.startswith("LEGACY_TIMES ")
    )
    shutil.rmtree(npz)

    env = {
        "XDG_CACHE_HOME": str(scratch / "user-cache"),
        "SAEZARR_CACHE": str(scratch / "user-cache" / "saezarr"),
        "MPLCONFIGDIR": str(scratch / "mpl"),
    }
    # matplotlib builds its font list once per config folder (0.1 s here): a one-time cost of the machine, not of
    # a run, so it is paid here rather than by the first timed analyze
    measure([sys.executable, "-c", "import matplotlib.font_manager"], "matplotlib font list", env)
    runs = first_run_and_rerun(stores["N"], scratch / "analyze-N", env, log)
    raw.update({key: runs[key] for key in ("analyze", "rerun", "inproc", "inproc_rerun", "cache_files")})
    raw["compare"] = compare_tables(legacy_out / "ranked_features.csv", runs["first_ranked"])
    log("a process that only imports what a cached re-run needs (the floor of a whole-process re-run) ...")
    raw["floor"] = min(
        (measure([sys.executable, "-c", FLOOR_IMPORTS], "imports") for _ in range(3)), key=lambda result: result["wall"]
    )

    log("plain read of every shard on all cores ...")
    raw["read"] = run_child({"task": "read", "store": str(stores["N"])})

    log("analyze: the 4N store (whole process) ...")
    shutil.rmtree(scratch / "user-cache", ignore_errors=True)
    raw["analyze_4n"] = measure(
        saezarr_cmd("analyze", stores["4N"], "--output", scratch / "analyze-out-4n", "--quiet", *LEGACY_ONLY),
        "analyze of the 4N store",
        env,
    )
    if scale_configs:
        shutil.rmtree(stores["4N"])  # disk: the scale store is the big one
        raw["scale"] = measure_scale(root, scratch, mode, scale_configs, assets / "input.csv", env, log)
    return report_lines(raw), raw


def build_store(config: Path, csv: Path, store: Path, what: str) -> dict:
    """`saezarr build --fragments token` of one CSV as a fresh process."""
    command = saezarr_cmd(
        "build", "--input", csv, "--output", store, "--config", config, "--fragments", "token", "--quiet"
    )
    return measure(command, what)


def store_info(store: Path) -> dict:
    """The brief `saezarr info --json` of a store."""
    done = subprocess.run(saezarr_cmd("info", store, "--json"), capture_output=True, text=True, check=True)
    return _brief_info(json.loads(done.stdout))


def first_run_and_rerun(store: Path, out: Path, env: dict, log, label: str = "") -> dict:
    """A cold analyze of the store and its re-run with RERUN_OPTIONS into the same folder (cache hit): as whole
    processes, then inside processes after imports (the analysis caches removed in between)."""
    user_cache = Path(env["XDG_CACHE_HOME"])
    shutil.rmtree(user_cache, ignore_errors=True)
    before = store_files(store)
    argv, rerun_argv = analyze_argvs(store, out)
    runs = {}
    log(f"analyze{label}: first run (whole process) ...")
    runs["analyze"] = measure(saezarr_cmd(*argv), f"analyze{label}", env)
    runs["first_ranked"] = out.with_name(out.name + "-first-ranked.csv")
    shutil.copyfile(out / "ranked_features.csv", runs["first_ranked"])
    runs["cache_files"] = sorted(str(p.relative_to(store)) for p in store_files(store) - before)[:8]
    runs["cache_bytes"] = sum(p.stat().st_size for p in user_cache.rglob("*") if p.is_file())
    log(f"analyze{label}: re-run with other thresholds, top-n and examples (whole process) ...")
    runs["rerun"] = measure(saezarr_cmd(*rerun_argv), f"analyze{label} re-run", env)
    log(f"analyze{label}: first run and re-run inside processes, after imports ...")
    forget_new_files(store, before)
    shutil.rmtree(user_cache, ignore_errors=True)
    argv, rerun_argv = analyze_argvs(store, out.with_name(out.name + "-inproc"))
    runs["inproc"] = _checked(run_child({"task": "analyze", "argv": argv}, env), f"analyze{label} in process")
    runs["inproc_rerun"] = _checked(
        run_child({"task": "analyze", "argv": rerun_argv}, env), f"analyze{label} re-run in process"
    )
    return runs


def analyze_argvs(store: Path, out: Path) -> tuple[list[str], list[str]]:
    """The CLI arguments of a first analyze of the store into `out` and of its re-run with RERUN_OPTIONS (the legacy
    analysis: no permutations, no folds; those are timed apart, by measure_resampling)."""
    first = ["analyze", str(store), "--output", str(out), "--quiet", *LEGACY_ONLY]
    return first, [*first, "--overwrite", *RERUN_OPTIONS]


# the resampling settings timed by measure_resampling, each a cold first run: (permutations, folds)
RESAMPLING = {"first run": (0, 0), "permutations": (100, 0), "folds": (0, 5), "both (the default)": (100, 5)}
BASELINE = "baseline: "  # the names of --baseline-src runs
LEGACY_ONLY = ["--permutations", "0", "--folds", "0"]


def measure_resampling(
    store: Path, out: Path, env: dict, log, label: str = "", baseline: Path | None = None, repeats: int = 1
) -> dict:
    """Cold first runs of analyze on the store inside fresh processes after imports (the analysis cache removed
    before each), without and with the permutation null and the held-out folds, and a cached re-run of the
    default; with a baseline source tree, each setting is run by it too, just before this checkout's run; with
    repeats, every setting's runs are repeated in turn and the fastest of each is kept."""
    user_cache = Path(env["XDG_CACHE_HOME"])
    sides = {"": env}
    if baseline is not None:
        sides = {BASELINE: {**env, "PYTHONPATH": str(baseline.resolve())}, "": env}
    runs = {}
    for _, (name, (permutations, folds)), (side, side_env) in itertools.product(
        range(repeats), RESAMPLING.items(), sides.items()
    ):
        argv = ["analyze", str(store), "--output", str(out), "--quiet", "--overwrite"]
        argv += ["--permutations", str(permutations), "--folds", str(folds)]
        log(f"analyze{label}: cold first run, {side}{name} (--permutations {permutations} --folds {folds}) ...")
        shutil.rmtree(user_cache, ignore_errors=True)
        run = _checked(run_child({"task": "analyze", "argv": argv}, side_env), f"analyze{label} {side}{name}")
        if side and Path(run["saezarr"]) != (baseline / "saezarr").resolve():
            raise SystemExit(f"the baseline run imported saezarr from {run['saezarr']}, not {baseline}")
        if side + name not in runs or run["wall"] < runs[side + name]["wall"]:
            runs[side + name] = run
    log(f"analyze{label}: cached re-run of the default ...")
    runs["re-run of the default"] = _checked(run_child({"task": "analyze", "argv": argv}, env), "re-run")
    return runs


def resampling_lines(runs: dict, what: str) -> list[str]:
    """One line per resampling setting: its wall and CPU time after imports and their ratios to the plain first
    run of the same code (this checkout's, or the baseline's)."""
    lines = [f"resampling, {what} (cold first runs after imports; ratio to the same code's run without either):"]
    for name, run in runs.items():
        base = runs[BASELINE + "first run" if name.startswith(BASELINE) else "first run"]
        target = " (target <= 2)" if name.endswith(("permutations", "(the default)")) else ""
        lines.append(
            f"  {name:33s} {run['wall']:7.2f} s {run['wall'] / base['wall']:5.2f}x   CPU {run['cpu']:7.2f} s "
            f"{run['cpu'] / base['cpu']:5.2f}x{target}"
        )
    return lines


def run_resampling_only(
    root: Path,
    scratch: Path,
    mode: str,
    log,
    scale_configs: int = 0,
    baseline: Path | None = None,
    repeats: int = 1,
) -> tuple[list[str], dict]:
    """Only the resampling figures: the N store, and the scale store if scale_configs (each beside a baseline
    source tree's, if given)."""
    sizes = SIZES[mode]
    assets = root / f"assets-{mode}-{ASSET_VERSION}"
    if not (assets / "config.json").exists():
        log("generating the model, SAEs and CSVs ...")
        run_child({"task": "gen", "folder": str(assets), "sizes": sizes})
    env = {
        "XDG_CACHE_HOME": str(scratch / "user-cache"),
        "SAEZARR_CACHE": str(scratch / "user-cache" / "saezarr"),
        "MPLCONFIGDIR": str(scratch / "mpl"),
    }
    measure([sys.executable, "-c", "import matplotlib.font_manager"], "matplotlib font list", env)
    store = scratch / "store-N.zarr"
    log("building the N store ...")
    build_store(assets / "config.json", assets / "input.csv", store, "build of the N store")
    info = store_info(store)
    raw = {"N": measure_resampling(store, scratch / "out-N", env, log, "", baseline, repeats)}
    lines = resampling_lines(raw["N"], _describe(info))
    if scale_configs:
        configs, layers = scale_layout(scale_configs)
        scale_assets = root / f"scale-{mode}-{len(configs)}-{ASSET_VERSION}"
        if not (scale_assets / "config.json").exists():
            log(f"generating {len(configs)} SAEs of width {sizes['width']} on a {layers}-layer model ...")
            spec = {
                "task": "gen_scale",
                "folder": str(scale_assets),
                "sizes": sizes,
                "configs": configs,
                "layers": layers,
            }
            run_child(spec)
        scale_store = scratch / "store-scale.zarr"
        log(f"building the {len(configs)}-SAE store ...")
        build_store(scale_assets / "config.json", assets / "input.csv", scale_store, "build of the scale store")
        scale_info = store_info(scale_store)
        label = f" ({len(configs)} SAEs)"
        raw["scale"] = measure_resampling(scale_store, scratch / "out-scale", env, log, label, baseline, repeats)
        lines += resampling_lines(raw["scale"], _describe(scale_info))
    return lines, raw


def real_configs() -> tuple:
    """The configs of the real Gemma Scope 16k configuration file (135)."""
    from saezarr.inputs.configs import load_config_file

    return load_config_file(REAL_CONFIGS).configs


def scale_layout(n: int) -> tuple[list[dict], int]:
    """n of the real configs (all of them, else evenly spread over their list) and the model's layer count."""
    real = real_configs()
    picks = (
        sorted({round(i * (len(real) - 1) / max(n - 1, 1)) for i in range(n)}) if n < len(real) else range(len(real))
    )
    configs = [{"layer": real[i].layer, "average_l0": real[i].average_l0, "path": real[i].path} for i in picks]
    return configs, max(c.layer for c in real) + 1


def measure_scale(root: Path, scratch: Path, mode: str, n: int, csv: Path, env: dict, log) -> dict:
    """Build a store of n generated SAEs in the real configs' layout and time its first analyze and re-run."""
    sizes = SIZES[mode]
    configs, layers = scale_layout(n)
    assets = root / f"scale-{mode}-{len(configs)}-{ASSET_VERSION}"
    raw = {
        "layers": layers,
        "n_layers_used": len({c["layer"] for c in configs}),
        "n_real": len(real_configs()),
        "generated": None,
    }
    if not (assets / "config.json").exists():
        log(f"generating {len(configs)} SAEs of width {sizes['width']} on a {layers}-layer model ...")
        spec = {"task": "gen_scale", "folder": str(assets), "sizes": sizes, "configs": configs, "layers": layers}
        raw["generated"] = run_child(spec)["seconds"]
    raw["assets_bytes"] = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    store = scratch / "store-scale.zarr"
    log(f"building the {len(configs)}-SAE store ...")
    raw["build"] = build_store(assets / "config.json", csv, store, "build of the scale store")
    raw["info"] = store_info(store)
    raw.update(first_run_and_rerun(store, scratch / "analyze-scale", env, log, f" ({len(configs)} SAEs)"))
    shutil.rmtree(store, ignore_errors=True)
    return raw


def _checked(result: dict, what: str) -> dict:
    if result["rc"] != 0:
        raise SystemExit(f"{what} failed with exit code {result['rc']}")
    return result


def _brief_info(info: dict) -> dict:
    return {
        "n_configs": len(info["configs"]),
        "n_sentences": info["n_sentences"],
        "n_fragments": info["n_fragments"],
        "n_features": info["n_features"],
        "bytes_on_disk": info["bytes_on_disk"],
    }


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISS"


def report_lines(raw: dict) -> list[str]:
    """The results table and the details behind it."""
    legacy, analyze, rerun = raw["legacy"], raw["analyze"], raw["rerun"]
    times, cmp, read = raw["legacy_times"], raw["compare"], raw["read"]
    speedup = legacy["wall"] / analyze["wall"]
    rss_ratio = raw["analyze_4n"]["peak_rss"] / analyze["peak_rss"]
    read_ratio = raw["inproc"]["wall"] / read["zarr_read"]
    rerun_ratio = rerun["wall"] / analyze["wall"]
    inproc_rerun_ratio = raw["inproc_rerun"]["wall"] / raw["inproc"]["wall"]
    exact = cmp["max_abs_diff"] <= TARGETS["max_abs_diff"] and not (
        cmp["only_legacy"] or cmp["only_analyze"] or cmp["nan_mismatch"]
    )
    mib = 2**20
    rows = [
        (
            "legacy analysis / analyze (whole processes)",
            f"{analyze['wall']:.2f} s",
            f"{legacy['wall']:.2f} s",
            f"{speedup:.1f}x",
            f">= {TARGETS['speedup']:.0f}x",
            verdict(speedup >= TARGETS["speedup"]),
        ),
        (
            "ranked tables: max abs diff, numeric columns",
            f"{cmp['max_abs_diff']:.1e}",
            "legacy CSV",
            f"{cmp['common']}/{cmp['legacy_rows']} rows",
            f"<= {TARGETS['max_abs_diff']:.0e}, same rows",
            verdict(exact),
        ),
        (
            "peak RSS of analyze, 4N / N",
            f"{raw['analyze_4n']['peak_rss'] / mib:.0f} MiB",
            f"{analyze['peak_rss'] / mib:.0f} MiB",
            f"{rss_ratio:.2f}",
            f"<= {TARGETS['rss_ratio']}",
            verdict(rss_ratio <= TARGETS["rss_ratio"]),
        ),
        (
            "cold analysis / plain read of the chunks",
            f"{raw['inproc']['wall']:.2f} s",
            f"{read['zarr_read']:.2f} s",
            f"{read_ratio:.2f}",
            f"<= {TARGETS['read_ratio']}",
            verdict(read_ratio <= TARGETS["read_ratio"]),
        ),
        (
            "re-run (cache) / first run, whole processes",
            f"{rerun['wall']:.2f} s",
            f"{analyze['wall']:.2f} s",
            f"{rerun_ratio:.3f}",
            f"<= {TARGETS['rerun_ratio']}",
            verdict(rerun_ratio <= TARGETS["rerun_ratio"]),
        ),
        (
            "re-run (cache) / first run, after imports",
            f"{raw['inproc_rerun']['wall']:.2f} s",
            f"{raw['inproc']['wall']:.2f} s",
            f"{inproc_rerun_ratio:.3f}",
            f"<= {TARGETS['rerun_ratio']}",
            verdict(inproc_rerun_ratio <= TARGETS["rerun_ratio"]),
        ),
    ]
    scale = raw.get("scale")
    if scale:
        scale_ratio = scale["rerun"]["wall"] / scale["analyze"]["wall"]
        rows.append(
            (
                f"re-run (cache) / first run, {scale['info']['n_configs']} SAEs",
                f"{scale['rerun']['wall']:.2f} s",
                f"{scale['analyze']['wall']:.2f} s",
                f"{scale_ratio:.3f}",
                f"<= {TARGETS['rerun_ratio']}",
                verdict(scale_ratio <= TARGETS["rerun_ratio"]),
            )
        )
    widths = [max(len(str(r[i])) for r in rows + [HEADER]) for i in range(len(HEADER))]
    table = [
        " | ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
        for r in [HEADER, tuple("-" * w for w in widths), *rows]
    ]
    info, info4 = raw["info"], raw["info_4n"]
    export = raw["export"]
    legacy_total = export["wall"] + legacy["wall"]
    return [
        *table,
        "",
        f"data: {_describe(info)}; 4N store: {_describe(info4)}",
        f"legacy: export-npz {export['wall']:.2f} s ({export['cpu']:.2f} CPU s, {raw['npz_bytes'] / mib:.0f} MiB of npz) + "
        f"analysis {legacy['wall']:.2f} s ({legacy['cpu']:.2f} CPU s, peak RSS {legacy['peak_rss'] / mib:.0f} MiB): "
        f"loading the npz files {times['load']:.2f} s, per-feature loop {times['loop']:.2f} s, writing {times['write']:.2f} s; "
        f"{times['passing']} passing features",
        f"analyze: {analyze['wall']:.2f} s whole process ({analyze['cpu']:.2f} CPU s), {raw['inproc']['wall']:.2f} s after "
        f"{raw['inproc']['imports']:.2f} s of imports ({raw['inproc']['cpu']:.2f} CPU s); 4N store "
        f"{raw['analyze_4n']['wall']:.2f} s",
        f"speedups: legacy incl. export / analyze {legacy_total / analyze['wall']:.1f}x; per-feature loop alone / analyze "
        f"{times['loop'] / analyze['wall']:.1f}x; CPU seconds legacy analysis / analyze {legacy['cpu'] / analyze['cpu']:.1f}x",
        f"tables: {cmp['legacy_rows']} legacy rows, {cmp['analyze_rows']} analyze rows, {cmp['common']} in both, "
        f"{cmp['only_legacy']} only legacy, {cmp['only_analyze']} only analyze; worst column {cmp['worst_column'] or '-'}; "
        f"NaN mismatches {cmp['nan_mismatch']}; monotonic equal {cmp['monotonic_same']}; ranks equal {cmp['rank_same']}; "
        f"legacy columns first and in order {cmp['layout_ok']}; neuronpedia_url differs in {cmp['urls_differ']} rows (by design)",
        f"peak RSS: N {analyze['peak_rss'] / mib:.0f} MiB (getrusage {analyze['maxrss'] / mib:.0f}, tree polled "
        f"{analyze['tree_peak'] / mib:.0f}), 4N {raw['analyze_4n']['peak_rss'] / mib:.0f} MiB (getrusage "
        f"{raw['analyze_4n']['maxrss'] / mib:.0f}, tree polled {raw['analyze_4n']['tree_peak'] / mib:.0f})",
        f"plain read: zarr, {read['cores']} threads over {read['units']} shards: {read['zarr_read']:.2f} s "
        f"({read['dense_bytes'] / read['zarr_read'] / 1e6:.0f} MB/s dense, {read['disk_bytes'] / mib:.0f} MiB on disk); "
        f"bare zstd decode of the same shards {read['codec_decode']:.2f} s (cold analysis / bare decode "
        f"{raw['inproc']['wall'] / read['codec_decode']:.2f})",
        f"re-run options: {' '.join(RERUN_OPTIONS)} (--overwrite, same output folder); new files in the store after the "
        f"first run: {', '.join(raw['cache_files']) or 'none'}",
        *(floor_lines(raw["floor"], analyze, scale) if "floor" in raw else []),
        *(scale_lines(scale) if scale else []),
    ]


def floor_lines(floor: dict, analyze: dict, scale: dict | None) -> list[str]:
    """What a whole process costs before analyze does anything, against each first run."""
    against = f"{floor['wall'] / analyze['wall']:.3f} of the first run"
    if scale:
        against += f" ({floor['wall'] / scale['analyze']['wall']:.3f} at {scale['info']['n_configs']} SAEs)"
    return [f'floor of a whole-process re-run: `python -c "{FLOOR_IMPORTS}"` {floor["wall"]:.2f} s, {against}']


def scale_lines(scale: dict) -> list[str]:
    """The details behind the scale row: layout, store, build and the analyze times."""
    mib, info, build = 2**20, scale["info"], scale["build"]
    first, rerun, inproc, inproc_rerun = scale["analyze"], scale["rerun"], scale["inproc"], scale["inproc_rerun"]
    made = f"generated in {scale['generated']:.0f} s" if scale["generated"] is not None else "reused from --cache"
    which = "all of them" if info["n_configs"] == scale["n_real"] else "evenly spread over its list"
    layers = f"{scale['n_layers_used']} of the {scale['layers']}-layer model's layers"
    return [
        (
            f"scale: {info['n_configs']} generated SAEs in the layout of {REAL_CONFIGS.name} (same layers, L0s and "
            f"paths; {which}: {layers}), {made}, {scale['assets_bytes'] / mib:.0f} MiB of SAEs and model"
        ),
        (
            f"scale store: {_describe(info)}; built in {build['wall']:.1f} s ({build['cpu']:.1f} CPU s, peak RSS "
            f"{build['peak_rss'] / mib:.0f} MiB); analysis cache after the first run "
            f"{scale['cache_bytes'] / mib:.0f} MiB"
        ),
        (
            f"scale analyze, whole processes (the row): first run {first['wall']:.2f} s ({first['cpu']:.2f} CPU s, "
            f"peak RSS {first['peak_rss'] / mib:.0f} MiB), re-run {rerun['wall']:.2f} s ({rerun['cpu']:.2f} CPU s); "
            f"after imports: first run {inproc['wall']:.2f} s ({inproc['imports']:.2f} s of imports), re-run "
            f"{inproc_rerun['wall']:.2f} s, ratio {inproc_rerun['wall'] / inproc['wall']:.3f}"
        ),
    ]


HEADER = ("figure", "analyze", "baseline", "ratio", "target", "status")
# what a cached re-run that shows the features shown before imports (no zarr); best of 3 processes
FLOOR_IMPORTS = "import numpy, numcodecs, pyarrow.parquet, pandas"


def _describe(info: dict) -> str:
    return (
        f"{info['n_configs']} SAEs x {info['n_features']} features, {info['n_sentences']} sentences, "
        f"{info['n_fragments']} token fragments, {info['bytes_on_disk'] / 2**20:.1f} MiB on disk"
    )


def machine() -> dict:
    import psutil

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {"nproc": os.cpu_count(), "ram": psutil.virtual_memory().total, "cpu": cpu, "load": os.getloadavg()}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("saezarr", "numpy", "scipy", "pandas", "xarray", "dask", "zarr"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            continue
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "saezarr"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if rev:
        parts.insert(1, f"git {rev}{' + uncommitted saezarr/ changes' if dirty else ''}")
    return ", ".join(parts) + f", python {platform.python_version()}"


SECTION = "# analyze"
SECTION_INTRO = """
Written by `scripts/bench_analyze.py` (its docstring says what each figure measures; the legacy baseline is
`scripts/legacy_analyze.py`). Every ratio compares figures measured in the same run on the same machine; MET/MISS
are informational. `--quick` entries use tiny data and say little. Newest first.
"""
MD_MARKER = "<!-- newest first: bench_analyze.py inserts new results below this line -->\n"


def write_markdown(path: Path, entry: str) -> None:
    """Insert an entry at the top of the analyze section, which is appended to the file the first time."""
    text = path.read_text() if path.exists() else ""
    if MD_MARKER not in text:
        text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + SECTION + "\n" + SECTION_INTRO + "\n" + MD_MARKER
    head, tail = text.split(MD_MARKER, 1)
    path.write_text(head + MD_MARKER + "\n" + entry + ("\n" + tail.lstrip("\n") if tail.strip() else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny data (2 SAEs of width 2048, 48 sentences; 12 in the scale store), ~1 min",
    )
    parser.add_argument("--out-md", type=Path, help="insert the results into this Markdown file, newest first")
    parser.add_argument("--cache", type=Path, help="keep the generated model, SAEs and CSVs here and reuse them")
    parser.add_argument(
        "--scale-configs",
        type=int,
        metavar="N",
        help="SAEs in the scale store, in the real configs' layout (default 135, --quick 12 of width 2048)",
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the scale store's first run and re-run")
    parser.add_argument(
        "--resampling-only",
        action="store_true",
        help="only time analyze with and without --permutations and --folds (N store and scale store); the other "
        "figures are taken without them",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="with --resampling-only: also time the analyze of another saezarr source tree (a folder holding its "
        "saezarr/ package, e.g. from `git archive REV saezarr | tar -x -C DIR`), setting by setting in the same run",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, metavar="R", help="with --resampling-only: the fastest of R runs of each"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale_configs is not None and not 1 <= args.scale_configs <= len(real_configs()):
        parser.error(f"--scale-configs must be 1-{len(real_configs())} (the real configs), got {args.scale_configs}")
    if (args.baseline_src or args.repeats != 1) and not args.resampling_only:
        parser.error("--baseline-src and --repeats go with --resampling-only")
    if args.baseline_src and not (args.baseline_src / "saezarr" / "__init__.py").is_file():
        parser.error(f"--baseline-src: {args.baseline_src} holds no saezarr/ package")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.child:
        _child_main(json.loads(args.child))
        return 0
    mode = "quick" if args.quick else "full"
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    if not analyze_available():
        raise SystemExit("`python -m saezarr analyze` is not available in this checkout")
    info = machine()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    root = args.cache or Path(tempfile.mkdtemp(prefix="saezarr-bench-analyze-"))
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    log(f"{mode} run; assets in {root}; load average {info['load'][0]:.2f}")
    try:
        scale = 0 if args.no_scale else args.scale_configs or SIZES[mode]["scale_configs"]
        run = (
            functools.partial(run_resampling_only, baseline=args.baseline_src, repeats=args.repeats)
            if args.resampling_only
            else run_benchmark
        )
        lines, raw = run(root, scratch, mode, log, scale)
        if args.cache is not None:
            (args.cache / f"last-{mode}-run.json").write_text(json.dumps(raw, indent=1, default=str))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.cache is None:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    header = [
        f"## {stamp} - analyze, {mode} run ({elapsed:.0f} s)",
        "",
        f"- command: `{command}`",
        f"- machine: nproc {info['nproc']}, RAM {info['ram'] / 2**30:.1f} GiB, CPU {info['cpu']}; load average "
        f"{info['load'][0]:.2f} at start, {os.getloadavg()[0]:.2f} at end",
        f"- software: {versions()}",
        "",
    ]
    entry = "\n".join(header + ["```text", *lines, "```", ""])
    print("\n".join(header[2:5]))
    print("\n".join(lines))
    if args.out_md:
        write_markdown(args.out_md, entry)
        log(f"results written to {args.out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
