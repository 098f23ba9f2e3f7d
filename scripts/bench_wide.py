#!/usr/bin/env python
"""Benchmark wide SAEs: encode+write throughput per fragment x feature at widths 16k, 65k, 262k and 1m, and peak RSS.

Each width is one `saezarr build` in a fresh child process: a random-weight one-layer Gemma-2 of real hidden size
(2304, small vocabulary and MLP, so the model costs little) and one SAE of real Gemma-2-2B shape (W_enc 2304 x width,
b_enc, threshold; random, thresholds set for ~64 active features per token; written straight into a params.npz
without W_dec, which the build never reads). `--sae-memory` (default 2 GiB) makes the 262k and 1m encoders tiled.
A build at width 256 measures what does not grow with the width. Each width's encode+write time is the time of its
model pass (the encoder's load, each chunk's forward of the one layer, encode and write; timed by wrapping the
pass) less the 256-wide build's, in wall time and in the process's CPU time (steadier on a shared machine). Figures: ns per fragment x feature, its ratio to 16k's
(target <= 1.3), the store's unit (fragments per shard) and inner feature chunk, and each child's peak RSS against
the documented bound (the 256-wide build's peak, which holds the model and interpreter, plus
saezarr.build.memory.host_memory_bound). Then `export-npz` and `analyze` on the widest store, each a child
process, with their peak RSS.

    python scripts/bench_wide.py                      # ~96 fragments, widths 16k 65k 262k 1m
    python scripts/bench_wide.py --widths 16k,65k     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

D_MODEL = 2304  # Gemma-2-2B's hidden size
ACTIVE = 64  # features firing per token, about

CHILD = r"""
import json, resource, sys, threading, time
from pathlib import Path
spec = json.loads(sys.argv[1])
peak_anon = [0]
def sample():  # anonymous memory, sampled: mapped weights are page cache, counted in RSS but not here
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    peak_anon[0] = max(peak_anon[0], int(line.split()[1]) * 1024)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
if spec["kind"] == "build":
    import saezarr.build.runner as R
    from saezarr.build.pipeline import BuildOptions, build
    from saezarr.store.format import Store
    passes = []
    cpu = []
    def timed(function):  # a pass's encoder loads and each chunk's forward, encode and write
        def run(*args, **kwargs):
            t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            result = function(*args, **kwargs)
            passes.append(time.perf_counter() - t)
            d = resource.getrusage(resource.RUSAGE_SELF)
            cpu.append(d.ru_utime - c.ru_utime + d.ru_stime - c.ru_stime)
            return result
        return run
    R.run_task, R.pass_encoders = timed(R.run_task), timed(R.pass_encoders)
    started = time.perf_counter()
    summary = build(BuildOptions(input=Path(spec["csv"]), output=Path(spec["output"]), config_file=Path(spec["config"]),
                                 device="cpu", sae_memory=spec["sae_memory"], quiet=True, overwrite=True))
    store = Store(spec["output"])
    result = {"elapsed": summary.elapsed, "encode_write": sum(passes), "encode_write_cpu": sum(cpu), "fragments": summary.n_fragments, "width": store.width,
              "chunk_fragments": store.chunk_fragments, "feature_chunk": store.feature_chunk,
              "bytes": summary.bytes_on_disk}
else:
    from saezarr.cli import main
    started = time.perf_counter()
    assert main(spec["argv"]) == 0
    result = {"elapsed": time.perf_counter() - started}
