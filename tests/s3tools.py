"""A loopback S3 server (moto) for the tests that put stores in a bucket: one per test session and worker, each
test in a bucket of its own."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from saezarr.store.format import LOCK
from saezarr.store.storage import open_storage
from saezarr.testing.s3_server import MotoServer

_BUCKETS = itertools.count()


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's S3 server on loopback, its AWS variables set in this process (and so in the CLI runs it starts)."""
    server = MotoServer().start()
    with clients_of(server):
        yield server
    server.stop()


@contextmanager
def clients_of(server: MotoServer) -> Iterator[None]:
    """This process's AWS variables point at the server (and so do the CLI runs it starts), restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        yield


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    """A new, empty bucket on the session's server: its name."""
    return moto.make_bucket(f"saezarr-test-{os.getpid()}-{next(_BUCKETS)}")


def storage_digest(location: str | Path) -> dict[str, str]:
    """sha256 of every object of the store at location (a path or a URL) by key, the root zarr.json without its
    random store_id, the writer lock's record left out: two builds of the same store digest alike wherever they are."""
    storage = open_storage(location)
    digest = {}
    for key in storage.list_prefix(""):
        if key == LOCK:
            continue
        data = storage.get(key)
        if key == "zarr.json":
            meta = json.loads(data)
            meta.get("attributes", {}).pop("store_id", None)
            data = json.dumps(meta, sort_keys=True).encode()
        digest[key] = hashlib.sha256(data).hexdigest()
    return digest


def assert_same_objects(location: str | Path, reference: str | Path) -> None:
    """The store at location holds exactly the reference's objects, byte for byte (store_id aside)."""
    ours, theirs = storage_digest(location), storage_digest(reference)
    problems = [f"missing {key}" for key in sorted(set(theirs) - set(ours))]
    problems += [f"extra {key}" for key in sorted(set(ours) - set(theirs))]
    problems += [f"bytes differ: {key}" for key in sorted(set(ours) & set(theirs)) if ours[key] != theirs[key]]
    assert not problems, f"{location} differs from {reference}:\n" + "\n".join(problems[:30])
