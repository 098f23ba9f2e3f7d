#!/usr/bin/env python
"""Benchmark reading several model sites in one forward pass against reading one, each ratio against a baseline
measured in the same run (the issue's target: several sites in one pass cost at most 1.1x one site).

A random-weight model of each `--models` type (`saezarr.testing.synthetic.write_architecture_model`, `--layers`
layers of hidden size `--hidden`, float32, eager attention) reads a chunk of `--batch` demo sentences, every token
position selected, in forwards of `--batch-size` sentences (the build's default, 16), through
`saezarr.models.language_model.SiteReader.read` as the build's `chunk_residuals` calls it, in three cases:

1. baseline: one site, the deepest layer's `hook_resid_post`;
2. every site kind of the model's site table at that deepest layer, and `hook_embed`;
3. every site kind at every layer, and `hook_embed`.

The forward stops after the last site needed, the deepest `hook_resid_post` in every case. Each figure is the median
of `--repeats` reads after `--warmup` untimed ones, the cases interleaved (each repeat runs every case once, in a
rotating order) so that load from other work falls on all of them alike: wall time, the process's CPU time (all
threads; the steadier figure on a shared machine) and minor page faults of `reader.read()` alone, the hooks attached
before the clock starts. Each case has one reader for all its reads (a build pass has one for all its chunks), so
that `read` reuses its buffers from read to read (its hooks are attached around each read alone: the cases share the
model and the process). `ratio` is the case's median over the baseline's; `paired` the median of each repeat's
ratio to the baseline run beside it. The target is checked on the wall-time ratio of medians. OMP_WAIT_POLICY is
PASSIVE unless set, as `python -m saezarr` runs.

Where case 3's time over the baseline goes, measured (benchmark-only subclasses of SiteReader, not saezarr's code):

- `hooks alone`: case 3's hooks keeping an empty tensor (nothing selected, copied or normalised): the cost of the
  hooks themselves (PyTorch's hooked-module path, the Python calls, the bookkeeping);
- the CPU time spent inside case 3's hooks (selecting the tokens, which copies them, and normalising
  `ln2.hook_normalized`), per site kind, and the page faults taken inside them, from a few more reads of one reader
  after a warm-up read (on a GPU this is host time: launching the kernels). `--device cuda` was not run on the
  machine that wrote this script.

    python scripts/bench_sites.py                         # gemma2 and gpt2, 6 layers, hidden 256: ~30 s on 2 cores
    python scripts/bench_sites.py --hidden 1024 --repeats 10
    python scripts/bench_sites.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m saezarr` runs: no spinning on shared cores

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from saezarr.compat import load_base_model
from saezarr.models.architectures import ARCHITECTURES
from saezarr.models.language_model import SiteReader
from saezarr.sites import split_hook
from saezarr.testing.synthetic import DEMO_CSV, write_architecture_model

TARGET = 1.1  # several sites in one pass cost at most this times one site


class HooksAloneReader(SiteReader):
    """A SiteReader whose hooks keep an empty tensor: nothing selected, copied, kept or normalised (benchmark only:
    what is left is the cost of the hooks themselves)."""

    NOTHING = torch.empty(0)

    def _input_hook(self, hook, norm):
        return super()._input_hook(hook, None)

    def _select(self, hook, hidden, dtype=None):
        self._buffers[hook] = self.NOTHING  # what read returns
        return self.NOTHING


class TimedReader(SiteReader):
    """A SiteReader that sums the CPU seconds of the process (all threads) spent inside its hooks per site kind, and
    the page faults taken inside them (benchmark only)."""

    def __init__(self, model, hooks):
        super().__init__(model, hooks)
        self.inside: dict[str, float] = {}
        self.faults = 0

    def _timed(self, hook: str, inner):
        kind = split_hook(hook)[1]

        def timed(*args):
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.process_time()
            try:
                return inner(*args)
            finally:
                self.inside[kind] = self.inside.get(kind, 0.0) + time.process_time() - started
                self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults

        return timed

    def _input_hook(self, hook, norm):
        return self._timed(hook, super()._input_hook(hook, norm))

    def _output_hook(self, hook):
        return self._timed(hook, super()._output_hook(hook))


BASE, DEEPEST, EVERY, ALONE = "1 site (baseline)", "deepest layer", "every layer", "every layer, hooks alone"


def sites(model_type: str, layers: int) -> dict[str, list[str]]:
    """The hooks of the three cases."""
    kinds = sorted(kind for kind in ARCHITECTURES[model_type].sites if kind != "hook_embed")
    deepest = layers - 1
    return {
        BASE: [f"blocks.{deepest}.hook_resid_post"],
        DEEPEST: ["hook_embed"] + [f"blocks.{deepest}.{kind}" for kind in kinds],
        EVERY: ["hook_embed"] + [f"blocks.{layer}.{kind}" for layer in range(layers) for kind in kinds],
    }


class Timer:
    """Wall and CPU seconds of a call, and the minor page faults it took, the device synchronised on both sides."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, run) -> tuple[float, float, int]:
        self.sync()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        self.sync()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def tiny_model(
    model_type: str, args: argparse.Namespace, corpus: list[str], root: Path
) -> tuple[Path, torch.nn.Module, list[np.ndarray]]:
    """A random model of the type in the options' shape written under root, loaded (eager attention, on their device),
    and the token ids of a batch of `--batch` corpus sentences: (its folder, the model, the ids)."""
    from transformers import AutoTokenizer

    folder = write_architecture_model(
        root / model_type, corpus, model_type, num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads
    )
    model = load_base_model(folder, torch.float32, attn_implementation="eager").eval().to(torch.device(args.device))
    batch = [corpus[i % len(corpus)] for i in range(args.batch)]
    return folder, model, [np.asarray(ids) for ids in AutoTokenizer.from_pretrained(folder)(batch)["input_ids"]]


