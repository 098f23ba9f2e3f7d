#!/usr/bin/env python
"""Benchmark TransformerLens' bridge over a Hugging Face model (`TransformerBridge.run_with_cache`) against saezarr's
site tables (`SiteReader`), each against a plain forward of the same model measured in the same run, and check that
the two give the same activations (issue 26: the bridge may replace the hand-written tables if it gives the same
numbers at equal speed with acceptable dependencies).

A random-weight model of each `--models` type (`saezarr.testing.synthetic.write_architecture_model`, `--layers`
layers of hidden size `--hidden`, float32, eager attention) reads one batch of `--batch` demo sentences (right-padded,
with the attention mask), every token position selected. The cases, all on the same token ids:

- `HF forward (floor)`: the base model's forward (`saezarr.compat.load_base_model`), no hooks, all layers;
- `saezarr, 1 site` / `saezarr, every site`: `SiteReader` reading the deepest layer's `hook_resid_post`, or every
  site kind of the model's site table at every layer and `hook_embed`; the forward stops after the last site;
- `bridge, no cache`: the bridge's own forward (`stop_at_layer=layers`, so neither the final norm nor the unembedding
  runs), no hooks: what wrapping the model costs;
- `bridge, 1 site` / `bridge, every site`: `run_with_cache(names_filter=the same hooks, stop_at_layer=layers)` and
  the cached activations gathered at the same (row, position) pairs that SiteReader returns.

The bridge is `TransformerBridge.boot_transformers(folder, hf_model=..., tokenizer=...)` over its own copy of the
model (AutoModelForCausalLM, eager attention): offline, no hub name needed, `hook_mlp_in` turned on (gated off by
default), and no weight processing (`enable_compatibility_mode`, which folds and centres weights, is not called).

Each figure is the median of `--repeats` runs after `--warmup` untimed ones, the cases interleaved in a rotating
order so that load from other work falls on all of them alike: wall time and the process's CPU time (all threads;
the steadier figure on a shared machine). `ratio` is a median over the floor's median; `paired` the median of each
repeat's ratio to the floor run beside it. OMP_WAIT_POLICY is PASSIVE unless set, as `python -m saezarr` runs; torch
uses one thread per core available.

Agreement: for every site kind, the largest absolute difference between the bridge's cached activations and
SiteReader's over all layers and selected positions, and the same relative to the largest absolute value of the
site (hook_z's heads flattened in order, as saezarr returns it): `identical` at 0, `same` under 1e-4 (float32
rounding: the tests hold saezarr to TransformerLens at 1e-5 of the site's scale plus rtol 1e-4), else `DIFFERENT`.

    python scripts/bench_bridge.py                     # gpt2, gemma2 and llama, 6 layers, hidden 256: ~1 min on 2 cores
    python scripts/bench_bridge.py --repeats 20 --models gemma2
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m saezarr` runs: no spinning on shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; the bridge must not reach for the hub

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_sites  # noqa: E402  (this folder's: run as `python scripts/bench_bridge.py`)
from bench_sites import Timer, quartiles  # noqa: E402

from saezarr.models.language_model import SiteReader, pad_batch

FLOOR, SZ_ONE, SZ_EVERY = "HF forward (floor)", "saezarr, 1 site", "saezarr, every site"
BR_NONE, BR_ONE, BR_EVERY = "bridge, no cache", "bridge, 1 site", "bridge, every site"


def sites(model_type: str, layers: int) -> dict[str, list[str]]:
    """The hooks read by the one-site and every-site cases: every kind of the site table, at every layer."""
    cases = bench_sites.sites(model_type, layers)
    return {"one": cases[bench_sites.BASE], "every": cases[bench_sites.EVERY]}


def boot_bridge(folder: Path, device: torch.device):
    """TransformerLens' bridge over its own copy of the checkpoint at folder, offline: the HF model and tokenizer are
    loaded here and handed to it."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(
        str(folder), hf_model=hf_model.eval().to(device), tokenizer=tokenizer, device=device, dtype=torch.float32
    )
    bridge.set_use_hook_mlp_in(True)  # gated off by default, as in HookedTransformer (tests/tlref.py turns it on too)
    return bridge.eval()


def bridge_read(bridge, hooks: list[str], input_ids, mask, rows, positions, layers: int) -> dict[str, torch.Tensor]:
    """The bridge's activations at hooks, gathered at (rows, positions) as SiteReader returns them."""
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(
            input_ids, names_filter=hooks, stop_at_layer=layers, attention_mask=mask, return_cache_object=False
        )
        return {hook: cache[hook][rows, positions].reshape(len(rows), -1) for hook in hooks if hook in cache}


