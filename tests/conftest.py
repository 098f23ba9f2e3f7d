"""Shared fixtures: tiny generated Gemma-2 models and Gemma Scope-layout SAEs, made once per test session."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path


def _share_the_cores() -> None:
    """pytest-xdist runs a test process per core (`-n 2` on 2 cores): a compute thread per core in each of them, and in
    each command it starts, would oversubscribe the cores (measured: the suite took 17 % longer). Each worker gets
    its share of the cores, before torch is imported, and every command it starts inherits it (unless set already)."""
    from saezarr.machine import usable_cores  # imports neither torch nor numpy

    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # on the controller, which starts the workers, the variable is not set yet
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // int(workers))))


_share_the_cores()

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from madeonce import BuiltStore, TinyAssets, made_once  # noqa: E402
from s3tools import bucket, moto  # noqa: E402, F401  (fixtures: a loopback S3 server, a bucket on it)

from saezarr.testing.synthetic import DEMO_CSV, demo_configs, write_config_file, write_model, write_saes  # noqa: E402

TINY_LAYERS = 26
TINY_SAE_LAYERS = (0, 12, 25)
TINY_L0S = (6, 20)
TINY_WIDTH = 128


def demo_sentences() -> list[str]:
    return pd.read_csv(DEMO_CSV)["sentence"].tolist()


def make_tiny(root: Path) -> TinyAssets:
    sentences = demo_sentences()
    configs = tuple(demo_configs(TINY_SAE_LAYERS, TINY_L0S))
    write_model(root / "model", sentences, num_layers=TINY_LAYERS, hidden_size=32, intermediate_size=64, head_dim=16)
    write_saes(root / "saes", root / "model", configs, sentences, width=TINY_WIDTH)
    config_file = write_config_file(root / "config.json", str(root / "model"), str(root / "saes"), configs)
    return TinyAssets(root / "model", root / "saes", config_file, DEMO_CSV, configs, tuple(sentences))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyAssets:
    """A 26-layer tiny Gemma-2 with two SAEs on layers 0, 12 and 25, as local folders."""
    return made_once(tmp_path_factory, "tiny", make_tiny)


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory) -> Path:
    """The demo's generated assets (6-layer model, SAEs on layers 0, 2, 5), made in a private cache."""
    from saezarr.testing.synthetic import ensure_demo

    return made_once(tmp_path_factory, "demo-cache", ensure_demo)


@pytest.fixture(scope="session")
def demo_analysis(tmp_path_factory, demo_config) -> tuple[Path, str]:
    """The README's demo, built and analysed through the command line: the analysis folder and analyze's stdout."""
    from analyzetools import analyze_demo

    return made_once(tmp_path_factory, "demo-analysis", lambda folder: analyze_demo(folder, demo_config))


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """Stores of planted sentences (label 3 ends in a rare word) and of the same with shuffled labels, with
    residuals (tests/plantedtools.py)."""
    from plantedtools import make_planted

    return made_once(tmp_path_factory, "planted", make_planted)


# Stores that tests in several files compare with or read, built once per run (made_once): read only, a test that
# changes one copies it first.