def bench_model(model_type: str, args: argparse.Namespace, corpus: list[str], root: Path) -> dict:
    device = torch.device(args.device)
    _, model, token_ids = tiny_model(model_type, args, corpus, root)
    chunk = [
        every_token(token_ids[first : first + args.batch_size]) for first in range(0, len(token_ids), args.batch_size)
    ]
    cases = sites(model_type, args.layers)
    runs: dict[str, tuple[type[SiteReader], list[str]]] = {name: (SiteReader, hooks) for name, hooks in cases.items()}
    runs[ALONE] = (HooksAloneReader, cases[EVERY])
    timer = Timer(device)
    names = list(runs)
    readers = {name: kind(model, hooks) for name, (kind, hooks) in runs.items()}
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for repeat in range(args.warmup + args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # a rotating order
            with readers[name] as reader:  # its hooks attached for this read alone: the cases share the model
                sample = timer(lambda reader=reader: reader.read(chunk))
            if repeat >= args.warmup:
                samples[name].append(sample)
    inside, faults_inside = [], []  # inside case 3's hooks, in a few more reads of one reader after a warm-up read
    timed = TimedReader(model, cases[EVERY])
    with timed:
        for repeat in range(1 + max(3, args.repeats // 2)):
            timed.inside, timed.faults = {}, 0
            read = timed.read(chunk)
            if repeat:
                inside.append(timed.inside)
                faults_inside.append(timed.faults)
    median = statistics.median
    return {
        "model_type": model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_shapes": [(len(ids), max(len(i) for i in ids)) for ids, _, _ in chunk],
        "tokens": sum(len(rows) for _, rows, _ in chunk),
        "sites": {name: len(hooks) for name, (_, hooks) in runs.items()},
        "read_bytes": sum(t.numel() * t.element_size() for t in read.values()),
        "wall": {name: median(s[0] for s in samples[name]) for name in names},
        "cpu": {name: median(s[1] for s in samples[name]) for name in names},
        "faults": {name: median(s[2] for s in samples[name]) for name in names},
        "wall_quartiles": {name: quartiles([s[0] for s in samples[name]]) for name in names},
        # each repeat's case against the baseline of the same repeat, run beside it
        "paired": {name: median(s[0] / b[0] for s, b in zip(samples[name], samples[BASE])) for name in names},
        "inside": {kind: median(i[kind] for i in inside) for kind in inside[0]},
        "faults_inside": median(faults_inside),
    }


def every_token(token_ids: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """A batch of sentences with every token position selected, BOS included."""
    rows = np.concatenate([np.full(len(ids), row) for row, ids in enumerate(token_ids)])
    return token_ids, rows, np.concatenate([np.arange(len(ids)) for ids in token_ids])


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the one value twice, for one)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, q3


def report(result: dict) -> str:
    wall, cpu, faults = result["wall"], result["cpu"], result["faults"]
    lines = [
        f"{result['model_type']}: {result['parameters'] / 1e6:.2f} M parameters, a chunk of "
        f"{' + '.join(f'{n} x {w}' for n, w in result['batch_shapes'])} tokens (sentences x padded width, a forward "
        f"each), {result['tokens']} positions selected; case 3 reads {result['read_bytes'] / 2**20:.1f} MiB",
        f"  {'case':<25} {'sites':>5} {'wall ms':>8} {'q1-q3':>11} {'ratio':>6} {'paired':>6} {'CPU ms':>7} "
        f"{'ratio':>6} {'faults':>6}",
    ]
    for name in wall:
        q1, q3 = result["wall_quartiles"][name]
        ratio = wall[name] / wall[BASE]
        verdict = f"  target <= {TARGET}x: {'met' if ratio <= TARGET else 'MISSED'}" if name in (DEEPEST, EVERY) else ""
        lines.append(
            f"  {name:<25} {result['sites'][name]:>5} {wall[name] * 1e3:>8.1f} {f'{q1 * 1e3:.0f}-{q3 * 1e3:.0f}':>11} "
            f"{ratio:>5.2f}x {result['paired'][name]:>5.2f}x {cpu[name] * 1e3:>7.1f} {cpu[name] / cpu[BASE]:>5.2f}x "
            f"{faults[name]:>6.0f}{verdict}"
        )
    inside = result["inside"]
    normalised = sum(t for kind, t in inside.items() if kind.endswith("hook_normalized"))
    others = sum(inside.values()) - normalised
    lines.append(
        f"  where case 3's extra goes: wall {(wall[EVERY] - wall[BASE]) * 1e3:+.1f} ms, CPU "
        f"{(cpu[EVERY] - cpu[BASE]) * 1e3:+.1f} ms over the baseline (medians); CPU inside its hooks "
        f"{sum(inside.values()) * 1e3:.1f} ms a read: copying the selections out {others * 1e3:.1f} ms, the "
        f"normalised sites (copy and normalisation) {normalised * 1e3:.1f} ms; hooks alone (no copy, no "
        f"normalisation) {(wall[ALONE] - wall[BASE]) * 1e3:+.1f} ms wall, {(cpu[ALONE] - cpu[BASE]) * 1e3:+.1f} ms "
        f"CPU; page faults {faults[EVERY] - faults[BASE]:+.0f} a read ({result['faults_inside']:.0f} of them inside "
        "the hooks)"
    )
    slowest = sorted(inside.items(), key=lambda item: -item[1])
    lines.append(
        "  CPU inside case 3's hooks, per kind (ms a read): " + ", ".join(f"{k} {t * 1e3:.2f}" for k, t in slowest)
    )
    return "\n".join(lines)


def add_model_options(parser: argparse.ArgumentParser, unit: str, batch_help: str) -> None:
    """The options of a site benchmark: the device, how many runs, and the tiny models' shape."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10, help=f"timed {unit} per case (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help=f"untimed {unit} per case first (default 2)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help=batch_help)


def run_models(
    args: argparse.Namespace,
    bench_model: Callable[[str, argparse.Namespace, list[str], Path], dict],
    report: Callable[[dict], str],
    unit: str,
    versions: str = "",
) -> None:
    """Print the machine and settings, each model type's report (`report(bench_model(type, args, corpus, root))`),
    then the time taken."""
    corpus = pd.read_csv(DEMO_CSV)["sentence"].tolist()
    started = time.perf_counter()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads{versions}, device {args.device}, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.layers} layers, hidden {args.hidden}, "
        f"{args.heads} heads, medians of {args.repeats} {unit} after {args.warmup} warm-up",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-sites-") as root:
        for model_type in args.models.split(","):
            print(report(bench_model(model_type, args, corpus, Path(root))), flush=True)
    print(f"{time.perf_counter() - started:.0f} s, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser, "reads", "sentences per read: a chunk (default 32)")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per forward (default 16, the build's)")
    parser.add_argument("--models", default="gemma2,gpt2", help="comma-separated model types (default gemma2,gpt2)")
    run_models(parser.parse_args(argv), bench_model, report, "reads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