result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result["peak_anon"] = peak_anon[0]
print("RESULT " + json.dumps(result))
"""


def width_of(tag: str) -> int:
    """16k -> 16384, 1m -> 1048576."""
    from saezarr.inputs.configs import parse_width

    return parse_width(tag, "--widths")


def write_params(path: Path, width: int, rms: float, seed: int) -> None:
    """A Gemma Scope-layout params.npz (stored, uncompressed), W_enc streamed in row blocks: never whole in memory."""
    from statistics import NormalDist

    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    z = NormalDist().inv_cdf(1 - ACTIVE / width)
    threshold = np.full(width, z * rms, dtype=np.float32)  # pre ~ N(0, rms^2) for W_enc ~ N(0, 1/d)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("W_enc.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f4", "fortran_order": False, "shape": (D_MODEL, width)}
            np.lib.format.write_array_header_1_0(member, header)
            for row in range(0, D_MODEL, 64):
                block = rng.standard_normal((min(64, D_MODEL - row), width), dtype=np.float32)
                member.write((block / np.float32(np.sqrt(D_MODEL))).tobytes())
        for key, array in (("b_enc", np.zeros(width, np.float32)), ("threshold", threshold)):
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, array)


def child(spec: dict) -> dict:
    """Run one measured thing in a fresh process; its result line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"child {spec.get('kind')} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    """Run the benchmark and print its table."""
    import pandas as pd

    from saezarr.build.memory import host_memory_bound, writer_threads
    from saezarr.machine import human_bytes, parse_size
    from saezarr.store.format import default_chunk_fragments
    from saezarr.testing.synthetic import DEMO_CSV, calibration_residuals, write_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--widths", default="16k,65k,262k,1m")
    parser.add_argument("--sentences", type=int, default=8, help="demo sentences (about 12 token fragments each)")
    parser.add_argument("--sae-memory", default="2GiB")
    args = parser.parse_args()
    sae_memory = parse_size(args.sae_memory, "--sae-memory")
    tags = args.widths.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-wide-") as folder:
        root = Path(folder)
        frame = pd.read_csv(DEMO_CSV).head(args.sentences)
        frame.to_csv(root / "input.csv", index=False)
        sentences = pd.read_csv(DEMO_CSV)["sentence"].tolist()
        write_model(root / "model", sentences, num_layers=1, hidden_size=D_MODEL, intermediate_size=256, head_dim=64)
        x = calibration_residuals(root / "model", [0], sentences)[0]
        rms = float((x**2).sum(1).mean() / D_MODEL) ** 0.5
        results = {}
        for tag in ["256", *tags]:
            width = width_of(tag)
            sae_path = f"layer_0/width_{tag}/average_l0_{ACTIVE}"
            started = time.perf_counter()
            write_params(root / "saes" / sae_path / "params.npz", width, rms, seed=width)
            made = time.perf_counter() - started
            config = root / f"config-{tag}.json"
            entry = {"layer": 0, "average_l0": ACTIVE, "path": sae_path}
            config.write_text(
                json.dumps({"model": str(root / "model"), "sae_repo": str(root / "saes"), "configs": [entry]})
            )
            spec = {"kind": "build", "csv": str(root / "input.csv"), "output": str(root / f"{tag}.zarr")}
            spec.update(config=str(config), sae_memory=sae_memory)
            results[tag] = child(spec) | {"generate": made}
            if tag != tags[-1]:
                (root / "saes" / sae_path / "params.npz").unlink()  # the disk and page cache are for the next width
            print(f"width {tag}: {json.dumps(results[tag])}", file=sys.stderr)
        widest = root / f"{tags[-1]}.zarr"
        export = child({"kind": "cli", "argv": ["export-npz", str(widest), "--output", str(root / "npz")]})
        analyze = child({"kind": "cli", "argv": ["analyze", str(widest), "--output", str(root / "analysis")]})
    base = results["256"]
    threads = writer_threads()
    print(
        f"bench_wide: {base['fragments']} fragments, --sae-memory {human_bytes(sae_memory)}, {threads} writer threads"
    )
    print(
        "| width | unit (fragments) | inner chunk (features) | encoder | build s | encode+write s | CPU s "
        "| ns per fragment x feature (wall, CPU) | vs 16k (wall, CPU) | peak anon | anon bound | peak RSS "
        "| RSS bound | within |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    reference = reference_cpu = None
    for tag in tags:
        r = results[tag]
        net = max(r["encode_write"] - base["encode_write"], 1e-9)
        net_cpu = max(r["encode_write_cpu"] - base["encode_write_cpu"], 1e-9)
        ns = net / (r["fragments"] * r["width"]) * 1e9
        ns_cpu = net_cpu / (r["fragments"] * r["width"]) * 1e9
        reference, reference_cpu = reference or ns, reference_cpu or ns_cpu
        unit = 4 * default_chunk_fragments(r["width"]) * r["width"]
        encoder_bytes = 4 * (D_MODEL * r["width"] + 2 * r["width"])
        # anonymous: the interpreter and model (the 256-wide build's), and what the bound counts beside the encoder,
        # which a CPU uses where it is mapped; RSS: that plus the mapped weights (page cache), the file at most
        anon_bound = base["peak_anon"] + host_memory_bound(0, unit, threads, overlap=False)
        rss_bound = base["peak_rss"] + host_memory_bound(encoder_bytes, unit, threads, overlap=False)
        tiled = "tiled" if encoder_bytes > sae_memory else "whole"
        within = r["peak_anon"] <= anon_bound and r["peak_rss"] <= rss_bound
        print(
            f"| {tag} | {r['chunk_fragments']} | {r['feature_chunk']} | {tiled} | {r['elapsed']:.1f} | {net:.1f} | "
            f"{net_cpu:.1f} | {ns:.0f}, {ns_cpu:.0f} | {ns / reference:.2f}, {ns_cpu / reference_cpu:.2f} | "
            f"{human_bytes(r['peak_anon'])} | {human_bytes(anon_bound)} | "
            f"{human_bytes(r['peak_rss'])} | {human_bytes(rss_bound)} | {'yes' if within else 'NO'} |"
        )
    print(f"baseline (width 256): build {base['elapsed']:.1f} s, peak RSS {human_bytes(base['peak_rss'])}")
    print(
        f"on the {tags[-1]} store: export-npz {export['elapsed']:.1f} s, peak RSS {human_bytes(export['peak_rss'])} "
        f"(one config's [fragments, width] array: {human_bytes(4 * base['fragments'] * width_of(tags[-1]))}); "
        f"analyze {analyze['elapsed']:.1f} s, peak RSS {human_bytes(analyze['peak_rss'])}"
    )


if __name__ == "__main__":
    main()
