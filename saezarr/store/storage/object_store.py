"""Object stores as a storage: `s3://`, `gs://`, `az://`/`abfs://` through obstore (Rust's `object_store`), and
`http(s)://` read-only, for finished stores someone published.

Credentials and endpoints come from each cloud's standard environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
`AWS_ALLOW_HTTP`, `GOOGLE_APPLICATION_CREDENTIALS`, `AZURE_STORAGE_ACCOUNT_NAME`, ...), as obstore reads them. Every
object is written whole by one PUT, so a reader never sees a part of one; put-if-absent is `If-None-Match: *` and
compare-and-swap `If-Match` on the object's ETag (GCS generations and Azure ETags through the same calls). obstore
retries 5xx answers and dropped connections with exponential backoff; what still fails is one line naming the URL."""

from __future__ import annotations

import contextlib
import datetime
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from saezarr.errors import InputError, StorageUnavailable
from saezarr.store.storage import STORAGES, url_scheme
from saezarr.store.storage.base import ObjectStat, Storage

if TYPE_CHECKING:
    from saezarr.store.lease_lock import LeaseLock

CLOUD_EXTRA = "pip install 'saezarr[cloud]'"
WRITABLE_SCHEMES = ("s3", "gs", "az", "abfs", "abfss")
READ_ONLY_SCHEMES = ("http", "https")


class ObjectStorage(Storage):
    """The objects below one prefix of a bucket (or of a web server, read-only)."""

    def __init__(self, location: str):
        scheme = url_scheme(location)
        assert scheme is not None  # registered for URL schemes only
        self.scheme = scheme[0].lower()
        self._url = f"{self.scheme}://{location[scheme[1] :].lstrip('/').rstrip('/')}"
        bucket, _, prefix = self._url.split("://", 1)[1].partition("/")
        if not bucket or (not prefix and self.scheme in WRITABLE_SCHEMES):
            raise InputError(
                f"{self._url}: a URL with no path; name the store inside the bucket, e.g. {self.scheme}://BUCKET/name.zarr"
            )
        self.store = _open(self._url)

    @property
    def location(self) -> str:
        """The store's URL."""
        return self._url

    @property
    def read_only(self) -> bool:
        """True over HTTP: a published store is only read."""
        return self.scheme in READ_ONLY_SCHEMES

    @property
    def can_list(self) -> bool:
        """False over HTTP: a web server lists no folders."""
        return self.scheme not in READ_ONLY_SCHEMES

    def get(self, key: str) -> bytes:
        """The object's bytes (KeyError if there is none)."""
        return self.get_versioned(key)[0]

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and ETag."""
        import obstore

        with self._requests(key):
            result = obstore.get(self.store, key)
            return bytes(result.bytes()), str(result.meta["e_tag"])

    def put(self, key: str, value: bytes) -> None:
        """Write the object with one PUT: readers see the old object or the new one."""
        import obstore

        self._check_writable(key)
        with self._requests(key):
            obstore.put(self.store, key, value, use_multipart=False)

    def put_if_absent(self, key: str, value: bytes) -> bool:
        """PUT with `If-None-Match: *`; whether it wrote."""
        return self.compare_and_swap(key, None, value)

    def compare_and_swap(self, key: str, version: str | None, value: bytes) -> bool:
        """PUT with `If-Match: version` (None: `If-None-Match: *`); whether it wrote."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        self._check_writable(key)
        mode: Any = "create" if version is None else {"e_tag": version}
        try:
            with self._requests(key):
                obstore.put(self.store, key, value, mode=mode, use_multipart=False)
        except (AlreadyExistsError, PreconditionError):
            return False
        except KeyError:  # If-Match on an object that is gone
            return False
        return True

    def list_prefix(self, prefix: str) -> Iterator[str]:
        """The keys that start with prefix, sorted: one LIST request per 1000 keys below prefix's folder."""
        return iter(self.stats(prefix))

    def stats(self, prefix: str) -> dict[str, ObjectStat]:
        """Each object's size and time of writing by key, for the keys that start with prefix, sorted: from the LIST
        answers alone."""
        import obstore

        folder = prefix.rpartition("/")[0]
        with self._requests(prefix or "/"):
            found = {
                meta["path"]: _object_stat(meta)
                for batch in obstore.list(self.store, folder or None, chunk_size=1000)
                for meta in batch
                if meta["path"].startswith(prefix) and not meta["path"].rpartition("/")[2].startswith(".")
            }
        return dict(sorted(found.items()))

    def delete(self, key: str) -> None:
        """Remove the object (none there: nothing to do)."""
        import obstore

        self._check_writable(key)
        with contextlib.suppress(KeyError), self._requests(key):
            obstore.delete(self.store, key)

    def stat(self, key: str) -> ObjectStat:
        """The object's size and time of writing, from one HEAD (KeyError if there is none)."""
        import obstore

        with self._requests(key):
            return _object_stat(obstore.head(self.store, key))

    def lock(self, key: str) -> LeaseLock:
        """The lease lock whose record is the object at key, held by conditional writes."""
        from saezarr.store.lease_lock import LeaseLock

        return LeaseLock(self, key)

    def _check_writable(self, key: str) -> None:
        if self.read_only:
            raise InputError(f"{self._url}: an {self.scheme}:// store is read-only; saezarr cannot write {key} there")

    @contextlib.contextmanager
    def _requests(self, key: str) -> Iterator[None]:
        """Turn obstore's errors into KeyError (no such object) or one line naming the URL and the cause."""
        try:
            yield
        except Exception as exc:
            if "NoSuchBucket" in str(exc):
                raise InputError(f"{self._url}: the bucket does not exist") from None
            if isinstance(exc, FileNotFoundError):
                raise KeyError(key) from None
            translated = _translated(self._url, key, exc)
            if translated is None:
                raise
            raise translated from None


