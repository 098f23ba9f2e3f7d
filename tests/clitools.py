"""Helpers for tests that drive the command line: run `python -m saezarr` and write exact CSV bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run `python -m saezarr ARGS` in a subprocess and capture its output."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "saezarr", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a CSV file's exact text."""
    path.write_bytes(text.encode(encoding))
    return path
