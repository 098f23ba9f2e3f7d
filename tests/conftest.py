"""Shared fixtures: tiny generated Gemma-2 models and Gemma Scope-layout SAEs, made once per test session."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from saezarr.configs import SAEConfig
from saezarr.synthetic import DEMO_CSV, demo_configs, write_config_file, write_model, write_saes

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
    from saezarr.synthetic import ensure_demo

    return ensure_demo(tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """Stores of planted sentences (label 3 ends in a rare word) and of the same with shuffled labels, with
    residuals (tests/plantedtools.py)."""
    from plantedtools import make_planted

    return make_planted(tmp_path_factory.mktemp("planted"))


# the fault-injection suite's counts from pytest-xdist workers; the controller loads this conftest, not tests/faults'
FAULT_REPORT: Counter = Counter()
FAULT_NOTES: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the pytest-xdist controller: add a finished worker's fault-injection counts and notes."""
    output = getattr(node, "workeroutput", {})
    FAULT_REPORT.update(output.get("saezarr_fault_report", {}))
    FAULT_NOTES.extend(output.get("saezarr_fault_notes", []))


def pytest_terminal_summary(terminalreporter):
    """Under pytest-xdist, the fault-injection summary of every worker (a serial run prints its own)."""
    if not FAULT_REPORT and not FAULT_NOTES:
        return
    terminalreporter.section("saezarr fault injection")
    for key in sorted(FAULT_REPORT):
        terminalreporter.write_line(f"{key}: {FAULT_REPORT[key]}")
    for line in FAULT_NOTES:
        terminalreporter.write_line(line)
