"""The runner: one way a unit is computed, written and marked, whichever executor runs the tasks."""

from __future__ import annotations

from pathlib import Path

from faults.faultkit import assert_same_store

from saezarr.build.pipeline import BuildOptions, BuildSummary, build, create_planned_store
from saezarr.build.planning import plan_build
from saezarr.build.runner import InProcess, Runner
from saezarr.execution.caches import process_cache
from saezarr.testing.synthetic import DEMO_CSV

CHUNK = 64


def _options(store: Path, config: Path) -> BuildOptions:
    return BuildOptions(input=DEMO_CSV, output=store, config_file=config, chunk_fragments=CHUNK, quiet=True)


class _Reversed(InProcess):
    """Runs each pass's tasks last chunk first."""

    def results(self, spec, fragments, work, bar):
        return super().results(spec, fragments, [(pass_, tasks[::-1]) for pass_, tasks in work], bar)


def test_an_executor_of_its_own_builds_the_same_store(demo_config, tmp_path):
    reference = tmp_path / "reference.zarr"
    build(_options(reference, demo_config))
    plan = plan_build(_options(tmp_path / "reversed.zarr", demo_config))
    assert plan.fragments is not None
    store = create_planned_store(plan)
    summary = BuildSummary(plan.output, len(plan.configs), len(plan.fragments), plan.n_sentences)
    Runner(plan, store, summary, _Reversed(quiet=True)).run()
    assert summary.units_written == summary.units_total == store.done_matrix().size
    assert summary.model_passes == 1 and summary.sae_loads == len(plan.saes)
    assert_same_store(tmp_path / "reversed.zarr", reference)


def test_a_build_in_this_process_gives_its_model_and_encoders_back(demo_config, tmp_path):
    summary = build(_options(tmp_path / "s.zarr", demo_config))
    assert summary.complete and summary.sae_loads > 0
    for slot in ("model", "encoders", "host buffers"):
        assert process_cache.count(slot) == 0, f"{slot} still held"
