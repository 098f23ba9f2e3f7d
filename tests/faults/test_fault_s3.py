"""A store in a bucket keeps the guarantees of one on disk, against a real S3 server on loopback (moto): kill -9 then
--resume, a second writer refused, a dead writer's lock taken over once its lease ends (or with --force-unlock), a
server that answers 503 to some requests, a server that stops mid-build, and credentials it refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import run_cli, run_main
from faultkit import KillPoint, build_args, killed_at
from s3tools import assert_same_objects, storage_digest

from saezarr.store.format import LOCK
from saezarr.store.storage import open_storage
from saezarr.testing.s3_server import MotoServer, Proxy
from saezarr.testing.synthetic import DEMO_CSV


@pytest.fixture(scope="module")
def reference(demo_reference) -> Path:
    """The demo built on local disk in one go, with this suite's chunking (tests/conftest.py)."""
    return demo_reference


def test_kill_9_mid_build_then_resume_equals_an_uninterrupted_build(bucket, demo_config, reference, tmp_path):
    """Killed inside a PUT (a kill between units is the next test's first step): --resume finishes it bitwise."""
    point = KillPoint("inside the 40th PUT", "store.storage.object_store.ObjectStorage.put", "before", 40)
    url = f"s3://{bucket}/killed.zarr"
    assert killed_at(point, build_args(DEMO_CSV, url, demo_config), tmp_path / "log"), (
        "the build finished before the kill point"
    )
    assert open_storage(url).exists(LOCK), "the killed writer's lock is left behind"
    resumed = run_main(*build_args(DEMO_CSV, url, demo_config, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_objects(url, reference)
    assert not open_storage(url).exists(LOCK)


def _lock_record(host: str, expires_in: float) -> bytes:
    now = time.time()
    return json.dumps(
        {
            "pid": 4242,
            "host": host,
            "started": "2026-12-05T00:00:00+0000",
            "token": "elsewhere",
            "lease_s": 60,
            "expires": now + expires_in,
            "expires_utc": "then",
        }
    ).encode()


def test_a_live_writer_elsewhere_is_respected_until_its_lease_ends(bucket, demo_config, reference, tmp_path):
    """A writer on another node whose lease runs: --resume is refused in one line naming it, nothing written; once
    its lease has ended, --resume takes the lock over and finishes; --force-unlock takes it at once."""
    url = f"s3://{bucket}/held.zarr"
    assert killed_at(
        KillPoint("5th shard", "store.format.Store.write_shard", "after", 5),
        build_args(DEMO_CSV, url, demo_config),
        tmp_path / "log",
    )
    storage = open_storage(url)
    storage.put(LOCK, _lock_record("gpu-node-7", expires_in=600))
    before = storage_digest(url)
    refused = run_main(*build_args(DEMO_CSV, url, demo_config, "--resume"))
    assert refused.returncode != 0
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"saezarr: error: {url}: another build is writing this store (pid 4242 on gpu-node-7" in line
    assert "--force-unlock" in line
    assert storage_digest(url) == before

    storage.put(LOCK, _lock_record("gpu-node-7", expires_in=-1))  # the lease ended: its holder is gone
    resumed = run_main(*build_args(DEMO_CSV, url, demo_config, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_objects(url, reference)

    storage.put(LOCK, _lock_record("gpu-node-7", expires_in=600))
    forced = run_main(*build_args(DEMO_CSV, url, demo_config, "--resume", "--force-unlock"))
    assert forced.returncode == 0, forced.stderr
    assert not storage.exists(LOCK)


def test_two_writers_racing_to_create_one_store(bucket, demo_config, reference, tmp_path):
    """Two builds started together on one new URL: one builds the store, the other is refused in one line."""
    url = f"s3://{bucket}/raced.zarr"
    command = [sys.executable, "-m", "saezarr", *build_args(DEMO_CSV, url, demo_config)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    racers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    results = [(racer.wait(timeout=300), racer.stderr.read()) for racer in racers]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0).strip()
    assert len(loser.splitlines()) == 1, loser
    assert "another build is writing this store" in loser or "another build created a store there" in loser
    assert_same_objects(url, reference)


def test_a_server_answering_503_to_some_requests_is_retried_and_the_build_is_equal(
    moto, bucket, demo_config, reference
):
    url = f"s3://{bucket}/flaky.zarr"
    proxy = Proxy(moto.port, fail_share=0.1, seed=3).start()
    try:
        done = run_cli(*build_args(DEMO_CSV, url, demo_config), env=moto.env(proxy.endpoint))
    finally:
        proxy.stop()
    assert done.returncode == 0, done.stderr
    assert proxy.failed > 10, "the proxy answered too few requests with 503 to test retries"
    assert_same_objects(url, reference)


def test_a_server_that_stops_mid_build_is_one_line_and_a_later_resume_is_equal(moto, bucket, demo_config, reference):
    url = f"s3://{bucket}/stopped.zarr"
    proxy = Proxy(moto.port).start()
    command = [sys.executable, "-m", "saezarr", *build_args(DEMO_CSV, url, demo_config)]
    env = {**os.environ, **moto.env(proxy.endpoint), "TOKENIZERS_PARALLELISM": "false"}
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while proxy.counts["PUT"] < 60 and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proxy.stop()
    code = build.wait(timeout=180)
    stderr = build.stderr.read().strip()
    assert code == 1, stderr
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith(f"saezarr: error: {url}: "), stderr
    resumed = run_main(*build_args(DEMO_CSV, url, demo_config, "--resume", "--force-unlock"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_objects(url, reference)


def test_wrong_credentials_are_one_line_that_never_shows_the_secret(demo_config, tmp_path):
    with MotoServer(check_credentials=True) as strict:
        env = {**strict.env(), "AWS_SECRET_ACCESS_KEY": "s3cr3t-never-printed"}
        refused = run_cli(*build_args(DEMO_CSV, "s3://bucket/acts.zarr", demo_config), env=env, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert line == (
        "saezarr: error: --output s3://bucket/acts.zarr: access denied (403 Forbidden); check the credentials in "
        "the environment"
    ), line
    assert "s3cr3t" not in refused.stderr + refused.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_server_ignoring_conditional_writes_is_refused_unless_the_risk_is_accepted(
    moto, bucket, demo_config, reference
):
    """A lock needs If-None-Match: a server that ignores it is refused in one line naming the flag that accepts the
    risk, nothing written; with that flag the build runs and equals the reference."""
    url = f"s3://{bucket}/unconditional.zarr"
    proxy = Proxy(moto.port, strip_conditions=True).start()
    try:
        refused = run_cli(*build_args(DEMO_CSV, url, demo_config), env=moto.env(proxy.endpoint))
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert line == (
            f"saezarr: error: --output {url}: this object store ignores conditional writes (If-None-Match), so the "
            "store's lock cannot keep a second build out; use --unsafe-lock to build anyway, one build at a time"
        ), line
        assert list(open_storage(url).list_prefix("")) == []
        accepted = run_cli(*build_args(DEMO_CSV, url, demo_config, "--unsafe-lock"), env=moto.env(proxy.endpoint))
    finally:
        proxy.stop()
    assert accepted.returncode == 0, accepted.stderr
    assert_same_objects(url, reference)


def test_without_the_cloud_extra_a_url_is_one_line_naming_it(demo_config, tmp_path):
    """obstore missing (as in an install without `saezarr[cloud]`): one line naming the extra, nothing written."""
    script = "import sys; sys.modules['obstore'] = None; from saezarr.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", script, *build_args(DEMO_CSV, "s3://bucket/acts.zarr", demo_config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "saezarr: error: --output s3://bucket/acts.zarr: object-store URLs need the cloud extra: "
        "pip install 'saezarr[cloud]'"
    )
    assert list(tmp_path.iterdir()) == []
