"""A storage from outside the package, registered through an entry point, runs through the real commands: `build`,
`info` and `export-npz` on a `toyfs://` URL give what they give on a local folder, and a URL whose scheme no storage
handles is still refused in one line."""

from __future__ import annotations

import hashlib

import numpy as np
from clitools import run_cli
from plugintools import with_plugins, write_plugin

TOYPLUGIN = '''
"""A toy storage: each object one file, named by the sha1 of its key, holding the key's line and then the value."""

import contextlib
import fcntl
import hashlib
import os
import uuid

from saezarr.store.storage import url_scheme
from saezarr.store.storage.base import ObjectStat, Storage
from saezarr.testing.memory_storage import RecordLock


class ToyFS(Storage):
    def __init__(self, url):
        self.url = url
        self.root = url[url_scheme(url)[1]:]
        os.makedirs(self.root, exist_ok=True)

    @property
    def location(self):
        return self.url

    def _file(self, key):
        return os.path.join(self.root, hashlib.sha1(key.encode()).hexdigest())

    def _read(self, key):
        try:
            with open(self._file(key), "rb") as file:
                return file.read().partition(b"\\n")[2]
        except FileNotFoundError:
            raise KeyError(key) from None

    def _temp(self, key, value):
        temp = os.path.join(self.root, f".{uuid.uuid4().hex}")
        with open(temp, "wb") as file:
            file.write(key.encode() + b"\\n" + value)
        return temp

    def get(self, key):
        return self._read(key)

    def get_versioned(self, key):
        data = self._read(key)
        return data, hashlib.sha256(data).hexdigest()

    def put(self, key, value):
        os.replace(self._temp(key, bytes(value)), self._file(key))

    def put_if_absent(self, key, value):
        temp = self._temp(key, bytes(value))
        try:
            os.link(temp, self._file(key))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)

    def compare_and_swap(self, key, version, value):
        with open(os.path.join(self.root, ".cas"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                current = self.get_versioned(key)[1]
            except KeyError:
                current = None
            if current != version:
                return False
            self.put(key, value)
            return True

    def list_prefix(self, prefix):
        keys = []
        for name in os.listdir(self.root):
            if not name.startswith("."):
                with contextlib.suppress(FileNotFoundError), open(os.path.join(self.root, name), "rb") as file:
                    key = file.readline()[:-1].decode()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def delete(self, key):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(key))

    def stat(self, key):
        try:
            info = os.stat(self._file(key))
        except FileNotFoundError:
            raise KeyError(key) from None
        return ObjectStat(info.st_size - len(key.encode()) - 1, info.st_mtime_ns)

    def lock(self, key):
        return RecordLock(self, key)
'''


def test_a_storage_plugin_runs_build_info_and_export(tiny, tmp_path):
    """build, info and export-npz on toyfs:// give the exports of the same build on disk, and nothing of the toy
    store is a folder zarr could open by path: every object is one sha1-named file."""
    env = with_plugins(
        write_plugin(tmp_path / "plugins", "toyplugin", TOYPLUGIN, {"storage": {"toyfs": "toyplugin:ToyFS"}})
    )
    url = f"toyfs://{tmp_path}/toy-store"
    common = ("--input", tiny.csv, "--config", tiny.config_file, "--chunk-fragments", "64", "--quiet")
    for output in (url, tmp_path / "local.zarr"):
        built = run_cli("build", "--output", output, *common, env=env)
        assert built.returncode == 0, built.stderr

    info = run_cli("info", url, env=env)
    assert info.returncode == 0, info.stderr
    assert f"store        {url} " in info.stdout
    assert "6 complete" in info.stdout

    for store, folder in ((url, "toy-npz"), (tmp_path / "local.zarr", "local-npz")):
        exported = run_cli("export-npz", store, "--output", tmp_path / folder, env=env)
        assert exported.returncode == 0, exported.stderr
    names = sorted(path.name for path in (tmp_path / "local-npz").glob("*.npz"))
    assert len(names) == len(tiny.configs)
    assert sorted(path.name for path in (tmp_path / "toy-npz").glob("*.npz")) == names
    for name in names:
        toy, local = np.load(tmp_path / "toy-npz" / name), np.load(tmp_path / "local-npz" / name)
        assert sorted(toy.files) == sorted(local.files)
        for field in local.files:
            np.testing.assert_array_equal(toy[field], local[field])

    files = sorted(path.name for path in (tmp_path / "toy-store").iterdir() if not path.name.startswith("."))
    assert hashlib.sha1(b"zarr.json").hexdigest() in files
    assert all(len(name) == 40 for name in files)


def test_a_url_of_an_unknown_scheme_is_still_refused(tiny, tmp_path):
    """A scheme that no registered storage handles gets the one-line refusal, before anything is computed."""
    refused = run_cli("build", "--output", "nostore://bucket/x", "--input", tiny.csv, "--config", tiny.config_file)
    assert refused.returncode == 2
    assert "--output nostore://bucket/x: no storage handles nostore:// URLs (known: s3, gs, az" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