def _tiny_store(tmp_path_factory, name: str, tiny: TinyAssets, chunk: int) -> BuiltStore:
    """The tiny model's store of the demo CSV built in a test process (`build()`), every option but the chunking its
    default."""
    from saezarr.build.pipeline import BuildOptions, build

    def make(folder: Path) -> BuiltStore:
        store = folder / "store.zarr"
        options = BuildOptions(
            input=tiny.csv, output=store, config_file=tiny.config_file, quiet=True, chunk_fragments=chunk
        )
        return BuiltStore(store, build(options))

    return made_once(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def tiny_store(tiny, tmp_path_factory) -> BuiltStore:
    """The tiny model's store of the demo CSV, chunks of 32 fragments, built by `build()`."""
    return _tiny_store(tmp_path_factory, "tiny-store", tiny, 32)


@pytest.fixture(scope="session")
def tiny_store_chunk64(tiny, tmp_path_factory) -> BuiltStore:
    """The tiny model's store of the demo CSV, chunks of 64 fragments, built by `build()`."""
    return _tiny_store(tmp_path_factory, "tiny-store-chunk64", tiny, 64)


@pytest.fixture(scope="session")
def demo_reference(demo_config, tmp_path_factory) -> Path:
    """An uninterrupted build of the demo CSV (540 fragments, 6 configs, 16-fragment chunks: 204 units) in a test
    process (`saezarr.cli.main`), the fault-injection suite's build arguments (tests/faults/faultkit.py)."""
    from faults.faultkit import build_args

    from saezarr.cli import main

    def make(folder: Path) -> Path:
        store = folder / "reference.zarr"
        assert main(build_args(DEMO_CSV, store, demo_config)) == 0
        assert not (store / "_saezarr" / "lock").exists()
        return store

    return made_once(tmp_path_factory, "demo-reference", make)


def _demo_store(tmp_path_factory, name: str, demo_config: Path, *options: str) -> Path:
    """`saezarr build --demo` with the session's generated demo assets, in a test process (`saezarr.cli.main`)."""
    from saezarr import cli

    def make(folder: Path) -> Path:
        path = folder / f"{name}.zarr"
        args = ["build", "--demo", "--config", str(demo_config), "--output", str(path), "--quiet", *options]
        assert cli.main(args) == 0
        return path

    return made_once(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def demo_complete(demo_config, tmp_path_factory) -> Path:
    """A complete demo store (6 configs, 512 features, chunks of 256 fragments: the last one short)."""
    return _demo_store(tmp_path_factory, "complete", demo_config)


@pytest.fixture(scope="session")
def demo_partial(demo_config, tmp_path_factory) -> Path:
    """A demo store whose build stopped after its first chunk of 64 fragments."""
    return _demo_store(tmp_path_factory, "partial", demo_config, "--max-chunks", "1", "--chunk-fragments", "64")


def _cli_store(tmp_path_factory, name: str, tiny, *extra: str, linked: bool = False) -> Path:
    """The tiny model's store of the demo CSV built by the command line (tests/analyzetools.py's build_store), with
    the config file that names Neuronpedia sources if linked."""
    from analyzetools import build_store, write_linked_config

    def make(folder: Path) -> Path:
        config = write_linked_config(folder / "config.json", tiny) if linked else tiny.config_file
        return build_store(folder, config, tiny.csv, *extra)

    return made_once(tmp_path_factory, name, make)


@pytest.fixture(scope="session")
def cli_store(tiny, tmp_path_factory) -> Path:
    """`saezarr build` of the tiny model and the demo CSV, every option its default."""
    return _cli_store(tmp_path_factory, "cli-store", tiny)


@pytest.fixture(scope="session")
def cli_store_chunk7(tiny, tmp_path_factory) -> Path:
    """`saezarr build` of the tiny model and the demo CSV in chunks of 7 fragments (sentences span chunk edges)."""
    return _cli_store(tmp_path_factory, "cli-store-chunk7", tiny, "--chunk-fragments", "7")


@pytest.fixture(scope="session")
def linked_store_chunk7(tiny, tmp_path_factory) -> Path:
    """As cli_store_chunk7, with the config file naming the tiny SAEs' Neuronpedia sources (analyzetools.SOURCES)."""
    return _cli_store(tmp_path_factory, "linked-store-chunk7", tiny, "--chunk-fragments", "7", linked=True)


# The test files that take longest, longest first (measured with `--durations=0`). With pytest-xdist's default
# `--dist load` (`-n 2`), each file's tests run on one worker, these files first: a module-scoped fixture (a store
# built once for a file's tests) is made once, not once per worker that gets some of the file's tests, and the long
# files do not end up alone at the end of the run while the other worker idles.
LONGEST_FILES = (
    "tests/build/test_cluster.py",
    "tests/faults/test_fault_s3.py",
    "tests/faults/test_fault_extend.py",
    "tests/faults/test_fault_crash.py",
    "tests/analysis/test_bench_analyze_script.py",
    "tests/test_progress.py",
    "tests/build/test_cluster_extend.py",
    "tests/build/test_bench_script.py",
    "tests/analysis/test_analysis_cache.py",
    "tests/analysis/test_analyze_cli.py",
    "tests/build/test_build_s3.py",
    "tests/models/test_hub_offline.py",
    "tests/build/test_extend.py",
    "tests/build/test_residual_sites.py",
    "tests/faults/test_fault_sigterm.py",
    "tests/analysis/test_analyze_metrics.py",
    "tests/build/test_resume.py",
    "tests/faults/test_fault_readers.py",
    "tests/build/test_residuals.py",
    "tests/analysis/test_headline.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """On the pytest-xdist controller, for `--dist load` (what `-n N` means): whole files as units of work, the
    longest first (LONGEST_FILES), then the others in collection order."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongestFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            for name in LONGEST_FILES:
                if name in self.workqueue:
                    self.workqueue.move_to_end(name, last=False)
                    break
            super()._assign_work_unit(node)

    return LongestFilesFirst(config, log)


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
