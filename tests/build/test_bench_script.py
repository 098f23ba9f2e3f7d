"""`scripts/bench_build.py` runs from a checkout and records its figures; its timings are never asserted here."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from clitools import REPO


@pytest.mark.slow
def test_storage_benchmark_runs_and_records_its_figures(tmp_path):
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("# results\n\nolder text\n")
    command = [
        sys.executable,
        str(REPO / "scripts" / "bench_build.py"),
        "--smoke",
        "--workloads",
        "3",
        "--cache",
        str(tmp_path / "cache"),
        "--out-md",
        str(record),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    text = record.read_text()
    assert text.startswith("# results\n\nolder text\n"), "earlier results must be kept"
    entry = text.split("<!-- newest first: bench_build.py inserts new results below this line -->", 1)[1]
    assert "smoke run, workloads 3" in entry and "- command: `python " in entry
    figures = {
        name: float(value)
        for name, value in re.findall(
            r"^  (bytes per nonzero|store/seed npz|write path/savez|"
            r"RSS 4N/N) +([0-9.]+)",
            entry,
            flags=re.MULTILINE,
        )
    }
    assert set(figures) == {"bytes per nonzero", "store/seed npz", "write path/savez", "RSS 4N/N"}, entry
    assert all(value > 0 for value in figures.values())
    passes = re.search(r"model passes \(BuildSummary\) +(\d+) +\(planned SAE passes (\d+)", entry)
    assert passes and passes.group(1) == passes.group(2) == "1"
    assert "Workload 1" not in entry and "build/codec floor" not in entry, "only the selected workload is reported"
