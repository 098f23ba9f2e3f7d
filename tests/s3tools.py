"""A loopback S3 server (moto) for the tests that put stores in a bucket: one per test session and worker, each
test in a bucket of its own."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from saezarr.testing.s3_server import MotoServer

_BUCKETS = itertools.count()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto_server on loopback, its AWS variables set in this process (and so in the CLI runs it starts)."""
    server = MotoServer().start()
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    """A new, empty bucket on the session's server: its name."""
    return moto.make_bucket(f"saezarr-test-{os.getpid()}-{next(_BUCKETS)}")
