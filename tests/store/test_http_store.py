"""A finished store published on a plain web server (`python -m http.server` on loopback) is read as it is read on
disk: `info`, `export-npz` and `open_store` over http://, though a web server lists no folders."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from clitools import run_cli, run_main

import saezarr
from saezarr.testing.s3_server import HOST, free_port, wait_listening
from saezarr.testing.synthetic import DEMO_CSV


def test_a_published_store_reads_over_http_as_on_disk(demo_config, tmp_path):
    store = tmp_path / "site" / "demo.zarr"
    built = run_main("build", "--input", DEMO_CSV, "--output", store, "--config", demo_config, "--quiet")
    assert built.returncode == 0, built.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", HOST, "-d", str(tmp_path / "site")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, server)
        url = f"http://{HOST}:{port}/demo.zarr"
        info = run_cli("info", url)
        assert info.returncode == 0, info.stderr
        assert f"store        {url} " in info.stdout and "6 complete" in info.stdout
        for source, target in ((url, tmp_path / "npz-http"), (store, tmp_path / "npz-disk")):
            done = run_cli("export-npz", source, "--output", target)
            assert done.returncode == 0, done.stderr
        names = sorted(path.name for path in (tmp_path / "npz-disk").iterdir())
        assert names == sorted(path.name for path in (tmp_path / "npz-http").iterdir())
        for name in names:
            assert (tmp_path / "npz-http" / name).read_bytes() == (tmp_path / "npz-disk" / name).read_bytes()
        np.testing.assert_array_equal(
            saezarr.open_store(url)["activations"].values, saezarr.open_store(store)["activations"].values
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
