"""A real S3-compatible server on loopback for tests and benchmarks (moto's server, `moto[server]`, each write
applied whole as S3 applies it), and a proxy in front of it that counts requests, answers some with 503, or stops
answering."""

from __future__ import annotations

import argparse
import http.client
import http.server
import importlib.util
import io
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen | None = None, timeout_s: float = 30.0) -> None:
    """Wait until something listens on the loopback port (or the process serving it has exited: an error)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout_s} s")


class MotoServer:
    """moto's S3 server on a free loopback port, one write at a time, with the environment that points obstore (and
    boto) at it."""

    def __init__(self, check_credentials: bool = False, switch_interval_s: float | None = None):
        self.port = free_port()
        self.check_credentials = check_credentials
        self.switch_interval_s = switch_interval_s  # the server's GIL switch interval: small, its threads interleave
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The server's URL."""
        return f"http://{HOST}:{self.port}"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """AWS variables for a client of this server (or of a proxy in front of it at `endpoint`)."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": "saezarr-test",
            "AWS_SECRET_ACCESS_KEY": "saezarr-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> MotoServer:
        """Start the server and wait until it listens."""
        if importlib.util.find_spec("moto") is None:
            raise RuntimeError("moto's server is not installed: pip install 'moto[server]'")
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0" if self.check_credentials else "inf"}
        command = [sys.executable, "-m", __name__, "--port", str(self.port)]
        if self.switch_interval_s is not None:
            command += ["--switch-interval", str(self.switch_interval_s)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_listening(self.port, self.process)
        return self

    def make_bucket(self, name: str) -> str:
        """Create a bucket; its name."""
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10):
            pass
        return name

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Proxy:
    """An HTTP proxy on loopback in front of a server: counts requests by kind, answers a share of them with 503
    (`fail_share`), and can stop answering altogether (`stop`)."""

    def __init__(self, upstream_port: int, fail_share: float = 0.0, seed: int = 0, strip_conditions: bool = False):
        self.upstream_port = upstream_port
        self.strip_conditions = strip_conditions  # drop If-Match/If-None-Match: a server that ignores them
        self.fail_share = fail_share
        self.random = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []  # (kind, path) of each request, in order
        self.failed = 0  # requests answered 503
        self.stopped = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer((HOST, self.port), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The proxy's URL."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> Proxy:
        """Serve in a thread."""
        self.thread.start()
        wait_listening(self.port)
        return self

    def stop(self) -> None:
        """Stop answering (connections kept alive are dropped too) and close the port."""
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        """Start counting afresh."""
        with self.lock:
            self.counts.clear()
            self.requests.clear()
            self.bytes_in = self.bytes_out = 0

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                if proxy.stopped:  # as a server that is gone: the connection drops without an answer
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                kind = "LIST" if self.command == "GET" and "list-type" in self.path else self.command
                with proxy.lock:
                    proxy.counts[kind] += 1
                    proxy.requests.append((kind, self.path))
                    proxy.bytes_in += len(body)
                    fail = proxy.random.random() < proxy.fail_share
                if fail:
                    with proxy.lock:
                        proxy.failed += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream = http.client.HTTPConnection(HOST, proxy.upstream_port, timeout=60)
                try:
                    dropped = ("connection", "if-match", "if-none-match") if proxy.strip_conditions else ("connection",)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                with proxy.lock:
                    proxy.bytes_out += len(data)
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                # a HEAD answer has no body but the length of the object's
                object_length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", object_length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        return Handler


@contextmanager
def s3_server(check_credentials: bool = False) -> Iterator[MotoServer]:
    """A running moto server, stopped afterwards."""
    with MotoServer(check_credentials) as server:
        yield server


class OneWriteAtATime:
    """WSGI middleware that applies each write request whole: S3 checks a write's If-Match or If-None-Match when the
    write lands, but moto checks it and then writes, and on its threaded server another write can land in between,
    so two compare-and-swaps of one version could both succeed. The body is read before the lock is taken, so a slow
    or dying client holds up no one."""

    WRITES = frozenset({"PUT", "POST", "DELETE"})

    def __init__(self, app: Callable[..., Iterable[bytes]]):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] not in self.WRITES:
            return self.app(environ, start_response)
        from werkzeug.wsgi import get_input_stream

        body = get_input_stream(environ).read()
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ.update(
            {"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": False, "CONTENT_LENGTH": str(len(body))}
        )
        with self.lock:
            answer = self.app(environ, start_response)
            try:
                return [b"".join(answer)]
            finally:
                getattr(answer, "close", lambda: None)()


def serve(port: int, switch_interval_s: float | None = None) -> None:
    """Serve moto's S3 (and its other services) on loopback at port, one write at a time, until terminated."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)
    os.environ.setdefault("MOTO_PORT", str(port))  # moto builds some URLs of its answers from it
    run_simple(HOST, port, OneWriteAtATime(DomainDispatcherApplication(create_backend_app)), threaded=True)


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description=serve.__doc__)
    arguments.add_argument("--port", type=int, required=True)
    arguments.add_argument("--switch-interval", type=float, default=None)
    options = arguments.parse_args()
    serve(options.port, options.switch_interval)