def agreement(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per site kind: (max |bridge - saezarr|, that over max |saezarr|), over every layer."""
    worst: dict[str, tuple[float, float]] = {}
    for hook, value in ours.items():
        kind = hook.split(".", 2)[2] if hook.startswith("blocks.") else hook
        if hook not in theirs or theirs[hook].shape != value.shape:  # not cached, or not the same shape: nan
            worst[kind] = (float("nan"), float("nan"))
            continue
        diff = (theirs[hook].float() - value.float()).abs().max().item()
        scale = value.float().abs().max().item()
        previous = worst.get(kind, (0.0, 0.0))
        worst[kind] = (max(previous[0], diff), max(previous[1], diff / scale if scale else diff))
    return worst


def bench_model(model_type: str, args: argparse.Namespace, corpus: list[str], root: Path) -> dict:
    device = torch.device(args.device)
    folder, model, token_ids = bench_sites.tiny_model(model_type, args, corpus, root)
    rows = np.concatenate([np.full(len(ids), row) for row, ids in enumerate(token_ids)])
    positions = np.concatenate([np.arange(len(ids)) for ids in token_ids])  # every token, BOS included
    input_ids, mask = (tensor.to(device) for tensor in pad_batch(token_ids))
    rows_t, positions_t = torch.as_tensor(rows, device=device), torch.as_tensor(positions, device=device)
    hooks = sites(model_type, args.layers)
    result: dict = {"model_type": model_type, "sites": {}, "errors": {}}
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["batch_shape"] = tuple(input_ids.shape)
    result["tokens"] = len(rows)

    def floor():
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=mask, use_cache=False)

    def reader(which):
        def run():
            with SiteReader(model, hooks[which]) as site_reader:
                return site_reader.read([(token_ids, rows, positions)])

        return run

    runs = {FLOOR: floor, SZ_ONE: reader("one"), SZ_EVERY: reader("every")}
    result["sites"] |= {FLOOR: 0, SZ_ONE: len(hooks["one"]), SZ_EVERY: len(hooks["every"])}
    try:
        started = time.perf_counter()
        bridge = boot_bridge(folder, device)
        result["boot_s"] = time.perf_counter() - started
    except Exception as error:  # reported, not hidden: the question is whether the bridge can be built at all
        result["errors"]["boot"] = f"{type(error).__name__}: {error}"
        bridge = None
    if bridge is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ours = reader("every")()
            theirs = bridge_read(bridge, hooks["every"], input_ids, mask, rows_t, positions_t, args.layers)
        result["warnings"] = sorted({str(w.message)[:300] for w in caught})
        result["agreement"] = agreement(ours, theirs)

        def bridge_none():
            with torch.inference_mode():
                bridge(input_ids, attention_mask=mask, stop_at_layer=args.layers, return_type=None)

        def bridge_reader(which):
            return lambda: bridge_read(bridge, hooks[which], input_ids, mask, rows_t, positions_t, args.layers)

        runs |= {BR_NONE: bridge_none, BR_ONE: bridge_reader("one"), BR_EVERY: bridge_reader("every")}
        result["sites"] |= {BR_NONE: 0, BR_ONE: len(hooks["one"]), BR_EVERY: len(hooks["every"])}
    timer = Timer(device)  # (wall, CPU, page faults)
    names = list(runs)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for repeat in range(args.warmup + args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # a rotating order
            sample = timer(runs[name])
            if repeat >= args.warmup:
                samples[name].append(sample)
    median = statistics.median
    result["wall"] = {name: median(s[0] for s in samples[name]) for name in names}
    result["cpu"] = {name: median(s[1] for s in samples[name]) for name in names}
    result["wall_quartiles"] = {name: quartiles([s[0] for s in samples[name]]) for name in names}
    result["paired"] = {name: median(s[0] / f[0] for s, f in zip(samples[name], samples[FLOOR])) for name in names}
    return result


def report(result: dict) -> str:
    lines = [
        f"{result['model_type']}: {result['parameters'] / 1e6:.2f} M parameters, batch {result['batch_shape'][0]} "
        f"sentences x {result['batch_shape'][1]} tokens (padded), {result['tokens']} positions selected"
        + (f"; bridge booted in {result['boot_s']:.2f} s" if "boot_s" in result else "")
    ]
    for stage, error in result["errors"].items():
        lines.append(f"  the bridge could not be built ({stage}): {error}")
    wall, cpu = result["wall"], result["cpu"]
    lines.append(
        f"  {'case':<22} {'sites':>5} {'wall ms':>8} {'q1-q3':>11} {'ratio':>6} {'paired':>6} {'CPU ms':>7} "
        f"{'ratio':>6}"
    )
    for name in wall:
        q1, q3 = result["wall_quartiles"][name]
        lines.append(
            f"  {name:<22} {result['sites'][name]:>5} {wall[name] * 1e3:>8.1f} "
            f"{f'{q1 * 1e3:.0f}-{q3 * 1e3:.0f}':>11} {wall[name] / wall[FLOOR]:>5.2f}x {result['paired'][name]:>5.2f}x "
            f"{cpu[name] * 1e3:>7.1f} {cpu[name] / cpu[FLOOR]:>5.2f}x"
        )
    if BR_EVERY in wall:
        lines.append(
            f"  bridge over saezarr: 1 site {wall[BR_ONE] / wall[SZ_ONE]:.2f}x wall, {cpu[BR_ONE] / cpu[SZ_ONE]:.2f}x "
            f"CPU; every site {wall[BR_EVERY] / wall[SZ_EVERY]:.2f}x wall, {cpu[BR_EVERY] / cpu[SZ_EVERY]:.2f}x CPU"
        )
    if "agreement" in result:
        lines.append("  agreement, bridge vs saezarr (max |diff| over every layer, and relative to max |saezarr|):")
        for kind, (diff, relative) in sorted(result["agreement"].items(), key=lambda item: -item[1][1]):
            if relative != relative:
                verdict = "not cached by the bridge"
            else:
                verdict = "identical" if diff == 0 else "same (float32 rounding)" if relative < 1e-4 else "DIFFERENT"
            lines.append(f"    {kind:<22} {diff:>10.3g} {relative:>10.3g}  {verdict}")
    for message in result.get("warnings", []):
        lines.append(f"  warning: {message}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_sites.add_model_options(parser, "runs", "sentences per forward (default 32)")
    parser.add_argument("--models", default="gpt2,gemma2,llama", help="comma-separated model types")
    args = parser.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    logging.disable(logging.WARNING)  # the bridge's and transformers' notes on the tiny configs
    import importlib.metadata

    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    versions = (
        f", transformers {transformers.__version__}, transformer-lens {importlib.metadata.version('transformer-lens')}"
    )
    bench_sites.run_models(args, bench_model, report, "runs", versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