def _object_stat(meta: Any) -> ObjectStat:
    """An object's size and time of writing, from obstore's metadata of it (a HEAD or a LIST entry)."""
    return ObjectStat(int(meta["size"]), int(meta["last_modified"].timestamp() * 1e9))


def _translated(url: str, key: str, exc: Exception) -> Exception | None:
    """saezarr's error for an obstore failure (never quoting credentials), None for one that is not obstore's."""
    from obstore.exceptions import (
        AlreadyExistsError,
        BaseError,
        PermissionDeniedError,
        PreconditionError,
        UnauthenticatedError,
    )

    if isinstance(exc, (AlreadyExistsError, PreconditionError)):
        return None  # the caller's to handle
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or _status(exc) in (401, 403):
        return InputError(f"{url}: access denied ({_status_text(exc)}); check the credentials in the environment")
    if isinstance(exc, (BaseError, OSError, ConnectionError)):
        return StorageUnavailable(
            f"{url}: the object store failed on {key} ({_status_text(exc)}); rerun once it answers"
        )
    return None


def _status(exc: Exception) -> int | None:
    text = str(exc)
    for code in (401, 403, 404, 500, 502, 503):
        if f"{code} " in text:
            return code
    return None


def _status_text(exc: Exception) -> str:
    """What went wrong, from obstore's message: the HTTP status or the connection error, never headers."""
    text = " ".join(str(exc).split())
    for marker in ("Server returned non-2xx status code: ", "error sending request", "Connection refused"):
        where = text.find(marker)
        if where >= 0:
            part = text[where:].removeprefix("Server returned non-2xx status code: ")
            return part.split(":")[0].split("<")[0].strip()[:80]
    return type(exc).__name__


@functools.lru_cache(maxsize=64)
def _open(url: str) -> Any:
    """obstore's store for a URL, configured from the environment (cached: a client holds its connection pool)."""
    try:
        from obstore.store import from_url
    except ImportError:
        raise InputError(f"{url}: object-store URLs need the cloud extra: {CLOUD_EXTRA}") from None
    try:
        # a plain-http web server (a published store) is asked as it is; S3 endpoints follow AWS_ALLOW_HTTP
        client: Any = {"allow_http": True} if url.startswith("http://") else None
        return from_url(url, retry_config=_RETRIES, client_options=client)
    except Exception as exc:  # an unknown host, a malformed URL
        raise InputError(f"{url}: cannot open this URL ({' '.join(str(exc).split())[:160]})") from None


# obstore's own backoff for 5xx answers and dropped connections, bounded so a server that is gone fails in seconds
_RETRIES: Any = {
    "max_retries": 8,
    "retry_timeout": datetime.timedelta(seconds=60),
    "backoff": {
        "init_backoff": datetime.timedelta(milliseconds=50),
        "max_backoff": datetime.timedelta(seconds=5),
        "base": 2,
    },
}

for _scheme in (*WRITABLE_SCHEMES, *READ_ONLY_SCHEMES):
    STORAGES.register(_scheme, ObjectStorage)
