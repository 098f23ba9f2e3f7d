"""A stand-in for the Hugging Face hub on this machine: an HTTP server answering HEAD and GET of
/REPO/resolve/REVISION/PATH from a local folder, as the hub's file endpoint does, so that real downloads run offline
(point HF_ENDPOINT at it)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # every file's revision


@contextlib.contextmanager
def local_hub(folder: Path, repo: str) -> Iterator[str]:
    """Serve folder's files as hub repository `repo` while open; yields the endpoint (HF_ENDPOINT's value)."""

    class Files(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def do_GET(self) -> None:
            self._answer(with_body=True)

        def _answer(self, with_body: bool) -> None:
            prefix = f"/{repo}/resolve/"
            path = None
            if self.path.startswith(prefix):
                _, _, relative = self.path[len(prefix) :].split("?")[0].partition("/")  # past the revision
                path = folder / relative
            if path is None or not path.is_file():
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def log_message(self, *args) -> None:  # the test's output is not the server's log
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
