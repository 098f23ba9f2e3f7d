"""Write saezarr/data/saelens_releases.json, every release of SAELens' pretrained-SAE registry, from the sae-lens wheel.

Reads `sae_lens/pretrained_saes.yaml` (an sae-lens wheel, else the installed sae_lens) and, per release, its
repository, its model as a Hugging Face hub id (TransformerLens' `get_official_model_name` of SAELens' model name),
its conversion function (the SAEs' format) and its config overrides; per SAE, one row of FIELDS: its id and folder,
the layer and site (TransformerLens' hook name) its id, folder or the release's `hook_name` says (else saezarr's
rules for Gemma Scope's repository and folder names; else null), its width where its folder's name tags it, its
average L0 (else as its folder's name says it), Neuronpedia source and norm scaling factor as the registry gives
them. No network.

    python scripts/make_saelens_catalogue.py [sae_lens-X.whl] [--output FILE]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import warnings
from pathlib import Path

from inventory_saelens import HOOK, registry

from saezarr.inputs.configs import SAEConfig, parse_width
from saezarr.inputs.saelens import FIELDS
from saezarr.saes.locate import known_from_path, named_site
from saezarr.sites import split_hook

OUTPUT = Path(__file__).resolve().parent.parent / "saezarr" / "data" / "saelens_releases.json"
# hooks SAELens' ids write without the module TransformerLens names them under (`blocks.0.hook_z`)
SUBMODULES = {
    "attn": ("hook_q", "hook_k", "hook_v", "hook_z", "hook_pattern", "hook_attn_scores", "hook_result"),
    "mlp": ("hook_pre", "hook_post"),
}
RESID_POST_LAYER = re.compile(r"(?:^|/)resid_post_layer_(\d+)(?:[/_]|$)")  # dictionary_learning folders
LAYER = (
    re.compile(r"(?:^|[/_])layer_?(\d+)(?:\D|$)"),  # layer_12, layer12, layer_0.safetensors
    re.compile(r"^l(\d+)[ram]_"),  # Llama Scope: l12r_8x
    re.compile(r"^(\d+)-"),  # Neuronpedia's folders: 2-res_sce-ajt
)
WIDTH = (
    (re.compile(r"(?:^|[/_])width_(\d+[km]?)(?:[/_]|$)"), lambda tag: parse_width(tag, "")),  # Gemma Scope: width_16k
    (re.compile(r"width-2pow(\d+)"), lambda power: 2 ** int(power)),  # SAEBench: width-2pow14
)


def hub_model(name: str) -> str:
    """SAELens' (TransformerLens') model name as a Hugging Face hub id; a hub id TransformerLens does not know as is."""
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        if "/" in name:
            return name
        raise SystemExit(
            f"make_saelens_catalogue: model {name!r} is no hub id and TransformerLens does not know it"
        ) from None


def tl_hook(text: str) -> str | None:
    """The first hook name in `text`, in TransformerLens' spelling (`blocks.0.hook_z`: `blocks.0.attn.hook_z`)."""
    match = HOOK.search(text)
    if match is None:
        resid_post = RESID_POST_LAYER.search(text)
        return f"blocks.{resid_post.group(1)}.hook_resid_post" if resid_post else None
    layer, kind = split_hook(match.group(1))
    module = next((module for module, hooks in SUBMODULES.items() if kind in hooks), None)
    return match.group(1) if module is None or layer is None else f"blocks.{layer}.{module}.{kind}"


def layer_from_names(sae_id: str, path: str) -> int | None:
    """The layer the SAE's id or folder names, None if neither does."""
    for text in (sae_id, path):
        for pattern in LAYER:
            match = pattern.search(text)
            if match:
                return int(match.group(1))
    return None


def site(release: dict, sae_id: str, path: str) -> tuple[str | None, int | None]:
    """The SAE's hook and layer as saezarr's Gemma Scope rules say them (a Gemma Scope 2 transcoder reads
    `mlp.hook_in`, whatever TransformerLens name its release gives), else as its id, folder or release say them."""
    known = known_from_path(SAEConfig(None, None, path)).layer
    layer = known if known is not None else layer_from_names(sae_id, path)
    named = named_site(release["repo_id"], SAEConfig(layer, None, path))
    if named is not None and (named.layer is not None or named.hook == "hook_embed"):
        return named.hook, named.layer
    hook = tl_hook(sae_id) or tl_hook(path) or (release.get("config_overrides") or {}).get("hook_name")
    if hook is not None:
        return hook, split_hook(hook)[0]
    return None, layer


def width(path: str, release_name: str) -> int | None:
    """The number of features the SAE's folder (or release) name tags, None if it does not."""
    for pattern, parse in WIDTH:
        match = pattern.search(path) or pattern.search(release_name)
        if match:
            return parse(match.group(1))
    return None


def sae_row(name: str, release: dict, sae: dict) -> list:
    """One SAE as a row of FIELDS."""
    sae_id, path = str(sae["id"]), str(sae["path"])
    hook, layer = site(release, sae_id, path)
    known = {
        "id": sae_id,
        "path": path,
        "layer": layer,
        "hook": hook,
        "width": width(path, name),
        "average_l0": sae.get("l0", known_from_path(SAEConfig(None, None, path)).average_l0),
        "neuronpedia": sae.get("neuronpedia"),
        "norm_scaling_factor": sae.get("norm_scaling_factor"),
    }
    return [known[field] for field in FIELDS]


def releases(data: dict) -> dict[str, dict]:
    """Every release, by name: its facts and its SAEs' rows (SAELens reads an SAE's id and folder, and its own
    keys; a release's keys misplaced in an SAE's entry are ignored, as SAELens ignores them)."""
    made = {}
    for name, release in sorted(data.items()):
        head = {
            "model": hub_model(str(release["model"])),
            "saelens_model": str(release["model"]),
            "repo_id": str(release["repo_id"]),
            "format": release.get("conversion_func"),
        }
        if release.get("config_overrides"):
            head["config_overrides"] = release["config_overrides"]
        made[name] = {**head, "saes": [sae_row(name, release, sae) for sae in release["saes"]]}
    return made


def sae_lens_version(source: str | None) -> str:
    """The sae-lens version: the wheel's, else the installed one's."""
    if source is None:
        return importlib.metadata.version("sae-lens")
    return Path(source).name.split("-")[1]


def write(version: str, made: dict[str, dict], output: Path) -> None:
    """The data as JSON: one line per release's facts and per SAE."""
    parts = [f'{{\n "sae_lens": {json.dumps(version)},\n "fields": {json.dumps(list(FIELDS))},\n "releases": {{']
    blocks = []
    for name, release in made.items():
        head = json.dumps({key: value for key, value in release.items() if key != "saes"})
        rows = ",\n   ".join(json.dumps(row) for row in release["saes"])
        blocks.append(f'  {json.dumps(name)}: {head[:-1]}, "saes": [\n   {rows}\n  ]}}')
    text = "\n".join(parts) + "\n" + ",\n".join(blocks) + "\n }\n}\n"
    assert json.loads(text) == {"sae_lens": version, "fields": list(FIELDS), "releases": made}
    output.write_text(text)


def main() -> None:
    """Write the data."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", help="an sae_lens wheel (default: the installed sae_lens)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TransformerLens' import-time warnings
        made = releases(registry(args.source))
    write(sae_lens_version(args.source), made, args.output)
    print(f"wrote {len(made)} releases, {sum(len(r['saes']) for r in made.values())} SAEs to {args.output}")


if __name__ == "__main__":
    main()
