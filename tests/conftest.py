"""Shared fixtures: tiny generated Gemma-2 models and Gemma Scope-layout SAEs, made once per test session."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from s3tools import bucket, moto  # noqa: F401  (fixtures: a loopback S3 server, a bucket on it)

from saezarr.inputs.configs import SAEConfig
from saezarr.testing.synthetic import DEMO_CSV, demo_configs, write_config_file, write_model, write_saes

TINY_LAYERS = 26
TINY_SAE_LAYERS = (0, 12, 25)
TINY_L0S = (6, 20)
TINY_WIDTH = 128


@dataclass(frozen=True)
class TinyAssets:
    """A generated model folder, SAE folder, config file and labeled CSV."""

    model: Path
    saes: Path
    config_file: Path
    csv: Path
    configs: tuple[SAEConfig, ...]
    sentences: tuple[str, ...]


def demo_sentences() -> list[str]:
    return pd.read_csv(DEMO_CSV)["sentence"].tolist()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyAssets:
    """A 26-layer tiny Gemma-2 with two SAEs on layers 0, 12 and 25, as local folders."""
    root = tmp_path_factory.mktemp("tiny")
    sentences = demo_sentences()
    configs = tuple(demo_configs(TINY_SAE_LAYERS, TINY_L0S))
    write_model(root / "model", sentences, num_layers=TINY_LAYERS, hidden_size=32, intermediate_size=64, head_dim=16)
    write_saes(root / "saes", root / "model", configs, sentences, width=TINY_WIDTH)
    config_file = write_config_file(root / "config.json", str(root / "model"), str(root / "saes"), configs)
    return TinyAssets(root / "model", root / "saes", config_file, DEMO_CSV, configs, tuple(sentences))


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory) -> Path:
    """The demo's generated assets (6-layer model, SAEs on layers 0, 2, 5), made in a private cache."""
    from saezarr.testing.synthetic import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="session")
def demo_analysis(tmp_path_factory, demo_config) -> tuple[Path, str]:
    """The README's demo, built and analysed through the command line: the analysis folder and analyze's stdout."""
    from analyzetools import analyze_demo

    return analyze_demo(tmp_path_factory.mktemp("demo-analysis"), demo_config)


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """Stores of planted sentences (label 3 ends in a rare word) and of the same with shuffled labels, with
    residuals (tests/plantedtools.py)."""
    from plantedtools import make_planted

    return make_planted(tmp_path_factory.mktemp("planted"))


def pytest_configure(config):
    # what the fault-injection suite did: tests/faults/conftest.py adds its counts and notes, here or, on a
    # pytest-xdist worker, through the controller; printed once at the end of the run
    config.saezarr_faults = {"report": Counter(), "notes": []}


def add_fault_results(config, results: dict | None) -> None:
    """Add a process's fault-injection counts and notes to the run's summary."""
    if results:
        config.saezarr_faults["report"].update(results["report"])
        config.saezarr_faults["notes"].extend(results["notes"])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the pytest-xdist controller: a finished worker's fault-injection counts and notes."""
    add_fault_results(node.config, getattr(node, "workeroutput", {}).get("saezarr_faults"))


def pytest_terminal_summary(terminalreporter):
    """What the fault-injection suite did, if it ran."""
    faults = terminalreporter.config.saezarr_faults
    if not faults["report"] and not faults["notes"]:
        return
    terminalreporter.section("saezarr fault injection")
    for key in sorted(faults["report"]):
        terminalreporter.write_line(f"{key}: {faults['report'][key]}")
    for line in faults["notes"]:
        terminalreporter.write_line(line)
