"""`scripts/bench_analyze.py` runs from a checkout, compares analyze with the legacy loop and records its figures;
its timings are never asserted here."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
from clitools import REPO

SCRIPT = REPO / "scripts" / "bench_analyze.py"
MARKER = "<!-- newest first: bench_analyze.py inserts new results below this line -->"


def _module():
    spec = importlib.util.spec_from_file_location("bench_analyze", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_go_into_an_analyze_section_newest_first_and_leave_other_sections_alone(tmp_path):
    bench = _module()
    record = tmp_path / "BENCHMARKS.md"
    build_part = "# saezarr build benchmarks\n\n<!-- newest first: bench_build.py inserts new results below this line -->\n\n## old build run\n"
    record.write_text(build_part)
    bench.write_markdown(record, "## first\n")
    bench.write_markdown(record, "## second\n")
    text = record.read_text()
    assert text.startswith(build_part)
    assert text.count("# analyze\n") == 1 and text.count(MARKER) == 1
    assert text.index(MARKER) < text.index("## second") < text.index("## first")


def test_scale_store_takes_the_real_configs_layout_all_or_evenly_spread():
    bench = _module()
    real = json.loads(bench.REAL_CONFIGS.read_text())["configs"]
    layout = [{key: entry[key] for key in ("layer", "average_l0", "path")} for entry in real]
    configs, layers = bench.scale_layout(135)
    assert configs == layout and layers == 26
    configs, layers = bench.scale_layout(12)
    assert len(configs) == 12 and layers == 26
    assert configs[0] == layout[0] and configs[-1] == layout[-1]
    assert all(c in layout for c in configs) and len({c["path"] for c in configs}) == 12
    assert len({c["layer"] for c in configs}) == 12, "spread over the layers, not bunched in the first ones"


def test_scale_configs_outside_the_real_ones_are_refused():
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--scale-configs", "136"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 2 and "--scale-configs must be 1-135" in run.stderr


@pytest.mark.slow
def test_quick_analyze_benchmark_runs_and_records_its_figures(tmp_path):
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("# results\n\nolder text\n")
    command = [sys.executable, str(SCRIPT), "--quick", "--cache", str(tmp_path / "cache"), "--out-md", str(record)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    text = record.read_text()
    assert text.startswith("# results\n\nolder text\n"), "earlier results must be kept"
    entry = text.split(MARKER, 1)[1]
    assert "analyze, quick run" in entry and "- command: `python " in entry and "- machine: nproc" in entry
    rows = {
        name: (ratio, status)
        for name, ratio, status in re.findall(
            r"^(\S[^|]*?) +\|[^|]+\|[^|]+\| ([^|]+?) +\|[^|]+\| (MET|MISS)$", entry, flags=re.MULTILINE
        )
    }
    assert set(rows) == {
        "legacy analysis / analyze (whole processes)",
        "ranked tables: max abs diff, numeric columns",
        "peak RSS of analyze, 4N / N",
        "cold analysis / plain read of the chunks",
        "re-run (cache) / first run, whole processes",
        "re-run (cache) / first run, after imports",
        "re-run (cache) / first run, 12 SAEs",
    }, entry
    for name, (ratio, _) in rows.items():
        if name.startswith("ranked tables"):
            continue
        assert float(ratio.rstrip("x")) > 0, (name, ratio)
    # not a timing: the legacy loop and analyze rank the same features with the same numbers
    common, legacy_rows = map(
        int, re.match(r"(\d+)/(\d+) rows", rows["ranked tables: max abs diff, numeric columns"][0]).groups()
    )
    assert common == legacy_rows > 0
    assert rows["ranked tables: max abs diff, numeric columns"][1] == "MET", entry
    assert re.search(r"0 only legacy, 0 only analyze", entry) and "legacy columns first and in order True" in entry
    assert run.stdout.count("legacy analysis / analyze (whole processes)") == 1, "the table is printed too"
    details = entry.splitlines()
    assert any(
        line.startswith("scale: 12 generated SAEs in the layout of gemma_scope_16k_configurations.json")
        for line in details
    )
    assert any(
        re.match(r"scale store: 12 SAEs x 2048 features, 48 sentences, \d+ token fragments", line) for line in details
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baseline-src", "."], "--baseline-src and --repeats go with --resampling-only"),
        (["--resampling-only", "--baseline-src", "tests"], "--baseline-src: tests holds no saezarr/ package"),
        (["--resampling-only", "--repeats", "0"], "--repeats must be at least 1, got 0"),
    ],
)
def test_baseline_and_repeats_options_are_checked_before_anything_runs(extra, message):
    run = subprocess.run([sys.executable, str(SCRIPT), *extra], capture_output=True, text=True, check=False, cwd=REPO)
    assert run.returncode == 2 and message in run.stderr
