#!/usr/bin/env python
"""Benchmark stores in object storage against local disk, both measured in the same run: requests per build, per
resume, per `info` and per `analyze`, bytes sent and received, and wall time.

A real S3 server runs on loopback (moto's server app, one write at a time, `pip install 'moto[server]'`) behind a counting proxy
(`saezarr.testing.s3_server.Proxy`); every command runs as `python -m saezarr` in a child process, so the counts
are what a user's command sends. The workload is the offline demo model and SAEs on the demo sentences repeated
(`--repeat`), built once with the default unit size and once with small units (`--chunk-fragments 32`), where
requests per unit dominate.

Targets (issue 27): LIST+HEAD of a resume <= 2 + units/1000; a build to the loopback server <= 1.5x local disk.

    python scripts/bench_s3.py            # ~1 min on 2 cores
    python scripts/bench_s3.py --repeat 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from saezarr.machine import human_bytes
from saezarr.testing.s3_server import MotoServer, Proxy
from saezarr.testing.synthetic import DEMO_CSV, ensure_demo


def run(args: list[str], env: dict[str, str]) -> float:
    """Wall seconds of `python -m saezarr ARGS` (imports included, on both sides alike)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "saezarr", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"saezarr {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - started


def counted(proxy: Proxy, args: list[str], env: dict[str, str]) -> dict:
    """Run a command through the proxy; its wall time and the requests it sent, by kind."""
    proxy.reset()
    seconds = run(args, env)
    return {"seconds": seconds, **dict(proxy.counts), "sent": proxy.bytes_in, "received": proxy.bytes_out}


def units_of(store: Path) -> int:
    """Completion units (config x chunk) of a local store."""
    return sum(1 for _ in (store / "_saezarr" / "done").rglob("*") if _.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="times the demo sentences are repeated")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="saezarr-bench-s3-"))
    try:
        config = ensure_demo(work / "cache")
        frame = pd.read_csv(DEMO_CSV)
        sentences = pd.concat(
            [frame.assign(sentence=frame["sentence"] + f" ({i})") for i in range(options.repeat)], ignore_index=True
        )
        csv = work / "sentences.csv"
        sentences.to_csv(csv, index=False)
        with MotoServer() as server:
            proxy = Proxy(server.port).start()
            env = {**os.environ, **server.env(proxy.endpoint), "TOKENIZERS_PARALLELISM": "false"}
            rows = []
            for chunk in ("512", "32"):
                bucket = server.make_bucket(f"bench-{chunk}")
                url, local = f"s3://{bucket}/bench.zarr", work / f"local-{chunk}.zarr"
                common = ["--input", str(csv), "--config", str(config), "--chunk-fragments", chunk, "--quiet"]
                local_s = run(["build", "--output", str(local), *common], env)
                build = counted(proxy, ["build", "--output", url, *common], env)
                resume = counted(proxy, ["build", "--output", url, *common, "--resume"], env)
                info = counted(proxy, ["info", url], env)
                analysis = work / f"analysis-{chunk}"
                analyze = counted(proxy, ["analyze", url, "--output", str(analysis), "--permutations", "10"], env)
                units = units_of(local)
                rows.append((chunk, units, local_s, build, resume, info, analyze))
            proxy.stop()
        print_report(len(sentences), rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_report(n_sentences: int, rows: list) -> None:
    """The figures as a Markdown table, ratios against local disk measured in the same run."""
    print(f"## Object storage (loopback moto S3 behind a counting proxy), {n_sentences} sentences, 6 SAEs\n")
    print("| unit | units | build local s | build S3 s | S3/local | PUT | GET | HEAD | LIST | sent |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for chunk, units, local_s, build, *_ in rows:
        print(
            f"| {chunk} fragments | {units} | {local_s:.1f} | {build['seconds']:.1f} | "
            f"{build['seconds'] / local_s:.2f} | {build.get('PUT', 0)} | {build.get('GET', 0)} | "
            f"{build.get('HEAD', 0)} | {build.get('LIST', 0)} | {human_bytes(build['sent'])} |"
        )
    print("\n| unit | command | s | PUT | GET | HEAD | LIST | LIST+HEAD target | received |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for chunk, units, _, _, resume, info, analyze in rows:
        for name, counts in (("resume (all done)", resume), ("info", info), ("analyze", analyze)):
            target = f"<= {2 + units / 1000:.2f}" if name.startswith("resume") else ""
            print(
                f"| {chunk} | {name} | {counts['seconds']:.1f} | {counts.get('PUT', 0)} | {counts.get('GET', 0)} | "
                f"{counts.get('HEAD', 0)} | {counts.get('LIST', 0)} | {target} | {human_bytes(counts['received'])} |"
            )


if __name__ == "__main__":
    main()
