#!/usr/bin/env python
"""Benchmark `saezarr build` against its floors and the seed-style baseline, all measured in the same run.

Workloads (each measured thing runs in a fresh child process of this script, one after the other):

1. compute-bound: a random-weight Gemma-2 at real widths (hidden 2304, intermediate 9216, 8 heads, 4 KV heads,
   head_dim 256), 4 layers, small vocabulary; 8 Gemma Scope-layout SAEs of 2304 x 16384 (2 per layer); ~300
   fragments.  Figures: build wall time, the compute floor (the same forwards to the deepest layer with the same
   batches, dtype and threads, plus the same SAE encodes; no loading, no storage), and the seed-style baseline
   (per config: run the whole model over all sentences, encode, np.savez_compressed).
2. write-bound: a tiny model, 24 SAEs of width 16384, >= 2000 fragments.  Build throughput in dense MB/s
   against the codec floor: the same dense bytes, cut into the store's inner chunks, compressed with the
   store's own codec (numcodecs Zstd at the level the store uses) on all cores.
3. storage (on workload 2's store): bytes on disk per nonzero activation, store size against the seed-style npz
   total of the same data, and write speed against np.savez_compressed.
Also: peak RSS of fresh-process builds for N and 4N sentences, and the model-pass and SAE-load counters of
BuildSummary (cross-checked by counting the model's actual forward calls and load_encoder calls in the
build process).  No timing includes Python imports (each child imports first and reports that time apart); every
ratio's two sides run in the same invocation, with torch's default thread count unless the build set another.

    python scripts/bench_build.py --quick                         # < 2 min on 2 cores
    python scripts/bench_build.py --smoke                         # runs every step on the least data: no figures
    python scripts/bench_build.py --out-md scripts/BENCHMARKS.md  # full run, < 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saezarr.compat import dtype_kwargs, layer_output
from saezarr.machine import human_bytes

REPO = Path(__file__).resolve().parent.parent
RESULT_TAG = "BENCH_RESULT "
ASSET_VERSION = "v2"
MB = 1e6

# sizes of the workloads; --quick shrinks the data, never the shapes of workload 1
SIZES = {
    "full": {
        "w1_fragments": 300,
        "w2_layers": 6,
        "w2_l0s_per_layer": 4,
        "w2_fragments": 2000,
        "rss_factor": 4,
    },
    "quick": {
        "w1_fragments": 96,
        "w2_layers": 2,
        "w2_l0s_per_layer": 4,
        "w2_fragments": 1000,
        "rss_factor": 4,
    },
    "smoke": {  # the least data that runs every step: the test suite's check that this script works
        "w1_fragments": 16,
        "w2_layers": 1,
        "w2_l0s_per_layer": 2,
        "w2_fragments": 250,
        "rss_factor": 4,
    },
}
W1_MODEL = dict(
    num_layers=4,
    hidden_size=2304,
    intermediate_size=9216,
    num_heads=8,
    num_kv_heads=4,
    head_dim=256,
    max_tokens=1024,
    vocab_size=512,
)
W2_MODEL = dict(
    hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1, head_dim=32, max_tokens=512, vocab_size=512
)
SAE_WIDTH = 16384
# Gemma Scope 2B 16k average_l0 values on layers 0-5 (config/gemma_scope_16k_configurations.json), 4 smallest each
GEMMA_SCOPE_L0 = {
    0: [13, 25, 46, 105],
    1: [10, 20, 40, 102],
    2: [13, 24, 53, 141],
    3: [14, 28, 59, 142],
    4: [17, 31, 60, 124],
    5: [18, 34, 68, 143],
}

TARGETS = {
    "build_over_floor": 1.15,
    "baseline_over_build": 3.0,
    "throughput_over_codec": 0.7,
    "bytes_per_nnz": 8.0,
    "write_over_savez": 10.0,
    "rss_ratio": 1.1,
}


# ----------------------------------------------------------------------------------------------------------------
# child processes: each prints one RESULT_TAG line with a JSON object


def _child_main(spec: dict) -> None:
    task = spec.pop("task")
    result = CHILD_TASKS[task](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _current_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _sentence_pool(n: int, seed: int) -> list[str]:
    """Deterministic sentences of 8-16 words drawn from the demo corpus' words."""
    import numpy as np
    import pandas as pd

    from saezarr.testing.synthetic import DEMO_CSV

    base = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    words = sorted({w.strip(".,!?;:\"'").lower() for s in base for w in s.split()} - {""})
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(8, 17))))
        out.append(text[0].upper() + text[1:] + ".")
    return out


def _write_csv(path: Path, sentences: list[str], seed: int) -> None:
    import numpy as np
    import pandas as pd

    labels = np.random.default_rng(seed).integers(0, 4, len(sentences))
    pd.DataFrame({"sentence": sentences, "concept_strength_label": labels}).to_csv(path, index=False)


def _take_fragments(tokenizer, sentences: list[str], target: int) -> tuple[list[str], int]:
    """The shortest prefix of sentences with at least `target` token fragments (BOS is no fragment)."""
    lengths = [len(ids) - 1 for ids in tokenizer(sentences)["input_ids"]]
    total = 0
    for i, n in enumerate(lengths):
        total += n
        if total >= target:
            return sentences[: i + 1], total
    raise SystemExit(f"sentence pool too small for {target} fragments")


def _write_sae_params(folder: Path, configs, residuals: dict, width: int, seed: int) -> None:
    """Gemma Scope layout params.npz; thresholds put each feature's firing rate near average_l0 / width."""
    from statistics import NormalDist

    import numpy as np
    import torch

    for k, config in enumerate(configs):
        rng = np.random.default_rng([seed, k])
        x = residuals[config.layer]
        d = x.shape[1]
        W_enc = torch.randn((d, width), generator=torch.Generator().manual_seed(1000 * seed + k)).numpy()
        W_enc *= np.float32(1.0 / np.sqrt(d)) / np.float32(np.sqrt((x**2).sum(1).mean() / d))
        b_enc = rng.normal(0, 0.1, width).astype(np.float32)
        pre = x @ W_enc + b_enc
        z = NormalDist().inv_cdf(1 - min(max(config.average_l0, 1), width - 1) / width)
        threshold = np.maximum(pre.mean(0) + z * pre.std(0), 1e-3).astype(np.float32)
        target = folder / config.path
        target.mkdir(parents=True, exist_ok=True)
        np.savez(
            target / "params.npz",
            W_enc=W_enc,
            W_dec=np.ascontiguousarray(W_enc.T),
            b_enc=b_enc,
            b_dec=np.zeros(d, dtype=np.float32),
            threshold=threshold,
        )
        del W_enc, pre


