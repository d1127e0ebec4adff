"""A stand-in for the Hugging Face Hub on 127.0.0.1, for download tests without the internet.

`FakeHub()` serves, over HTTP, the endpoints huggingface_hub uses to download: the model info
(`GET /api/models/ORG/NAME[/revision/REV]`: commit and file list) and the files (`HEAD` and `GET
/ORG/NAME/resolve/REV/PATH`, with `X-Repo-Commit`, `ETag`, `Content-Length` and `Range` requests
answered 206). Unknown repositories, revisions and files get the Hub's 404 with its `X-Error-Code`
(RepoNotFound, RevisionNotFound, EntryNotFound); a repository added with `private=True` answers
401 unless the request carries `Authorization: Bearer <token>`. `drop[name] = n` makes the first
GET of that file send n bytes of it and close the connection (a network failure mid-file). Every
request is recorded in `requests` as (method, path, headers with lower-case names). Point
huggingface_hub at it with HF_ENDPOINT=`hub.url`; use it as a context manager.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str, dict]] = []
        self.drop: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], revisions=("main",),
                 private_token: str | None = None) -> str:
        """Serve `files` (name -> bytes) as one commit of `repo_id`, which the branch or tag names
        `revisions` point to; returns the commit id."""
        commit = hashlib.sha1(repr(sorted((n, hashlib.sha256(b).hexdigest()) for n, b in files.items())).encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, {"commits": {}, "refs": {}, "token": private_token})
        repo["commits"][commit] = dict(files)
        repo["refs"].update({name: commit for name in revisions})
        return commit

    def gets(self, name: str) -> list[dict]:
        """The headers of every GET of the file `name`."""
        return [headers for method, path, headers in self.requests if method == "GET" and path.endswith("/" + name)]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # --- answering ------------------------------------------------------------------------------

    def _error(self, handler, status: int, code: str, message: str, body: bool) -> None:
        payload = json.dumps({"error": message}).encode()
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _commit(self, handler, repo_id: str, revision: str, body: bool):
        repo = self.repos.get(repo_id)
        if repo is None or (repo["token"] and handler.headers.get("Authorization") != f"Bearer {repo['token']}"):
            self._error(handler, 401 if repo is None or repo["token"] else 404, "RepoNotFound",
                        "Repository not found", body)
            return None, None
        commit = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        if commit is None:
            self._error(handler, 404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
            return None, None
        return commit, repo["commits"][commit]

    def _answer(self, handler, body: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append((handler.command, path, {k.lower(): v for k, v in handler.headers.items()}))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = "/".join(parts[2:4])
            revision = "/".join(parts[5:]) if len(parts) > 5 and parts[4] == "revision" else "main"
            commit, files = self._commit(handler, repo_id, revision, body)
            if commit is None:
                return
            info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "downloads": 0, "likes": 0,
                    "tags": [], "siblings": [{"rfilename": name} for name in sorted(files)]}
            self._send(handler, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            commit, files = self._commit(handler, repo_id, revision, body)
            if commit is None:
                return
            if name not in files:
                self._error(handler, 404, "EntryNotFound", f"{name} does not exist", body)
                return
            self._send_file(handler, files[name], commit, name, body)
            return
        self._error(handler, 404, "NotFound", "no such endpoint", body)

    def _send(self, handler, payload: bytes, headers: dict, body: bool) -> None:
        handler.send_response(200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _send_file(self, handler, data: bytes, commit: str, name: str, body: bool) -> None:
        start = 0
        ranged = handler.headers.get("Range")
        if ranged and ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[len("bytes="):-1])
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if not body:
            return
        dropped = self.drop.pop(name, None) if not start else None
        handler.wfile.write(data[start:] if dropped is None else data[:dropped])
        if dropped is not None:
            handler.close_connection = True
