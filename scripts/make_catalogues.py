"""Write the bundled SAE catalogues (saezarr/data/catalogues/*.json) from the published release layouts.

Inputs: `gemma_scope_res_releases.json` (Gemma Scope 1's residual releases as SAELens' registry names them: paths,
average L0s, Neuronpedia sources) and Gemma Scope 2's published layout (repositories
`google/gemma-scope-2-{size}-{pt,it}`; `resid_post_all/layer_{L}_width_{16k,262k}_l0_{small,big}` on every layer;
`resid_post/layer_{L}_width_{16k,65k,262k,1m}_l0_{small,medium,big}` on a few layers). One catalogue per release
and width, since a store holds one width. Run: `python scripts/make_catalogues.py [--releases FILE]`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "saezarr" / "data" / "catalogues"
RELEASES = REPO.parent / "shared" / "data" / "gemma_scope_res_releases.json"
GEMMA_SCOPE_FOLDER = re.compile(r"^layer_(\d+)/width_(\w+)/average_l0_(\d+)$")
CANONICAL_ID = re.compile(r"^layer_(\d+)/width_(\w+)/canonical$")

# Gemma 3 decoder layers per size (config.json `num_hidden_layers`, of the text model for 4b/12b/27b)
GEMMA3_LAYERS = {"270m": 18, "1b": 26, "4b": 34, "12b": 48, "27b": 62}
GEMMA3_ALL_WIDTHS = ("16k", "262k")
GEMMA3_ALL_L0S = ("small", "big")
# resid_post sweep layers established from public sources; other sizes' sweep layers are not bundled
GEMMA3_SWEEP_LAYERS = {"1b": (7, 13, 17, 22)}
GEMMA3_SWEEP_WIDTHS = ("16k", "65k", "262k", "1m")
GEMMA3_SWEEP_L0S = ("small", "medium", "big")


def gemma2_model(repo_id: str) -> str:
    """The model a Gemma Scope 1 repository's SAEs were trained on, e.g. google/gemma-2-9b-it for -9b-it-res."""
    size, kind = re.fullmatch(r"google/gemma-scope-(\w+)-(pt|it)-res", repo_id).groups()
    return f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")


def gemma3_model(size: str, kind: str) -> str:
    """The model of a Gemma Scope 2 repository (the 270m pretrained model has no -pt suffix)."""
    return f"google/gemma-3-{size}" + ("" if (size, kind) == ("270m", "pt") else f"-{kind}")


def gemma_scope_1(releases: list[dict]) -> dict[str, dict]:
    """Gemma Scope 1 residual catalogues, one per release and width; canonical releases point at the real folders."""
    sources = {}
    for release in releases:
        for sae in release["saes"]:
            if sae.get("neuronpedia"):
                sources[(release["repo_id"], sae["path"])] = sae["neuronpedia"]
    catalogues: dict[str, dict] = {}
    for release in releases:
        canonical = release["release"].endswith("-canonical")
        for sae in release["saes"]:
            folder = GEMMA_SCOPE_FOLDER.match(sae["path"])
            if folder is None:  # embedding SAEs read no decoder layer's output
                continue
            layer, width, l0 = int(folder.group(1)), folder.group(2), int(folder.group(3))
            name = f"{release['release']}-{width}"
            catalogue = catalogues.setdefault(
                name,
                {
                    "description": f"Gemma Scope {'canonical ' if canonical else ''}residual SAEs, width {width} "
                    f"(SAELens release {release['release']})",
                    "model": gemma2_model(release["repo_id"]),
                    "sae_repo": release["repo_id"],
                    "configs": [],
                },
            )
            entry = {"layer": layer, "average_l0": l0, "path": sae["path"]}
            entry["neuronpedia"] = sources.get((release["repo_id"], sae["path"]))
            catalogue["configs"].append(entry)
    for catalogue in catalogues.values():
        catalogue["configs"].sort(key=lambda e: (e["layer"], e["average_l0"]))
    return catalogues


def gemma_scope_2() -> dict[str, dict]:
    """Gemma Scope 2 residual catalogues: resid_post_all per size, kind and width, and the resid_post sweeps known."""
    catalogues = {}
    for size, layers in GEMMA3_LAYERS.items():
        for kind in ("pt", "it"):
            repo = f"google/gemma-scope-2-{size}-{kind}"
            for width in GEMMA3_ALL_WIDTHS:
                catalogues[f"gemma-scope-2-{size}-{kind}-res-all-{width}"] = _gemma3_catalogue(
                    size, kind, repo, "resid_post_all", range(layers), width, GEMMA3_ALL_L0S, "every layer"
                )
            for width in GEMMA3_SWEEP_WIDTHS if size in GEMMA3_SWEEP_LAYERS else ():
                catalogues[f"gemma-scope-2-{size}-{kind}-res-{width}"] = _gemma3_catalogue(
                    size, kind, repo, "resid_post", GEMMA3_SWEEP_LAYERS[size], width, GEMMA3_SWEEP_L0S, "sweep layers"
                )
    return catalogues


def _gemma3_catalogue(size, kind, repo, folder, layers, width, l0s, what) -> dict:
    return {
        "description": f"Gemma Scope 2 residual SAEs of Gemma 3 {size} {kind}, {what}, width {width} ({folder})",
        "model": gemma3_model(size, kind),
        "sae_repo": repo,
        # Neuronpedia's Gemma Scope 2 sources do not say which L0 variant they serve: none is linked
        "configs": [
            {
                "layer": layer,
                "width": width,
                "path": f"{folder}/layer_{layer}_width_{width}_l0_{l0}",
                "neuronpedia": None,
            }
            for layer in layers
            for l0 in l0s
        ],
    }


def write(catalogues: dict[str, dict], output: Path) -> None:
    """One JSON file per catalogue, one config entry per line."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in output.glob("*.json"):
        stale.unlink()
    for name, catalogue in sorted(catalogues.items()):
        head = {key: value for key, value in catalogue.items() if key != "configs"}
        lines = [json.dumps(entry) for entry in catalogue["configs"]]
        text = json.dumps(head, indent=1)[:-2] + ',\n "configs": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
        assert json.loads(text) == catalogue
        (output / f"{name}.json").write_text(text)


def main() -> None:
    """Write every catalogue."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=Path, default=RELEASES)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    releases = json.loads(args.releases.read_text())
    catalogues = {**gemma_scope_1(releases), **gemma_scope_2()}
    write(catalogues, args.output)
    print(f"wrote {len(catalogues)} catalogues to {args.output}")


if __name__ == "__main__":
    main()