def task_gen(spec: dict) -> dict:
    """Generate a workload's model, SAEs, config file and CSVs into spec['folder'] (atomically)."""
    import pandas as pd
    from transformers import AutoTokenizer

    from saezarr.inputs.configs import SAEConfig
    from saezarr.testing.synthetic import DEMO_CSV, calibration_residuals, write_config_file, write_model

    started = time.perf_counter()
    final = Path(spec["folder"])
    folder = final.with_name(final.name + ".partial")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sizes = spec["sizes"]
    demo = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    meta = {}
    if spec["workload"] == 1:
        pool = demo + _sentence_pool(200, seed=1)
        write_model(folder / "model", pool, **W1_MODEL)
        tokenizer = AutoTokenizer.from_pretrained(folder / "model")
        chosen, n = _take_fragments(tokenizer, pool, sizes["w1_fragments"])
        _write_csv(folder / "input.csv", chosen, seed=1)
        meta.update(n_sentences=len(chosen), n_fragments=n)
        configs = [
            SAEConfig(layer, l0, f"layer_{layer}/width_16k/average_l0_{l0}")
            for layer in range(W1_MODEL["num_layers"])
            for l0 in GEMMA_SCOPE_L0[layer][1:3]
        ]
        calibration = chosen[:16]
    else:
        # sentences have >= 8 words, so >= 8 fragments: this pool covers 4N
        pool = _sentence_pool(sizes["rss_factor"] * (sizes["w2_fragments"] // 8 + 1) + 64, seed=2)
        write_model(folder / "model", pool, num_layers=sizes["w2_layers"], **W2_MODEL)
        tokenizer = AutoTokenizer.from_pretrained(folder / "model")
        chosen, n = _take_fragments(tokenizer, pool, sizes["w2_fragments"])
        big = pool[: sizes["rss_factor"] * len(chosen)]
        if len(big) < sizes["rss_factor"] * len(chosen):
            raise SystemExit("sentence pool too small for the RSS run")
        n_big = sum(len(ids) - 1 for ids in tokenizer(big)["input_ids"])
        _write_csv(folder / "input.csv", chosen, seed=2)
        _write_csv(folder / "input_x4.csv", big, seed=3)
        meta.update(n_sentences=len(chosen), n_fragments=n, n_sentences_big=len(big), n_fragments_big=n_big)
        configs = [
            SAEConfig(layer, l0, f"layer_{layer}/width_16k/average_l0_{l0}")
            for layer in range(sizes["w2_layers"])
            for l0 in GEMMA_SCOPE_L0[layer][: sizes["w2_l0s_per_layer"]]
        ]
        calibration = chosen[:128]
    residuals = calibration_residuals(folder / "model", sorted({c.layer for c in configs}), calibration)
    _write_sae_params(folder / "saes", configs, residuals, SAE_WIDTH, seed=spec["workload"])
    # the config file names the final folder
    write_config_file(folder / "config.json", str(final / "model"), str(final / "saes"), configs)
    meta.update(n_configs=len(configs), width=SAE_WIDTH, seconds=time.perf_counter() - started)
    (folder / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(folder, final)
    return meta


class _ThreadCPU:
    """Samples per-thread CPU time (by thread name) in the background; threads are grouped by name prefix."""

    def __init__(self, interval: float = 0.25):
        import threading

        self.interval = interval
        self.last: dict[int, tuple[str, float]] = {}
        self.rss: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _sample(self) -> None:
        import re
        import threading

        import psutil

        names = {t.native_id: t.name for t in threading.enumerate()}
        process = psutil.Process()
        self.rss.append((time.perf_counter(), process.memory_info().rss))
        for t in process.threads():
            name = names.get(t.id) or self.last.get(t.id, ("native", 0))[0]
            if name == "native" and t.id not in names:
                name = "native (torch/omp/tokenizers)"
            self.last[t.id] = (re.sub(r"[_-]?\d+(_\d+)?$", "", name), t.user_time + t.system_time)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._start = dict(self.last)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def rss_profile(self) -> list[int]:
        """Highest RSS sampled in each quarter of the run."""
        t0, t1 = self.rss[0][0], self.rss[-1][0]
        span = max(t1 - t0, 1e-9)
        quarters = [0, 0, 0, 0]
        for t, rss in self.rss:
            q = min(3, int(4 * (t - t0) / span))
            quarters[q] = max(quarters[q], rss)
        return quarters

    def by_group(self) -> dict[str, float]:
        groups: dict[str, float] = {}
        for tid, (name, cpu) in self.last.items():
            if name == "bench-sampler":
                continue
            groups[name] = groups.get(name, 0.0) + cpu - self._start.get(tid, (name, 0.0))[1]
        return {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.05}


class _StackSampler:
    """All-thread Python stack sampling (pyinstrument sees the main thread only): per thread group, the share of
    samples in which each function is on the stack (inclusive) and on top (self)."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.interval = interval
        self.samples: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-stack-sampler", daemon=True)

    def _run(self) -> None:
        import re
        import threading

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                group = re.sub(r"[_-]?\d+(_\d+)?$", "", names.get(ident, "other"))
                stats = self.samples.setdefault(group, {"n": 0, "self": {}, "incl": {}})
                stats["n"] += 1
                seen = set()
                top = True
                while frame is not None:
                    code = frame.f_code
                    where = f"{code.co_name} ({_short_path(code.co_filename)}:{code.co_firstlineno})"
                    if top:
                        key = f"{where} line {frame.f_lineno}"
                        stats["self"][key] = stats["self"].get(key, 0) + 1
                        top = False
                    if where not in seen:
                        stats["incl"][where] = stats["incl"].get(where, 0) + 1
                        seen.add(where)
                    frame = frame.f_back

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 25) -> str:
        out = [f"all-thread stack samples every {self.interval * 1000:.0f} ms; % of that thread group's samples", ""]
        for group, stats in sorted(self.samples.items(), key=lambda kv: -kv[1]["n"]):
            n = stats["n"]
            out.append(f"== {group}: {n} samples (~{n * self.interval:.1f} thread-seconds, idle waits included)")
            for title, table in (("on top (self)", stats["self"]), ("on stack (inclusive)", stats["incl"])):
                out.append(f"  -- {title}")
                for key, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
                    out.append(f"  {100 * count / n:5.1f}%  {key}")
            out.append("")
        return "\n".join(out)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def task_build(spec: dict) -> dict:
    """One saezarr build in this fresh process; counters, wall time, CPU per thread group, peak RSS."""
    imports = _warm_imports()
    import torch

    import saezarr.build.pipeline as B
    from saezarr.build.build_options import DEFAULT_BATCH_SIZE
    from saezarr.build.memory import default_sae_memory
    from saezarr.inputs.configs import load_config_file
    from saezarr.models.language_model import resolve_model
    from saezarr.saes.encoder import plan_passes
    from saezarr.saes.locate import locate_sae, resolve_sae_repo

    options = B.BuildOptions(
        input=Path(spec["input"]),
        output=Path(spec["output"]),
        config_file=Path(spec["config"]),
        device="cpu",
        dtype="float32",
        quiet=True,
        overwrite=True,
        overlap_writes=spec.get("overlap_writes"),
    )
    # independent cross-checks of the BuildSummary counters: actual model calls and params.npz opens
    observed = {"model_calls": 0, "sae_load_calls": {}}

    def count_calls(module, args):
        if type(module).__name__ == "Gemma2Model":
            observed["model_calls"] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count_calls)
    # time the build's loading steps (wrappers only add a clock read)
    timed = {"sae_load": 0.0, "model_load": 0.0}

    def timing(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timed[name] += time.perf_counter() - t

        return wrapper

    import saezarr.build.work as W  # where a task loads the model and the encoders, in this process as on a worker

    real_encoder_load, real_model_load = W.load_encoder, W.load_model
    timed_encoder_load = timing("sae_load", real_encoder_load)

    def counting_encoder_load(sae, *args, **kwargs):
        observed["sae_load_calls"][str(sae.path)] = observed["sae_load_calls"].get(str(sae.path), 0) + 1
        return timed_encoder_load(sae, *args, **kwargs)

    W.load_encoder = counting_encoder_load
    W.load_model = timing("model_load", real_model_load)
    rss_before = _current_rss()
    cpu_before = os.times()
    profiler = sampler = None
    if spec.get("profile") == "stacks":
        sampler = _StackSampler()
        sampler.__enter__()
    elif spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    with _ThreadCPU() as threads:
        started = time.perf_counter()
        summary = B.build(options)
        wall = time.perf_counter() - started
    if profiler is not None:
        profiler.stop()
        Path(spec["profile"]).with_suffix(".txt").write_text(profiler.output_text(unicode=True, color=False))
        Path(spec["profile"]).with_suffix(".html").write_text(profiler.output_html())
    if sampler is not None:
        sampler.__exit__(None, None, None)
        Path(spec["stacks"]).write_text(sampler.report())
    cpu_after = os.times()
    peak = _peak_rss()
    W.load_encoder, W.load_model = real_encoder_load, real_model_load
    handle.remove()
    config_file = load_config_file(options.config_file)
    source = resolve_sae_repo(config_file.sae_repo, config_file.configs[0])
    model = resolve_model(config_file.model)
    saes = [locate_sae(source, c, model) for c in config_file.configs]
    expected_passes = len(plan_passes(saes, options.sae_memory or default_sae_memory(options.device)))
    fields = (
        "n_configs",
        "n_fragments",
        "n_sentences",
        "bytes_on_disk",
        "elapsed",
        "model_passes",
        "forward_batches",
        "sae_loads",
        "units_written",
        "units_total",
        "complete",
    )
    from saezarr.store.format import Store, directory_bytes

    store = Store(options.output)
    return {
        **{f: getattr(summary, f) for f in fields},
        "wall": wall,
        "cpu": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "cpu_by_thread": threads.by_group(),
        "rss_quarters": threads.rss_profile(),
        "peak_rss": peak,
        "rss_before": rss_before,
        "expected_passes": expected_passes,
        "observed_model_calls": observed["model_calls"],
        "observed_sae_load_calls": sorted(observed["sae_load_calls"].values()),
        "sae_load": timed["sae_load"],
        "model_load": timed["model_load"],
        "activation_bytes": directory_bytes(options.output / "activations"),
        "chunk_fragments": store.chunk_fragments,
        "inner_chunk": list(store.array.chunks),
        "batch_size": store.attrs.get("batch_size", DEFAULT_BATCH_SIZE),
        "torch_threads": torch.get_num_threads(),
        "imports": imports,
    }


def _fragment_table(input_csv: str, config_path: str):
    from saezarr.inputs.configs import load_config_file
    from saezarr.inputs.fragments import make_fragments
    from saezarr.inputs.sentences import read_labeled_csv
    from saezarr.models.language_model import load_tokenizer, resolve_model

    config_file = load_config_file(config_path)
    info = resolve_model(config_file.model)
    data = read_labeled_csv(input_csv)
    fragments = make_fragments(data, load_tokenizer(info), "token", info.max_tokens)
    return config_file, info, data, fragments


def _encoder(path: Path):
    """The build's own encoder of one params.npz (its own encode arithmetic)."""
    from saezarr.hub import Source
    from saezarr.inputs.configs import SAEConfig
    from saezarr.saes.encoder import load_encoder
    from saezarr.saes.locate import locate_sae
    from saezarr.saes.weights import read_header
    from saezarr.testing.synthetic import model_of_width

    d_model = read_header(path)["W_enc"].shape[0]
    source = Source(str(path.parent), "local", path.parent)
    return load_encoder(locate_sae(source, SAEConfig(0, 0, "."), model_of_width(d_model)), "cpu")


def _warm_imports() -> float:
    """Import what a build imports lazily, so no timing below includes Python imports (reported apart)."""
    t = time.perf_counter()
    import dask.array  # noqa: F401
    import transformers
    import transformers.models.gemma2.modeling_gemma2  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoTokenizer  # noqa: F401

    import saezarr.build.pipeline  # noqa: F401

    return time.perf_counter() - t


class _Capture:
    """Forward hooks that keep decoder layers' outputs and stop the forward after the deepest one."""

    class Stop(Exception):
        pass

    def __init__(self, model, layers, stop: bool):
        from saezarr.models.architectures import ARCHITECTURES
        from saezarr.sites import resid_post

        self.out = {}
        self.handles = []
        table = ARCHITECTURES[model.config.model_type]
        deepest = max(layers)
        for layer in sorted(set(layers)):
            module = model.get_submodule(table.where(resid_post(layer)).path)
            self.handles.append(module.register_forward_hook(self._hook(layer, stop and layer == deepest)))

    def _hook(self, layer, stop):
        def hook(module, args, output):
            self.out[layer] = layer_output(output)
            if stop:
                raise _Capture.Stop

        return hook

    def run(self, model, input_ids, mask):
        self.out = {}
        try:
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)
        except _Capture.Stop:
            pass
        return self.out

    def remove(self):
        for h in self.handles:
            h.remove()


def task_floor(spec: dict) -> dict:
    """Workload 1's compute floor: the build's forwards (same chunks, batches, truncation, dtype, threads) to the
    deepest layer and its SAE encodes; loading is timed apart, nothing is stored."""
    imports = _warm_imports()
    import numpy as np
    import torch

    from saezarr.models.language_model import load_model, pad_batch
    from saezarr.store.format import Store

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    store = Store(spec["store"])
    chunk_fragments, batch_size = store.chunk_fragments, store.attrs.get("batch_size", 16)
    config_file, info, data, fragments = _fragment_table(spec["input"], spec["config"])
    table = fragments.table
    t = time.perf_counter()
    model = load_model(info, "cpu", "float32")
    model_load = time.perf_counter() - t
    t = time.perf_counter()
    # the build's own loader, so W_enc lives in the same kind of memory (e.g. mapped from the page cache)
    from saezarr.saes.encoder import load_encoder
    from saezarr.saes.locate import locate_sae, resolve_sae_repo

    source = resolve_sae_repo(config_file.sae_repo, config_file.configs[0])
    encoders = [(c.layer, load_encoder(locate_sae(source, c, info), "cpu")) for c in config_file.configs]
    sae_load = time.perf_counter() - t
    layers = sorted({layer for layer, _ in encoders})
    capture = _Capture(model, layers, stop=True)
    sentences_all = table["sentence_index"].to_numpy()
    positions_all = table["token_position"].to_numpy()
    nnz = 0
    outputs: list = []
    forward = encode = uncounted = uncounted_cpu = 0.0
    t, c = time.perf_counter(), os.times()
    for start in range(0, len(table), chunk_fragments):
        t_f = time.perf_counter()
        sentences = sentences_all[start : start + chunk_fragments]
        positions = positions_all[start : start + chunk_fragments]
        unique = list(dict.fromkeys(sentences.tolist()))
        parts = {layer: [] for layer in layers}
        with torch.inference_mode():
            for first in range(0, len(unique), batch_size):
                batch = unique[first : first + batch_size]
                in_batch = np.isin(sentences, batch)
                row_of = {s: r for r, s in enumerate(batch)}
                rows = torch.as_tensor([row_of[s] for s in sentences[in_batch]])
                pos = torch.as_tensor(positions[in_batch])
                ends = {s: positions[sentences == s].max() + 1 for s in batch}
                input_ids, mask = pad_batch([fragments.token_ids[s][: ends[s]] for s in batch])
                out = capture.run(model, input_ids, mask)
                for layer in layers:
                    parts[layer].append(out[layer][rows, pos])
            residuals = {layer: torch.cat(p) if len(p) > 1 else p[0] for layer, p in parts.items()}
        t_e = time.perf_counter()
        forward += t_e - t_f
        # into buffers reused across chunks, as the build's writer recycles its host buffers
        shape = (len(sentences), store.width)
        if not outputs or outputs[0].shape != shape:
            outputs = [torch.empty(shape) for _ in encoders]
        latents = [
            encoder.encode(residuals[layer], out=out).numpy() for (layer, encoder), out in zip(encoders, outputs)
        ]
        encode += time.perf_counter() - t_e
        t_count, c_count = time.perf_counter(), os.times()
        nnz += sum(int(np.count_nonzero(x)) for x in latents)  # the mean L0 check, neither timed nor in the CPU time
        del latents
        c_count_end = os.times()
        uncounted += time.perf_counter() - t_count
        uncounted_cpu += c_count_end.user - c_count.user + c_count_end.system - c_count.system
    total = time.perf_counter() - t - uncounted
    c_end = os.times()
    capture.remove()
    cpu = c_end.user - c.user + c_end.system - c.system - uncounted_cpu
    return {
        "total": total,
        "forward": forward,
        "encode": encode,
        "cpu": cpu,
        "model_load": model_load,
        "sae_load": sae_load,
        "nnz": nnz,
        "chunk_fragments": chunk_fragments,
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "peak_rss": _peak_rss(),
        "imports": imports,
    }


def task_baseline(spec: dict) -> dict:
    """Seed-style: for each config, run the whole model over all sentences (batches of 16), encode every token
    after BOS, np.savez_compressed the dense [fragments, width] array.  Timed end to end like the build."""
    imports = _warm_imports()
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from saezarr.inputs.configs import load_config_file
    from saezarr.models.language_model import pad_batch

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    out_dir = Path(spec["output"])
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config_file = load_config_file(spec["config"])
    import pandas as pd

    sentences = pd.read_csv(spec["input"])["sentence"].tolist()
    tokenizer = AutoTokenizer.from_pretrained(config_file.model)
    ids = [np.asarray(t) for t in tokenizer(sentences)["input_ids"]]
    model = AutoModel.from_pretrained(
        config_file.model, attn_implementation="eager", **dtype_kwargs(torch.float32)
    ).eval()
    forward = encode = save = 0.0
    npz_bytes = 0
    batch_size = 16
    for config in config_file.configs:
        encoder = _encoder(Path(config_file.sae_repo) / config.path / "params.npz")
        capture = _Capture(model, [config.layer], stop=False)  # the seed ran the whole model
        t = time.perf_counter()
        residuals = []
        with torch.inference_mode():
            for first in range(0, len(ids), batch_size):
                batch = ids[first : first + batch_size]
                input_ids, mask = pad_batch(batch)
                hidden = capture.run(model, input_ids, mask)[config.layer]
                for row, tokens in enumerate(batch):
                    residuals.append(hidden[row, 1 : len(tokens)])
        capture.remove()
        t_e = time.perf_counter()
        latents = encoder.encode(torch.cat(residuals)).numpy()
        t_s = time.perf_counter()
        path = out_dir / f"{config.name}.npz"
        np.savez_compressed(path, activations=latents)
        t_end = time.perf_counter()
        forward, encode, save = forward + t_e - t, encode + t_s - t_e, save + t_end - t_s
        npz_bytes += path.stat().st_size
    return {
        "total": time.perf_counter() - started,
        "forward": forward,
        "encode": encode,
        "savez": save,
        "npz_bytes": npz_bytes,
        "torch_threads": torch.get_num_threads(),
        "peak_rss": _peak_rss(),
        "imports": imports,
    }


def task_codec(spec: dict) -> dict:
    """Workloads 2 and 3 on a built store: codec floor (numcodecs Zstd on the store's inner chunks, all cores),
    saezarr's write path alone (ChunkWriter into an empty copy of the store), np.savez_compressed per config,
    nonzero count.  Reading the data back is never timed."""
    imports = _warm_imports()
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from saezarr.build.pipeline import ChunkWriter
    from saezarr.store.format import STATE_GROUP, Store

    store = Store(spec["store"])
    array = store.array
    inner = array.chunks
    feature_chunk = inner[2]
    cores = os.cpu_count() or 1
    codec, codec_name = _store_codec(store)
    scratch = Path(spec["scratch"])
    scratch.mkdir(parents=True, exist_ok=True)
    skeleton = scratch / "write-path.zarr"
    root = store.path.resolve()

    def ignore(folder, names):
        folder = Path(folder).resolve()
        if folder == root / "activations":
            return [n for n in names if n != "zarr.json"]
        if folder == root / STATE_GROUP / "done" or folder == root / STATE_GROUP:
            return [n for n in names if n not in ("zarr.json", "done")]
        return []

    shutil.rmtree(skeleton, ignore_errors=True)
    shutil.copytree(store.path, skeleton, ignore=ignore)
    target = Store(skeleton, mode="r+")
    units = [(ci, ch) for ci in range(store.n_configs) for ch in range(store.n_chunks)]
    unit_bytes = store.chunk_fragments * store.width * 4
    per_batch = max(1, int(256 * MB // unit_bytes))
    nnz = codec_time = write_time = codec_cpu = write_cpu = 0.0

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    compressed = dense = 0
    with ThreadPoolExecutor(cores) as pool:
        for first in range(0, len(units), per_batch):
            batch = units[first : first + per_batch]
            data = [array[ci, slice(*store.chunk_bounds(ch)), :] for ci, ch in batch]
            nnz += sum(int(np.count_nonzero(d)) for d in data)
            dense += sum(d.nbytes for d in data)
            pieces = [
                np.ascontiguousarray(d[:, j : j + feature_chunk])
                for d in data
                for j in range(0, store.width, feature_chunk)
            ]
            t, c = time.perf_counter(), cpu()
            compressed += sum(pool.map(lambda p: len(codec.encode(p)), pieces))
            codec_time += time.perf_counter() - t
            codec_cpu += cpu() - c
            del pieces
            t, c = time.perf_counter(), cpu()
            with ChunkWriter(target) as writer:
                for (ci, ch), d in zip(batch, data):
                    writer.submit(ci, ch, torch.from_numpy(d))
            for unit in writer.written:
                target.mark_done(*unit)
            write_time += time.perf_counter() - t
            write_cpu += cpu() - c
            del data
    if not target.done_matrix().all():
        raise SystemExit("write-path copy is incomplete")
    thinnest_encode_cpu = _thinnest_encode_cpu(store.chunk_fragments, store.width, len(units))
    shutil.rmtree(skeleton, ignore_errors=True)
    savez_time = 0.0
    npz_bytes = 0
    for ci, name in enumerate(store.config_names):
        dense_config = array[ci]
        path = scratch / f"{name}.npz"
        t = time.perf_counter()
        np.savez_compressed(path, activations=dense_config)
        savez_time += time.perf_counter() - t
        npz_bytes += path.stat().st_size
        path.unlink()
        del dense_config
    return {
        "dense_bytes": dense,
        "nnz": int(nnz),
        "codec_time": codec_time,
        "codec_bytes": compressed,
        "write_time": write_time,
        "savez_time": savez_time,
        "thinnest_encode_cpu": thinnest_encode_cpu,
        "codec_cpu": codec_cpu,
        "write_cpu": write_cpu,
        "npz_bytes": npz_bytes,
        "cores": cores,
        "inner_chunk": list(inner),
        "codec": codec_name,
        "peak_rss": _peak_rss(),
        "imports": imports,
    }


def _thinnest_encode_cpu(rows: int, width: int, units: int) -> float:
    """CPU seconds to make the same units' latents with a hidden size of 1: the cheapest model any build could have.
    What is left is writing the [rows, width] pre-activations and the threshold pass over them."""
    import tempfile

    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        params = Path(folder) / "params.npz"
        W_enc = torch.randn(1, width, generator=generator).numpy()
        np.savez(params, W_enc=W_enc, b_enc=np.zeros(width, np.float32), threshold=np.full(width, 1.5, np.float32))
        encoder = _encoder(params)
    x = torch.randn(rows, 1, generator=generator)
    out = torch.empty(rows, width)  # reused, as the build reuses its host buffers
    encoder.encode(x, out=out)
    start = os.times()
    for _ in range(units):
        encoder.encode(x, out=out).numpy()
    end = os.times()
    return end.user - start.user + end.system - start.system


def _store_codec(store):
    """The store's own inner-chunk compressor (read from its metadata, as saezarr's shard writer reads it)."""
    from saezarr.store.shards import ShardEncoder

    encoder = ShardEncoder.for_layout(store.layout)
    if encoder is None:
        raise SystemExit(f"the store's codecs {store.layout.codecs} are not saezarr's layout: update the codec floor")
    zstd = encoder.zstd
    return zstd, f"zstd level {zstd.level}{' with checksum' if zstd.checksum else ''}"


def task_reference(spec: dict) -> dict:
    """Workload 1's floor, then its seed-style baseline, in one child (one import instead of two)."""
    import gc

    floor = task_floor(dict(spec))
    gc.collect()
    baseline = task_baseline({**spec, "output": spec["npz_output"]}) if spec.get("baseline") else None
    return {"floor": floor, "baseline": baseline}


CHILD_TASKS = {
    "gen": task_gen,
    "build": task_build,
    "floor": task_floor,
    "baseline": task_baseline,
    "codec": task_codec,
    "reference": task_reference,
}


# ----------------------------------------------------------------------------------------------------------------
# the parent: orchestration, reporting


def run_child(spec: dict, timeout: float = 900) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m saezarr` sets it, for every child alike
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
    raise SystemExit(f"bench_build: child task {spec['task']} failed (exit {proc.returncode})")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def ensure_assets(root: Path, workload: int, mode: str, log) -> dict:
    folder = root / f"assets-w{workload}-{mode}-{ASSET_VERSION}"
    if not (folder / "meta.json").exists():
        log(f"  generating workload {workload} assets in {folder} ...")
        meta = run_child(
            {"task": "gen", "workload": workload, "folder": str(folder), "sizes": SIZES[mode]}, timeout=1200
        )
        log(f"  generated in {meta['seconds']:.1f} s")
    meta = json.loads((folder / "meta.json").read_text())
    meta["folder"] = folder
    return meta


def fmt_s(x: float) -> str:
    return f"{x:7.2f} s"


def _runs(builds: list[dict], repeat: int) -> str:
    return "   (runs: " + ", ".join(f"{b['wall']:.2f}" for b in builds) + ")" if repeat > 1 else ""


def counters_lines(build: dict) -> list[str]:
    one = build["expected_passes"] == 1
    lines = [
        f"  model passes (BuildSummary)   {build['model_passes']}  (planned SAE passes {build['expected_passes']}"
        f"{', all SAEs fit' if one else ''}; forward calls {build['forward_batches']}, observed model calls "
        f"{build['observed_model_calls']})   target = SAE passes  "
        f"{verdict(build['model_passes'] == build['expected_passes'] and build['observed_model_calls'] == build['forward_batches'])}",
        f"  SAE loads (BuildSummary)      {build['sae_loads']} for {build['n_configs']} configs (observed "
        f"load_encoder calls per params.npz: {sorted(set(build['observed_sae_load_calls']))} over "
        f"{len(build['observed_sae_load_calls'])} files)   target = 1 per SAE  "
        f"{verdict(build['sae_loads'] == build['n_configs'] and set(build['observed_sae_load_calls']) == {1} and len(build['observed_sae_load_calls']) == build['n_configs'])}",
    ]
    return lines


def cpu_line(build: dict) -> str:
    groups = ", ".join(f"{k} {v:.1f}" for k, v in build["cpu_by_thread"].items())
    return (
        f"  build CPU {build['cpu']:.1f} s over {build['wall']:.1f} s wall ({build['cpu'] / build['wall']:.2f} cores busy);"
        f" by thread: {groups}; Python imports before timing {build['imports']:.1f} s (never timed)"
    )


def workload_1(root: Path, scratch: Path, mode: str, repeat: int, log) -> tuple[list[str], dict]:
    meta = ensure_assets(root, 1, mode, log)
    folder = meta["folder"]
    store = scratch / "w1.zarr"
    common = {"input": str(folder / "input.csv"), "config": str(folder / "config.json")}
    builds, floors = [], []
    for i in range(repeat):  # build and floor alternate, each in a fresh process (both start cold alike)
        log(f"  workload 1: build {i + 1}/{repeat} ...")
        builds.append(run_child({"task": "build", "output": str(store), **common}))
        last = i == repeat - 1
        log(f"  workload 1: compute floor {i + 1}/{repeat}{', then seed-style baseline' if last else ''} ...")
        reference = run_child(
            {
                "task": "reference",
                "store": str(store),
                "baseline": last,
                "torch_threads": builds[-1]["torch_threads"],  # whatever the build ran with
                "npz_output": str(scratch / "w1-npz"),
                **common,
            }
        )
        floors.append(reference["floor"])
    base = reference["baseline"]
    build = min(builds, key=lambda b: b["wall"])
    floor = min(floors, key=lambda f: f["total"])
    shutil.rmtree(scratch / "w1-npz", ignore_errors=True)
    # the same sentences four times over: per-build fixed costs cancel in the difference to the N build
    log("  workload 1: build and compute floor with 4N fragments ...")
    lines_in = (folder / "input.csv").read_text().splitlines(keepends=True)
    (scratch / "w1x4.csv").write_text(lines_in[0] + "".join(lines_in[1:]) * 4)
    big_common = {**common, "input": str(scratch / "w1x4.csv")}
    big = run_child({"task": "build", "output": str(scratch / "w1x4.zarr"), **big_common})
    big_floor = run_child(
        {"task": "floor", "store": str(scratch / "w1x4.zarr"), "torch_threads": big["torch_threads"], **big_common}
    )
    shutil.rmtree(scratch / "w1x4.zarr", ignore_errors=True)
    marginal = (big["wall"] - build["wall"]) / max(big_floor["total"] - floor["total"], 1e-9)
    b_over_f = build["wall"] / floor["total"]
    base_over_b = base["total"] / build["wall"]
    lines = [
        f"Workload 1 - compute-bound: Gemma-2 widths (hidden {W1_MODEL['hidden_size']}, intermediate "
        f"{W1_MODEL['intermediate_size']}, {W1_MODEL['num_heads']} heads / {W1_MODEL['num_kv_heads']} KV, head_dim "
        f"{W1_MODEL['head_dim']}), {W1_MODEL['num_layers']} layers, random weights; {build['n_configs']} SAEs "
        f"{W1_MODEL['hidden_size']}x{SAE_WIDTH}; {build['n_fragments']} fragments, {build['n_sentences']} sentences; "
        f"chunk {build['chunk_fragments']} fragments, batch {build['batch_size']}, torch threads {build['torch_threads']}",
        f"  saezarr build          {fmt_s(build['wall'])}"
        + _runs(builds, repeat)
        + f"   (of which SAE loads {build['sae_load']:.2f} s, model load {build['model_load']:.2f} s)",
        f"  compute floor          {fmt_s(floor['total'])}"
        + _runs([{"wall": f["total"]} for f in floors], repeat)
        + f"   (forward {floor['forward']:.2f} s + SAE encode {floor['encode']:.2f} s;"
        f" not in it: model load {floor['model_load']:.2f} s, SAE load {floor['sae_load']:.2f} s)",
        f"  seed-style baseline    {fmt_s(base['total'])}   (8 full-model passes {base['forward']:.2f} s, encode "
        f"{base['encode']:.2f} s, savez_compressed {base['savez']:.2f} s)",
        f"  CPU seconds (robust to other load): build {build['cpu']:.2f}, floor {floor['cpu']:.2f}, ratio {build['cpu'] / floor['cpu']:.2f}",
        f"  build/floor            {b_over_f:7.3f}     target <= {TARGETS['build_over_floor']}   {verdict(b_over_f <= TARGETS['build_over_floor'])}",
        f"  marginal build/floor   {marginal:7.3f}     (informative: 4N build {big['wall']:.2f} s, floor {big_floor['total']:.2f} s;"
        f" the differences to N cancel fixed per-build costs such as store creation and model load)",
        f"  baseline/build         {base_over_b:7.2f}     target >= {TARGETS['baseline_over_build']}   {verdict(base_over_b >= TARGETS['baseline_over_build'])}",
        *counters_lines(build),
        cpu_line(build),
        f"  store {human_bytes(build['bytes_on_disk'])} vs seed-style npz {human_bytes(base['npz_bytes'])}; "
        f"mean L0 {floor['nnz'] / build['n_fragments'] / build['n_configs']:.1f}; peak RSS build {human_bytes(build['peak_rss'])}",
    ]
    shutil.rmtree(store, ignore_errors=True)
    return lines, {"build": build, "floor": floor, "baseline": base, "build_4n": big, "floor_4n": big_floor}


def workload_2_3(
    root: Path, scratch: Path, mode: str, selected: set[int], repeat: int, rss_runs: int, log
) -> tuple[list[str], dict]:
    meta = ensure_assets(root, 2, mode, log)
    folder = meta["folder"]
    store = scratch / "w2.zarr"
    config = str(folder / "config.json")
    builds = []
    n_builds = max(repeat, rss_runs)
    for i in range(n_builds):
        log(f"  workload 2: build {i + 1}/{n_builds} (N = {meta['n_sentences']} sentences) ...")
        builds.append(
            run_child({"task": "build", "input": str(folder / "input.csv"), "output": str(store), "config": config})
        )
    build = min(builds, key=lambda b: b["wall"])
    log(f"  workload 2: build x{repeat} with writes behind the compute (the GPU mode) ...")
    overlapped = min(
        (
            run_child(
                {
                    "task": "build",
                    "input": str(folder / "input.csv"),
                    "output": str(scratch / "w2-overlap.zarr"),
                    "config": config,
                    "overlap_writes": True,
                }
            )
            for _ in range(repeat)
        ),
        key=lambda b: b["wall"],
    )
    shutil.rmtree(scratch / "w2-overlap.zarr", ignore_errors=True)
    log("  workload 2/3: compute floor, codec floor, write path, savez ...")
    log(f"  workload 2: compute floor x{repeat} ...")
    computes = [
        run_child({"task": "floor", "store": str(store), "input": str(folder / "input.csv"), "config": config})
        for _ in range(repeat)
    ]
    compute = min(computes, key=lambda c: c["total"])
    codec = run_child({"task": "codec", "store": str(store), "scratch": str(scratch / "codec")})
    shutil.rmtree(store, ignore_errors=True)
    log(f"  RSS: build with 4N = {meta['n_sentences_big']} sentences ...")
    bigs = [
        run_child(
            {
                "task": "build",
                "input": str(folder / "input_x4.csv"),
                "output": str(scratch / "w2x4.zarr"),
                "config": config,
            }
        )
        for _ in range(rss_runs)
    ]
    # peak RSS depends on thread timing: compare the highest of each size's runs
    small = max(builds, key=lambda b: b["peak_rss"])
    big = max(bigs, key=lambda b: b["peak_rss"])
    shutil.rmtree(scratch / "w2x4.zarr", ignore_errors=True)
    dense = codec["dense_bytes"]
    n_chunks = -(-build["n_fragments"] // build["chunk_fragments"])
    encoded = build["n_configs"] * n_chunks * build["chunk_fragments"] * SAE_WIDTH * 4  # zarr encodes whole shards
    tail = build["n_fragments"] - (n_chunks - 1) * build["chunk_fragments"]
    build_tp = dense / build["wall"] / MB
    codec_tp = dense / codec["codec_time"] / MB
    write_tp = dense / codec["write_time"] / MB
    savez_tp = dense / codec["savez_time"] / MB
    dense_big = big["n_configs"] * big["n_fragments"] * SAE_WIDTH * 4
    fastest_big = min(b["wall"] for b in bigs)
    marginal_tp = (dense_big - dense) / max(fastest_big - build["wall"], 1e-9) / MB
    lines = []
    if 2 in selected:
        ratio = build_tp / codec_tp
        overlap = max(compute["total"], (compute["cpu"] + codec["codec_cpu"]) / codec["cores"])
        ceiling = codec["codec_time"] / overlap
        thinnest = codec["codec_cpu"] / (codec["codec_cpu"] + codec["thinnest_encode_cpu"])
        lines += [
            f"Workload 2 - write-bound: tiny Gemma-2 ({meta.get('w2_layers', SIZES[mode]['w2_layers'])} layers, hidden "
            f"{W2_MODEL['hidden_size']}); {build['n_configs']} SAEs x {SAE_WIDTH}; {build['n_fragments']} fragments "
            f"({build['n_sentences']} sentences); {human_bytes(dense)} dense; inner chunk {codec['inner_chunk']}, "
            f"shard (1, {build['chunk_fragments']}, {SAE_WIDTH}); {codec['cores']} cores",
            f"  {n_chunks} fragment chunks per config, the last holding {tail} of {build['chunk_fragments']} fragments: zarr "
            f"encodes {human_bytes(encoded)} (edge shards padded with fill) for {human_bytes(dense)} of data",
            f"  saezarr build          {fmt_s(build['wall'])}   {build_tp:8.0f} MB/s dense"
            + _runs(builds, len(builds)),
            f"  same, writes overlapped{fmt_s(overlapped['wall'])}   {dense / overlapped['wall'] / MB:8.0f} MB/s dense   (writer "
            f"threads compress while the model computes, as on a GPU: on CPU cores they stall its matmuls)",
            f"  codec floor            {fmt_s(codec['codec_time'])}   {codec_tp:8.0f} MB/s dense   (the store's codec, numcodecs "
            f"{codec['codec']}, on {codec['cores']} threads, same inner chunks)",
            f"  write path alone       {fmt_s(codec['write_time'])}   {write_tp:8.0f} MB/s dense   (ChunkWriter -> Store.write_shard, marks,"
            f" same units, no model)",
            f"  build/codec floor      {ratio:7.2f}     target >= {TARGETS['throughput_over_codec']}   {verdict(ratio >= TARGETS['throughput_over_codec'])}"
            f"   (write path/codec floor {write_tp / codec_tp:.2f})",
            f"  marginal build rate    {marginal_tp:8.0f} MB/s dense from the N and 4N builds (fixed costs cancel)   "
            f"marginal/codec floor {marginal_tp / codec_tp:.2f}",
            f"  compute floor          {fmt_s(compute['total'])}   (model forward {compute['forward']:.2f} s + SAE encodes "
            f"{compute['encode']:.2f} s, {compute['cpu']:.2f} CPU s; no storage)",
            f"  reachable at best      {ceiling:7.2f}     build/codec floor if the encodes and the codec shared the "
            f"{codec['cores']} cores perfectly: codec {codec['codec_time']:.2f} s / max(compute floor, (compute CPU + codec CPU)"
            f" / cores = {overlap:.2f} s)",
            f"  at any model size      {thinnest:7.2f}     reachable at best with hidden size 1 (the cheapest encode: "
            f"{codec['thinnest_encode_cpu']:.2f} CPU s for the same latents, no model forward): codec CPU "
            f"{codec['codec_cpu']:.2f} s / (codec CPU + that encode CPU)",
            f"  CPU seconds per dense GB (robust to other load): build {build['cpu'] / dense * 1e9:.2f}, write path "
            f"{codec['write_cpu'] / dense * 1e9:.2f}, codec {codec['codec_cpu'] / dense * 1e9:.2f}",
            *counters_lines(build),
            cpu_line(build),
        ]
    if 3 in selected:
        per_nnz = build["bytes_on_disk"] / codec["nnz"]
        act_per_nnz = build["activation_bytes"] / codec["nnz"]
        lines += [
            f"Workload 3 - storage (workload 2's data: {codec['nnz']} nonzeros, mean L0 "
            f"{codec['nnz'] / build['n_fragments'] / build['n_configs']:.1f})",
            f"  bytes per nonzero      {per_nnz:7.2f}     target <= {TARGETS['bytes_per_nnz']}   {verdict(per_nnz <= TARGETS['bytes_per_nnz'])}"
            f"   (whole store {human_bytes(build['bytes_on_disk'])}; activations alone {act_per_nnz:.2f} B/nnz;"
            f" bare zstd chunks {codec['codec_bytes'] / codec['nnz']:.2f} B/nnz)",
            f"  store/seed npz         {build['bytes_on_disk'] / codec['npz_bytes']:7.2f}     target <= 1   "
            f"{verdict(build['bytes_on_disk'] <= codec['npz_bytes'])}   (npz total {human_bytes(codec['npz_bytes'])})",
            f"  np.savez_compressed    {fmt_s(codec['savez_time'])}   {savez_tp:8.0f} MB/s dense (one config per file, 1 core)",
            f"  write path/savez       {write_tp / savez_tp:7.2f}     target >= {TARGETS['write_over_savez']}   "
            f"{verdict(write_tp / savez_tp >= TARGETS['write_over_savez'])}   (saezarr's writer on the same data)",
            f"  codec floor/savez      {codec_tp / savez_tp:7.2f}     (the most any writer using this codec could reach on these cores)",
            f"  whole build/savez      {build_tp / savez_tp:7.2f}     (informative: end to end, the model and encodes "
            f"included, against savez compressing ready latents)",
        ]
    rss_ratio = big["peak_rss"] / small["peak_rss"]
    lines += [
        f"Peak RSS of fresh-process builds (workload 2 shapes; highest of {n_builds} and {rss_runs} run(s))",
        "  peak RSS by run: N "
        + ", ".join(f"{b['peak_rss'] / 2**20:.0f}" for b in builds)
        + " MiB; 4N "
        + ", ".join(f"{b['peak_rss'] / 2**20:.0f}" for b in bigs)
        + " MiB",
        f"  N  = {small['n_sentences']:5d} sentences ({small['n_fragments']} fragments)   peak RSS {human_bytes(small['peak_rss'])}"
        f"   (before build {human_bytes(small['rss_before'])}; {small['wall']:.1f} s; highest per quarter of the build "
        f"{', '.join(f'{q / 2**20:.0f}' for q in small['rss_quarters'])} MiB)",
        f"  4N = {big['n_sentences']:5d} sentences ({big['n_fragments']} fragments)   peak RSS {human_bytes(big['peak_rss'])}"
        f"   (before build {human_bytes(big['rss_before'])}; {big['wall']:.1f} s; highest per quarter of the build "
        f"{', '.join(f'{q / 2**20:.0f}' for q in big['rss_quarters'])} MiB)",
        f"  RSS 4N/N               {rss_ratio:7.2f}     target <= {TARGETS['rss_ratio']}   {verdict(rss_ratio <= TARGETS['rss_ratio'])}",
        *[
            line.replace("  model passes", "  4N model passes").replace("  SAE loads", "  4N SAE loads")
            for line in counters_lines(big)
        ],
    ]
    return lines, {
        "build": build,
        "codec": codec,
        "build_4n": big,
        "meta": {k: v for k, v in meta.items() if k != "folder"},
    }


def machine() -> dict:
    import psutil

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {"nproc": os.cpu_count(), "ram": psutil.virtual_memory().total, "cpu": cpu, "load": os.getloadavg()}


def versions() -> str:
    from importlib.metadata import version

    parts = []
    for name in ("saezarr", "torch", "transformers", "zarr", "numcodecs", "numpy"):
        try:
            parts.append(f"{name} {version(name)}")
        except Exception:
            pass
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "saezarr"], capture_output=True, text=True
        ).stdout.strip()
        parts.insert(1, f"git {rev}{' + uncommitted saezarr/ changes' if dirty else ''}")
    except OSError:
        pass
    return ", ".join(parts) + f", python {platform.python_version()}"


MD_HEADER = """# saezarr build benchmarks

Written by `scripts/bench_build.py` (see its docstring for what each workload measures). Every ratio compares
figures measured in the same run on the same machine; PASS/MISS are informational. `--quick` entries use small
data, so fixed per-build costs weigh more and their ratios are indicative only. On a shared machine wall times
move with other load (see the load averages); the CPU-second lines are the steadier comparison. Newest first.

"""
MD_MARKER = "<!-- newest first: bench_build.py inserts new results below this line -->\n"


def write_markdown(path: Path, entry: str) -> None:
    text = path.read_text() if path.exists() else MD_HEADER + MD_MARKER
    if MD_MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MD_MARKER
    head, tail = text.split(MD_MARKER, 1)
    path.write_text(head + MD_MARKER + "\n" + entry + ("\n" + tail.lstrip("\n") if tail.strip() else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small data (workload 1 keeps its shapes; workload 2 uses 8 SAEs), under 2 minutes on 2 cores",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the least data that runs every step (how the test suite checks this script); its figures mean nothing",
    )
    parser.add_argument("--workloads", default="1,2,3", help="which workloads, e.g. 1,3 (default 1,2,3)")
    parser.add_argument("--out-md", type=Path, help="insert the results into this Markdown file, newest first")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, rebuild each workload's store under pyinstrument, then under an all-thread stack sampler",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="where --profile writes its reports (default: a new temp folder, kept)",
    )
    parser.add_argument("--cache", type=Path, help="keep generated models and SAEs here and reuse them")
    parser.add_argument(
        "--repeat", type=int, default=1, help="builds and floors per workload; the fastest counts (default 1)"
    )
    parser.add_argument(
        "--rss-runs",
        type=int,
        default=None,
        help="fresh-process builds per size for peak RSS (default 2, 1 with --quick)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0
    selected = {int(w) for w in args.workloads.split(",") if w.strip()}
    if not selected <= {1, 2, 3}:
        parser.error("--workloads: choose from 1,2,3")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    started = time.perf_counter()
    info = machine()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    root = args.cache or Path(tempfile.mkdtemp(prefix="saezarr-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    log(f"{mode} run; assets in {root}; load average {info['load'][0]:.2f}")
    lines: list[str] = []
    raw: dict = {}
    try:
        if 1 in selected:
            w1, raw["w1"] = workload_1(root, scratch, mode, args.repeat, log)
            lines += w1
        if selected & {2, 3}:
            rss_runs = args.rss_runs or (1 if args.quick or args.smoke else 2)
            w23, raw["w23"] = workload_2_3(root, scratch, mode, selected, args.repeat, rss_runs, log)
            lines += w23
        profiles = []
        if args.profile:
            pdir = args.profile_dir or Path(tempfile.mkdtemp(prefix="saezarr-bench-profiles-"))
            pdir.mkdir(parents=True, exist_ok=True)
            for w in sorted({1 if 1 in selected else None, 2 if selected & {2, 3} else None} - {None}):
                folder = root / f"assets-w{w}-{mode}-{ASSET_VERSION}"
                log(f"  profiling workload {w}'s build ...")
                common = {
                    "task": "build",
                    "input": str(folder / "input.csv"),
                    "output": str(scratch / f"profile-w{w}.zarr"),
                    "config": str(folder / "config.json"),
                }
                run_child({**common, "profile": str(pdir / f"profile-w{w}")})
                log(f"  sampling all threads of workload {w}'s build ...")
                run_child({**common, "profile": "stacks", "stacks": str(pdir / f"profile-w{w}-threads.txt")})
                shutil.rmtree(scratch / f"profile-w{w}.zarr", ignore_errors=True)
                profiles += [str(pdir / f"profile-w{w}.txt"), str(pdir / f"profile-w{w}-threads.txt")]
            lines.append("Profiles (pyinstrument of the main thread; all-thread stack samples): " + ", ".join(profiles))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.cache is None:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_end = os.getloadavg()
    header = [
        f"## {stamp} - {mode} run{'' if selected == {1, 2, 3} else ', workloads ' + ','.join(map(str, sorted(selected)))}"
        f" ({elapsed:.0f} s)",
        "",
        f"- command: `{command}`",
        f"- machine: nproc {info['nproc']}, RAM {info['ram'] / 2**30:.1f} GiB, CPU {info['cpu']}; load average "
        f"{info['load'][0]:.2f} at start, {load_end[0]:.2f} at end",
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
