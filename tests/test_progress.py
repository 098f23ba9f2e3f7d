"""What a long step shows while it runs: a progress bar with an ETA where its work can be counted, else one
`saezarr: ...` line saying what it is doing; builds, SAE downloads, `build --extend` and analyses, each through the
command line, and `--quiet` silencing all of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from clitools import run_cli, run_main
from hubtools import local_hub

from saezarr.store.reading import open_store
from saezarr.testing.synthetic import DEMO_CSV

ETA = re.compile(r"\[\d+:\d+<(?:\d+:\d+|\?)")  # tqdm's [elapsed<remaining]
HUB_REPO = "google/gemma-scope-2b-pt-res"  # a Gemma Scope name: it says the SAEs read resid_post


def _lines(stderr: str) -> list[str]:
    """stderr's lines, each redraw of a bar (after a carriage return) a line of its own."""
    return [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]


def _build(csv: Path, store: Path, config: Path, *extra: str, env: dict | None = None, run=run_cli):
    result = run("build", "--input", csv, "--output", store, "--config", config, "--device", "cpu", *extra, env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_a_build_says_what_it_loads_and_counts_fragments_with_an_eta(demo_config, tmp_path):
    model = json.loads(Path(demo_config).read_text())["model"]
    lines = _lines(_build(DEMO_CSV, tmp_path / "loud.zarr", demo_config).stderr)
    assert f"saezarr: loading model {model} (float32) on cpu" in lines
    assert any(line.startswith("saezarr build:") and "pass 1/1: loading 6 SAEs" in line for line in lines)
    assert any(line.startswith("saezarr build: 100%") and ETA.search(line) and "pass 1/1" in line for line in lines)
    assert _build(DEMO_CSV, tmp_path / "quiet.zarr", demo_config, "--quiet").stderr == ""


def test_sae_downloads_show_the_hubs_bars_unless_quiet(demo_config, tmp_path):
    config = json.loads(Path(demo_config).read_text())
    hub_config = tmp_path / "hub.json"
    hub_config.write_text(json.dumps({**config, "sae_repo": HUB_REPO}))
    with local_hub(Path(config["sae_repo"]), HUB_REPO) as endpoint:
        for quiet in (False, True):
            cache = tmp_path / f"hub-cache-{quiet}"
            env = {
                "HF_ENDPOINT": endpoint,
                "HF_HUB_CACHE": str(cache),
                "HF_HOME": str(tmp_path / "hf-home"),
                "TQDM_POSITION": "-1",  # the hub's bars show on a pipe too, not only on a terminal
            }
            store = tmp_path / f"hub-{quiet}.zarr"
            result = _build(DEMO_CSV, store, hub_config, *(["--quiet"] if quiet else []), env=env)
            assert len(list(cache.rglob("params.npz"))) == len(config["configs"])  # downloaded, not found
            downloaded = {
                line.split(":")[0] for line in _lines(result.stderr) if "params.npz: 100%" in line and ETA.search(line)
            }
            if quiet:
                assert result.stderr == ""
            else:
                assert len(downloaded) == len(config["configs"]), result.stderr


def test_an_extension_says_it_grows_the_store_and_shows_its_bar(demo_config, tmp_path):
    first = tmp_path / "first.csv"
    pd.read_csv(DEMO_CSV).head(30).to_csv(first, index=False)
    stores = {name: tmp_path / f"{name}.zarr" for name in ("loud", "quiet")}
    for store in stores.values():
        _build(first, store, demo_config, "--quiet", run=run_main)  # the stores to extend: what it shows is not asked
    before = open_store(stores["loud"]).sizes["fragment"]
    lines = _lines(_build(DEMO_CSV, stores["loud"], demo_config, "--extend").stderr)
    added = open_store(stores["loud"]).sizes["fragment"] - before
    assert added > 0
    assert (
        f"saezarr: growing {stores['loud']} by 0 configs and {added} fragments (its coordinates are rewritten)"
    ) in lines
    assert any(line.startswith("saezarr: loading model ") for line in lines)
    assert any(line.startswith("saezarr build: 100%") and ETA.search(line) for line in lines)
    assert _build(DEMO_CSV, stores["quiet"], demo_config, "--extend", "--quiet").stderr == ""


def test_an_analysis_shows_its_bars_unless_quiet(demo_config, tmp_path):
    store = tmp_path / "store.zarr"
    _build(DEMO_CSV, store, demo_config, "--quiet", run=run_main)
    runs = {}
    for quiet in (False, True):
        runs[quiet] = run_cli(
            "analyze", store, "--output", tmp_path / f"out-{quiet}", "--probe-permutations", "5",
            *(["--quiet"] if quiet else []), env={"SAEZARR_CACHE": str(tmp_path / f"cache-{quiet}")},
        )  # fmt: skip
        assert runs[quiet].returncode == 0, runs[quiet].stderr
    lines = _lines(runs[False].stderr)
    for bar in ("saezarr: analysing:", "saezarr: resampling (null, heldout, emergence):"):
        assert any(line.startswith(bar) and ETA.search(line) for line in lines), bar
    assert all(line.startswith("saezarr: note: ") for line in _lines(runs[True].stderr))  # notes are no progress
