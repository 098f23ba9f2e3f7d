"""Helpers for tests that drive the command line: run `python -m saezarr` (or its `main` in this process) and write
exact CSV bytes."""

from __future__ import annotations

import contextlib
import io
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


def run_main(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`saezarr ARGS` through `saezarr.cli.main` in this process, its exit code and output as run_cli gives them.

    The same command without a new interpreter: a build in a fresh process spends 4-5 s importing torch and
    transformers and tracing the model's code, which this process has done once. For tests of what a command does;
    tests of what a process does (signals, exit, imports, the hub's settings read at import) use run_cli."""
    import pytest

    from saezarr.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for key, value in {"TOKENIZERS_PARALLELISM": "false", **(env or {})}.items():
            patch.setenv(key, str(value))
        if cwd is not None:
            patch.chdir(cwd)
        try:
            code = main(list(map(str, args)))
        except SystemExit as exc:  # argparse's refusals; the exit code a process would end with
            code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(["saezarr", *map(str, args)], code, out.getvalue(), err.getvalue())


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write a CSV file's exact text."""
    path.write_bytes(text.encode(encoding))
    return path
