"""Which SAEs of SAELens' pretrained registry saezarr reads today, and which it refuses and why.

Reads `pretrained_saes.yaml` from the sae-lens wheel (no network; `pip download --no-deps sae-lens` and give the
wheel, or an installed sae_lens is used) and classifies every SAE with saezarr's own rules where the registry says
enough: the layout loaders its files would meet, the site its repository's or folder's name gives, and the model
processing its release asks for. SAELens-format SAEs whose site only their cfg.json on the hub says are counted as
such ("cfg.json decides"), not guessed.

    python scripts/inventory_saelens.py [sae_lens-X.whl | pretrained_saes.yaml] [--markdown]
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from saezarr.inputs.configs import SAEConfig
from saezarr.saes.locate import known_from_path, named_site
from saezarr.sites import Site

# conversion functions whose files one of saezarr's layouts reads (None: SAELens' own cfg.json format)
LAYOUTS = {
    None: "saelens",
    "gemma_2": "gemma_scope",
    "gemma_2_transcoder": "gemma_scope",
    "gemma_3": "gemma_scope_2",
    "llama_scope": "llama_scope",
    "dictionary_learning_1": "dictionary_learning",
    "sparsify": "sparsify",
    "qwen_scope": "qwen_scope",
    "mwhanna_transcoder": "mwhanna_transcoder",
    "llama_scope_r1_distill": "llama_scope_r1_distill",
    "connor_rob_hook_z": "connor_rob_hook_z",
    "deepseek_r1": "deepseek_r1",
    "goodfire": "goodfire",
}
# conversion functions whose files a format of saezarr's recognises and refuses, and why
REFUSED = {
    "temporal": "a temporal SAE's latents depend on earlier tokens",
    "mntss_clt_layer_transcoder": "a cross-layer transcoder's layer",
}
# conversion functions whose input SAELens' registry scales by its norm_scaling_factor (expected_average_only_in)
SCALED = ("llama_scope_r1_distill",)
HOOK = re.compile(r"(blocks\.\d+\.(?:[a-z0-9]+\.)?hook_[a-z]+(?:_[a-z]+)*|hook_embed)")


def registry(source: str | None) -> dict:
    """The registry as a dict, from a wheel, a yaml file, or the installed sae_lens."""
    if source is None:
        from importlib import resources

        return yaml.safe_load((resources.files("sae_lens") / "pretrained_saes.yaml").read_text())
    if source.endswith(".whl"):
        with zipfile.ZipFile(source) as wheel:
            return yaml.safe_load(wheel.read("sae_lens/pretrained_saes.yaml"))
    return yaml.safe_load(Path(source).read_text())


def classify(release: dict, sae: dict) -> str:
    """`read` or `refused: why` (or `cfg.json decides: ...` where only the SAE's hub cfg says its site)."""
    conversion = sae.get("conversion_func", release.get("conversion_func"))
    if conversion in REFUSED:
        return f"refused: format ({conversion}: {REFUSED[conversion]})"
    if conversion in SCALED and sae.get("norm_scaling_factor") is None:
        return f"refused: {conversion} without a norm_scaling_factor"
    if conversion not in LAYOUTS:
        return f"refused: format ({conversion}) is none of saezarr's layouts"
    path = str(sae["path"])
    if conversion == "gemma_3" and path.startswith("clt"):
        return "refused: format (Gemma Scope 2 CLT files are not folders)"
    overrides = release.get("config_overrides") or {}
    if overrides.get("normalize_activations") not in (None, "none", "layer_norm", "constant_norm_rescale"):
        if conversion != "llama_scope" and sae.get("norm_scaling_factor") is None:
            return f"refused: normalize_activations {overrides['normalize_activations']} without a norm_scaling_factor"
    if conversion is None:
        hook = HOOK.search(path) or HOOK.search(str(sae["id"]))
        if hook is None:
            return "cfg.json decides: its hook_name is not in the registry"
        site = Site(re.sub(r"\.hook_z$", ".attn.hook_z", hook.group(1).replace(".attn.hook_z", ".hook_z")), "")
        return "read" if site.is_read else f"refused: site {site.kind}"
    site = named_site(release["repo_id"], known_from_path(SAEConfig(None, None, path)))
    if site is None:
        return "its files decide: its name says no site"
    return "read" if site.is_read else f"refused: site {site.kind}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="an sae_lens wheel or pretrained_saes.yaml (default: installed)")
    parser.add_argument("--markdown", action="store_true", help="a table per release")
    args = parser.parse_args()
    releases = registry(args.source)
    totals: Counter = Counter()
    per_release = defaultdict(Counter)
    for name, release in releases.items():
        for sae in release["saes"]:
            verdict = classify(release, sae)
            totals[verdict] += 1
            per_release[name][verdict] += 1
    n = sum(totals.values())
    print(f"{n} SAEs in {len(releases)} releases")
    for verdict, count in totals.most_common():
        print(f"{count:6d}  {100 * count / n:5.1f} %  {verdict}")
    if args.markdown:
        print("\n| release | model | SAEs | verdict |\n|---|---|---|---|")
        for name, verdicts in sorted(per_release.items()):
            text = "; ".join(f"{verdict} ({count})" for verdict, count in verdicts.most_common())
            print(f"| {name} | {releases[name]['model']} | {sum(verdicts.values())} | {text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
