"""A Hugging Face Hub-protocol HTTP server on loopback, for testing publishing code end to end.

No installable server implements the Hub's write API, so this one speaks just enough of it for the
real `huggingface_hub` client (2.4): `create_repo`, `upload_folder` / `create_commit` (inline
"regular" files, or Git LFS with `--upload-mode lfs`), `model_info`, `list_repo_files` /
`list_repo_tree`, `hf_hub_download`, `snapshot_download`, `create_branch`, `whoami`.

Run:
    python -m tests.hub_server --data DIR --token TOKEN [--upload-mode regular|lfs]
        [--drop-commit N ...] [--lose-commit-response N ...] [--org NAME ...] [--port 0]

It prints one line `READY http://127.0.0.1:PORT` to stdout and serves until killed. The token may
come from $CASCADEKIT_TEST_HUB_TOKEN instead of --token (keeps it out of `ps`); it is never logged
or written to disk. State (repos, branches, commits, content-addressed blobs) lives under --data,
so a restarted server keeps its repos. Only model repos exist; datasets, spaces, pull requests,
tags, Xet storage and `.gitignore` rules are not implemented (answered with 501 where the client
would otherwise misread the answer). tests/hub_fixture.py starts and stops it for tests.

Upload modes (the preupload answer):
- regular: every file is committed inline (base64 in the commit body). The client never needs Xet.
- lfs: a file goes through Git LFS when its path matches a `filter=lfs` pattern of the repo's
  `.gitattributes` (`*.safetensors`, `*.bin`, ... as the Hub's default), when it is over 10 MiB,
  or when its first 512 bytes hold a NUL byte; other files stay inline. The client must not try
  Xet for those: set HF_HUB_DISABLE_XET=1 before importing huggingface_hub, or set
  `huggingface_hub.constants.HF_HUB_DISABLE_XET = True` at run time.

Endpoints ({repo} is namespace/name; a revision is a branch or a full commit id):
    GET  /api/whoami-v2                      POST /api/validate-yaml (README front matter)
    POST /api/repos/create (409 if it exists) DELETE /api/repos/delete
    GET  /api/models/{repo}[/revision/{rev}] (sha, siblings, cardData; ?blobs=true adds sizes)
    GET  /api/models/{repo}/tree/{rev}[/{path}] (?recursive=true)
    POST /api/models/{repo}/paths-info/{rev}  GET /api/models/{repo}/commits/{rev}
    GET  /api/models/{repo}/refs              PUT /api/models/{repo}/settings (visibility)
    POST /api/models/{repo}/preupload/{rev}   POST /api/models/{repo}/commit/{branch} (ndjson)
    POST|DELETE /api/models/{repo}/branch/{branch}
    POST /{repo}.git/info/lfs/objects/batch   PUT /_lfs/{repo}/{oid} (signed URL)
    POST /_lfs/{repo}/verify                  HEAD|GET /{repo}/resolve/{rev}/{path} (Range ok)
    GET  /_test/stats (no auth)
Writes need `Authorization: Bearer TOKEN` (the LFS PUT may carry the batch answer's signature
instead: the client sends no header there, as to S3). A wrong token gets 401 everywhere; a private
repo read without one gets 401 with `X-Error-Code: RepoNotFound`, as on the Hub.

Fault injection: `--drop-commit N` reads the N-th commit request's body (1-based, over the
server's lifetime) and closes the socket with no response and nothing applied;
`--lose-commit-response N` applies the N-th commit, then closes the socket without answering
(what a lost response looks like to a client that retries). `GET /_test/stats` reports counts.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
import threading
import traceback
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

TOKEN_ENV = "CASCADEKIT_TEST_HUB_TOKEN"
USER = "cascadekit-test"
DEFAULT_ORGS = ("cascadekit-org",)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
REGULAR_MAX_BYTES = 10 * 1024 * 1024  # the Hub sends larger files through LFS
COPY_CHUNK_BYTES = 1024 * 1024
SHA1_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
PARENT_RE = re.compile(r"[0-9a-fA-F]{5,40}")
REPO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
BRANCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
# The same front-matter block huggingface_hub.repocard reads.
FRONT_MATTER_RE = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
LFS_CONTENT_TYPE = "application/vnd.git-lfs+json"
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# The `.gitattributes` the Hub puts in a new model repo's first commit (abridged).
LFS_DEFAULT_PATTERNS = (
    *("*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib"),
    *("*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot"),
    *("*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors"),
    *("saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip"),
    *("*.zst", "*tfevents*"),
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_DEFAULT_PATTERNS)


class HubError(Exception):
    """An HTTP error answer: status, message for `{"error": ...}` and optional `X-Error-Code`."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def check_repo_path(path: Any) -> str:
    """Return `path` if it is a safe file path inside a repo, else raise a 400."""
    if not isinstance(path, str) or not path:
        raise HubError(400, f"Invalid path: {path!r}")
    if path.startswith("/") or "\\" in path or "\0" in path:
        raise HubError(400, f"Invalid path (absolute, backslash or NUL): {path!r}")
    segments = path.split("/")
    if any(segment in ("", ".", "..", ".git") for segment in segments):
        raise HubError(400, f"Invalid path (empty, '.', '..' or '.git' segment): {path!r}")
    return path


def parse_front_matter(text: str) -> dict | None:
    """The YAML metadata block at the top of a README.md, or None; raise a 400 if it is invalid."""
    match = FRONT_MATTER_RE.search(text)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError as error:
        raise HubError(400, f"Invalid YAML in README.md metadata: {error}") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise HubError(400, "README.md metadata must be a YAML mapping")
    return data


def lfs_patterns(gitattributes: str) -> list[str]:
    """The path patterns a `.gitattributes` text sends through LFS (`filter=lfs`)."""
    patterns = []
    for line in gitattributes.splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and "filter=lfs" in fields[1:]:
            patterns.append(fields[0].lstrip("/"))
    return patterns


def matches_lfs(path: str, patterns: list[str]) -> bool:
    """Whether `path` matches a `.gitattributes` pattern (a bare name matches in any folder)."""
    name = path.rsplit("/", 1)[-1]
    for pattern in patterns:
        if "/" not in pattern:
            if fnmatchcase(name, pattern):
                return True
        elif fnmatchcase(path, pattern) or fnmatchcase(path, pattern.replace("/**/", "/")):
            return True
    return False


class Store:
    """Repos, branches and commits in one JSON file; file contents in a sha256-addressed blob store.

    Every public method must be called with `lock` held. A commit record holds the whole file map
    of its tree (path -> entry); entries: sha256, size, lfs, blob_sha1 (git hash of the content),
    git_oid (the git object id: blob_sha1, or for LFS files the hash of the pointer file). A commit
    id is the sha1 of its parent, its sorted file digests and its message. `counts` per repo: the
    commits made through the commit API, and the empty ones among them (no change to the parent).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = root / "state.json"
        self.lock = threading.RLock()
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
        else:
            self.state = {"repos": {}}

    @property
    def repos(self) -> dict[str, dict]:
        return self.state["repos"]

    def save(self) -> None:
        """Write the state atomically (a reader or a kill never sees half a file)."""
        tmp = self.state_path.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256

    def put_blob(self, content: bytes) -> str:
        """Store `content` under its sha256 (idempotent) and return the hex digest."""
        digest = hashlib.sha256(content).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_name(f".{digest}.{threading.get_ident()}.tmp")
            tmp.write_bytes(content)
            os.replace(tmp, path)
        return digest

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    def file_entry(self, content: bytes, *, lfs: bool) -> dict:
        """Store `content` and describe it as a tree entry."""
        digest = self.put_blob(content)
        blob_sha1 = _git_blob_sha1(content)
        entry = {"sha256": digest, "size": len(content), "lfs": lfs, "blob_sha1": blob_sha1}
        if lfs:
            pointer = LFS_POINTER.format(oid=digest, size=len(content)).encode()
            entry["git_oid"] = _git_blob_sha1(pointer)
            entry["pointer_size"] = len(pointer)
        else:
            entry["git_oid"] = blob_sha1
        return entry

    def repo(self, repo_id: str) -> dict:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def resolve(self, repo: dict, revision: str) -> str:
        """The commit id a branch name or full commit id points at; 404 RevisionNotFound if none."""
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if SHA1_RE.fullmatch(revision) and revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def add_commit(
        self, repo: dict, branch: str, parent: str | None, files: dict, title: str, message: str
    ) -> str:
        """Record a commit of `files` on `branch` and persist; roll back if persisting fails."""
        digest = hashlib.sha1()
        digest.update(f"parent {parent}\n".encode())
        for path in sorted(files):
            entry = files[path]
            digest.update(f"{path}\0{entry['sha256']} {entry['size']} {entry['lfs']}\n".encode())
        digest.update(f"\n{title}\n\n{message}".encode())
        commit_id = digest.hexdigest()
        record = {"parent": parent, "title": title, "message": message, "date": _now()}
        record["files"] = files
        before = {key: dict(repo[key]) for key in ("commits", "branches", "counts")}
        repo["commits"][commit_id] = record
        repo["branches"][branch] = commit_id
        if parent is not None:  # made through the commit API, not by create_repo
            repo["counts"]["commits"] += 1
            repo["counts"]["empty_commits"] += int(files == repo["commits"][parent]["files"])
        try:
            self.save()
        except BaseException:
            repo.update(before)
            raise
        return commit_id

    def create_repo(self, repo_id: str, private: bool) -> None:
        """A new repo whose main branch holds the Hub's default `.gitattributes`."""
        self.repos[repo_id] = {
            "private": private,
            "created_at": _now(),
            "branches": {},
            "commits": {},
            "lfs_objects": {},
            "counts": {"commits": 0, "empty_commits": 0},
        }
        files = {".gitattributes": self.file_entry(GITATTRIBUTES.encode(), lfs=False)}
        try:
            self.add_commit(self.repos[repo_id], "main", None, files, "initial commit", "")
        except BaseException:
            del self.repos[repo_id]
            raise

    def stats(self) -> dict:
        """Commits made through the commit API, and the empty ones among them, per repo."""
        return {
            key: {repo_id: repo["counts"][key] for repo_id, repo in self.repos.items()}
            for key in ("commits", "empty_commits")
        }


class HubServer(ThreadingHTTPServer):
    """The listening server: holds the store, the settings and the request counters."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        store: Store,
        token: str,
        upload_mode: str,
        drop_commits: set[int],
        lose_commit_responses: set[int],
        orgs: tuple[str, ...],
    ) -> None:
        super().__init__(address, HubHandler)
        self.store = store
        self.token = token
        self.upload_mode = upload_mode
        self.drop_commits = drop_commits
        self.lose_commit_responses = lose_commit_responses
        self.orgs = orgs
        self.counter_lock = threading.Lock()
        self.requests = 0
        self.commit_requests = 0
        self.dropped_commits = 0

    def sign(self, repo_id: str, oid: str, size: int) -> str:
        """The signature of an LFS upload URL (the client sends no Authorization header on PUT)."""
        message = f"{repo_id}\n{oid}\n{size}".encode()
        return hmac.new(self.token.encode(), message, hashlib.sha256).hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    """One request: read the whole body, route it, answer JSON (or file bytes)."""

    protocol_version = "HTTP/1.1"
    server: HubServer

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    # ------------------------------------------------------------------ plumbing

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Path only: no query string (LFS upload URLs carry a signature), never headers.
        path = urlsplit(self.path).path
        sys.stderr.write(f"{self.command} {path} {code}\n")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _error(self, error: HubError, headers: dict[str, str] | None = None) -> None:
        extra = {"X-Error-Message": error.message.encode("ascii", "replace").decode()}
        if error.code is not None:
            extra["X-Error-Code"] = error.code
        self._json(error.status, {"error": error.message}, headers={**extra, **(headers or {})})

    def _drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        sys.stderr.write(f"{self.command} {urlsplit(self.path).path} dropped\n")

    def _base_url(self) -> str:
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        return f"http://{host}"

    def _authenticated(self) -> bool:
        """False without an Authorization header; a 401 if it holds anything but the token."""
        header = self.headers.get("Authorization")
        if header is None:
            return False
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), self.server.token.encode()
        ):
            raise HubError(401, INVALID_CREDENTIALS)
        return True

    def _require_auth(self, authed: bool) -> None:
        if not authed:
            raise HubError(401, INVALID_CREDENTIALS)

    def _readable_repo(self, repo_id: str, authed: bool) -> dict:
        repo = self.server.store.repo(repo_id)
        if repo["private"] and not authed:
            # As the Hub: a private repo is "not found" to anonymous callers, with a 401.
            raise HubError(401, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    @staticmethod
    def _json_body(body: bytes) -> dict:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HubError(400, "Request body must be a JSON object")
        return data

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._error(HubError(400, "Unreadable request body"))
            return
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        if segments != ["_test", "stats"]:
            with self.server.counter_lock:
                self.server.requests += 1
        try:
            self._route(segments, query, body)
        except HubError as error:
            self._error(error)
        except Exception as error:  # an answer, not a hung client
            traceback.print_exc()
            self.close_connection = True  # a response may have been half sent
            self._error(HubError(500, f"Internal error: {type(error).__name__}"))

    def _route(self, segments: list[str], query: dict, body: bytes) -> None:
        method = self.command
        match segments:
            case ["_test", "stats"] if method == "GET":
                return self._stats()
        authed = self._authenticated()
        match segments:
            case ["api", "whoami-v2"] if method == "GET":
                return self._whoami(authed)
            case ["api", "validate-yaml"] if method == "POST":
                return self._validate_yaml(body)
            case ["api", "repos", "create"] if method == "POST":
                return self._create_repo(authed, body)
            case ["api", "repos", "delete"] if method == "DELETE":
                return self._delete_repo(authed, body)
            case ["api", "models", namespace, name, *rest]:
                return self._repo_api(f"{namespace}/{name}", rest, query, body, authed)
            case ["api", "datasets" | "spaces" | "kernels", *_]:
                raise HubError(501, "Only model repos exist on this test hub")
            case [namespace, name, "info", "lfs", "objects", "batch"] if (
                method == "POST" and name.endswith(".git")
            ):
                return self._lfs_batch(f"{namespace}/{name[:-4]}", body, authed)
            case ["_lfs", namespace, name, "verify"] if method == "POST":
                return self._lfs_verify(f"{namespace}/{name}", body, authed)
            case ["_lfs", namespace, name, oid] if method == "PUT":
                return self._lfs_put(f"{namespace}/{name}", oid, query, body, authed)
            case [namespace, name, "resolve", revision, *path] if (
                method in ("GET", "HEAD") and path
            ):
                return self._resolve(f"{namespace}/{name}", revision, "/".join(path), authed)
        raise HubError(404, f"Not found (this test hub does not serve {method} {self.path})")

    def _repo_api(
        self, repo_id: str, rest: list[str], query: dict, body: bytes, authed: bool
    ) -> None:
        method = self.command
        match rest:
            case [] if method == "GET":
                return self._model_info(repo_id, "main", query, authed)
            case ["revision", revision] if method == "GET":
                return self._model_info(repo_id, revision, query, authed)
            case ["tree", revision, *path] if method == "GET":
                return self._tree(repo_id, revision, "/".join(path), query, authed)
            case ["paths-info", revision] if method == "POST":
                return self._paths_info(repo_id, revision, body, authed)
            case ["commits", revision] if method == "GET":
                return self._commits(repo_id, revision, authed)
            case ["refs"] if method == "GET":
                return self._refs(repo_id, query, authed)
            case ["preupload", revision] if method == "POST":
                return self._preupload(repo_id, revision, query, body, authed)
            case ["commit", revision] if method == "POST":
                return self._commit(repo_id, revision, query, body, authed)
            case ["branch", branch] if method in ("POST", "DELETE"):
                return self._branch(repo_id, branch, body, authed)
            case ["settings"] if method == "PUT":
                return self._settings(repo_id, body, authed)
            case [token_kind, *_] if token_kind in ("xet-write-token", "xet-read-token"):
                raise HubError(
                    501,
                    "Xet storage is not implemented by this test hub: set HF_HUB_DISABLE_XET=1 "
                    "in the client's environment (or huggingface_hub.constants.HF_HUB_DISABLE_XET"
                    " = True)",
                )
        raise HubError(404, f"Not found (this test hub does not serve {method} {self.path})")

    # ------------------------------------------------------------------ account and repos

    def _stats(self) -> None:
        server = self.server
        with server.store.lock:
            stats = server.store.stats()
        with server.counter_lock:
            stats.update(
                requests=server.requests,
                commit_requests=server.commit_requests,
                dropped_commits=server.dropped_commits,
            )
        self._json(200, stats)

    def _whoami(self, authed: bool) -> None:
        self._require_auth(authed)
        self._json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(USER.encode()).hexdigest()[:24],
                "name": USER,
                "fullname": "cascadekit test user",
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "canPay": False,
                "orgs": [
                    {"type": "org", "name": org, "fullname": org, "roleInOrg": "admin"}
                    for org in self.server.orgs
                ],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": "write", "createdAt": _now()},
                },
            },
        )

    def _validate_yaml(self, body: bytes) -> None:
        content = self._json_body(body).get("content", "")
        if not isinstance(content, str):
            raise HubError(400, "`content` must be a string")
        try:
            parse_front_matter(content)
        except HubError as error:
            self._json(400, {"error": error.message, "errors": [{"message": error.message}]})
            return
        self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self, authed: bool, body: bytes) -> None:
        self._require_auth(authed)
        payload = self._json_body(body)
        if payload.get("type") not in (None, "model"):
            raise HubError(501, "Only model repos exist on this test hub")
        name = payload.get("name")
        namespace = payload.get("organization") or USER
        if not isinstance(name, str) or not REPO_NAME_RE.fullmatch(name) or ".." in name:
            raise HubError(400, f"Invalid repo name: {name!r}")
        if "--" in name:
            raise HubError(400, f"Invalid repo name (no '--'): {name!r}")
        if namespace != USER and namespace not in self.server.orgs:
            raise HubError(
                403,
                f'You don\'t have the rights to create a model under the namespace "{namespace}"',
            )
        visibility = payload.get("visibility")
        private = (
            visibility == "private" if visibility is not None else bool(payload.get("private"))
        )
        repo_id = f"{namespace}/{name}"
        url = f"{self._base_url()}/{repo_id}"
        store = self.server.store
        with store.lock:
            if repo_id in store.repos:
                self._json(409, {"error": "You already created this model repo", "url": url})
                return
            store.create_repo(repo_id, private)
        self._json(
            200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()}
        )

    def _delete_repo(self, authed: bool, body: bytes) -> None:
        self._require_auth(authed)
        payload = self._json_body(body)
        if payload.get("type") not in (None, "model"):
            raise HubError(501, "Only model repos exist on this test hub")
        repo_id = f"{payload.get('organization') or USER}/{payload.get('name')}"
        store = self.server.store
        with store.lock:
            repo = store.repo(repo_id)
            del store.repos[repo_id]
            try:
                store.save()
            except BaseException:
                store.repos[repo_id] = repo
                raise
        self._json(200, {})

    def _settings(self, repo_id: str, body: bytes, authed: bool) -> None:
        self._require_auth(authed)
        payload = self._json_body(body)
        store = self.server.store
        with store.lock:
            repo = store.repo(repo_id)
            if "visibility" in payload or "private" in payload:
                before = repo["private"]
                visibility = payload.get("visibility")
                if visibility is not None and visibility not in ("private", "public"):
                    raise HubError(400, f"Unsupported visibility: {visibility!r}")
                repo["private"] = (
                    visibility == "private" if visibility is not None else bool(payload["private"])
                )
                try:
                    store.save()
                except BaseException:
                    repo["private"] = before
                    raise
        self._json(200, {})

    # ------------------------------------------------------------------ reads

    def _model_info(self, repo_id: str, revision: str, query: dict, authed: bool) -> None:
        store = self.server.store
        with store.lock:
            repo = self._readable_repo(repo_id, authed)
            commit_id = store.resolve(repo, revision)
            commit = repo["commits"][commit_id]
            files = commit["files"]
            readme = files.get("README.md")
            card_text = (
                store.read_blob(readme["sha256"]).decode("utf-8", "replace") if readme else ""
            )
            private = repo["private"]
            created_at = repo["created_at"]
        with_blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                entry = files[path]
                sibling.update(size=entry["size"], blobId=entry["git_oid"])
                if entry["lfs"]:
                    sibling["lfs"] = {
                        "size": entry["size"],
                        "sha256": entry["sha256"],
                        "pointerSize": entry["pointer_size"],
                    }
            siblings.append(sibling)
        try:
            card = parse_front_matter(card_text) or {}
        except HubError:
            card = {}
        tags = card.get("tags") if isinstance(card.get("tags"), list) else []
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit_id,
            "lastModified": commit["date"],
            "createdAt": created_at,
            "private": private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [str(tag) for tag in tags],
            "library_name": card.get("library_name"),
            "pipeline_tag": card.get("pipeline_tag"),
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(entry["size"] for entry in files.values()),
        }
        if card:
            info["cardData"] = card
        self._json(200, info)

    @staticmethod
    def _file_json(path: str, entry: dict) -> dict:
        item: dict[str, Any] = {
            "type": "file",
            "oid": entry["git_oid"],
            "size": entry["size"],
            "path": path,
        }
        if entry["lfs"]:
            item["lfs"] = {
                "oid": entry["sha256"],
                "size": entry["size"],
                "pointerSize": entry["pointer_size"],
            }
        return item

    @staticmethod
    def _folder_json(folder: str, files: dict) -> dict:
        inside = sorted(p for p in files if p.startswith(folder + "/"))
        digest = hashlib.sha1("".join(f"{p} {files[p]['git_oid']}\n" for p in inside).encode())
        return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": folder}

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict, authed: bool) -> None:
        store = self.server.store
        with store.lock:
            repo = self._readable_repo(repo_id, authed)
            commit_id = store.resolve(repo, revision)
            files = repo["commits"][commit_id]["files"]
        folder = folder.strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        inside = [p for p in files if p.startswith(prefix)]
        if folder and not inside:
            raise HubError(404, f"Folder not found: {folder}", "EntryNotFound")
        folders: set[str] = set()
        items = []
        for path in inside:
            parts = path[len(prefix) :].split("/")
            if recursive:
                folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
                items.append(self._file_json(path, files[path]))
            elif len(parts) > 1:
                folders.add(prefix + parts[0])
            else:
                items.append(self._file_json(path, files[path]))
        items += [self._folder_json(f, files) for f in folders]
        items.sort(key=lambda item: item["path"])
        self._json(200, items, headers={"X-Repo-Commit": commit_id})

    def _paths_info(self, repo_id: str, revision: str, body: bytes, authed: bool) -> None:
        store = self.server.store
        with store.lock:
            repo = self._readable_repo(repo_id, authed)
            files = repo["commits"][store.resolve(repo, revision)]["files"]
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = self._json_body(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        items = []
        for path in paths:
            path = str(path).strip("/")
            if path in files:
                items.append(self._file_json(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                items.append(self._folder_json(path, files))
        self._json(200, items)

    def _commits(self, repo_id: str, revision: str, authed: bool) -> None:
        store = self.server.store
        items = []
        with store.lock:
            repo = self._readable_repo(repo_id, authed)
            commit_id = store.resolve(repo, revision)
            while commit_id is not None:
                commit = repo["commits"][commit_id]
                items.append(
                    {
                        "id": commit_id,
                        "title": commit["title"],
                        "message": commit["message"],
                        "date": commit["date"],
                        "authors": [{"user": USER, "avatar": ""}],
                    }
                )
                commit_id = commit["parent"]
        self._json(200, items)

    def _refs(self, repo_id: str, query: dict, authed: bool) -> None:
        with self.server.store.lock:
            branches = dict(self._readable_repo(repo_id, authed)["branches"])
        refs: dict[str, Any] = {
            "branches": [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": target}
                for name, target in sorted(branches.items())
            ],
            "converts": [],
            "tags": [],
        }
        if query.get("include_prs"):
            refs["pullRequests"] = []
        self._json(200, refs)

    def _resolve(self, repo_id: str, revision: str, path: str, authed: bool) -> None:
        store = self.server.store
        with store.lock:
            repo = self._readable_repo(repo_id, authed)
            commit_id = store.resolve(repo, revision)
            entry = repo["commits"][commit_id]["files"].get(path)
        headers = {"X-Repo-Commit": commit_id}
        if entry is None:
            self._error(HubError(404, f"Entry not found: {path}", "EntryNotFound"), headers)
            return
        size = entry["size"]
        if entry["lfs"]:
            # The Hub answers 302 to a CDN here; serving the bytes directly keeps one host.
            etag = f'"{entry["sha256"]}"'
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(size)})
        else:
            etag = f'"{entry["git_oid"]}"'
        headers.update({"ETag": etag, "Accept-Ranges": "bytes"})
        start, end = 0, size - 1
        status = 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(size - int(match.group(2)), 0)
            if start >= size or start > end:
                headers["Content-Range"] = f"bytes */{size}"
                self._error(HubError(416, "Requested range not satisfiable"), headers)
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(end - start + 1, 0)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with store.blob_path(entry["sha256"]).open("rb") as blob:
            blob.seek(start)
            remaining = length
            while remaining > 0:
                chunk = blob.read(min(COPY_CHUNK_BYTES, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    # ------------------------------------------------------------------ writes

    def _wants_lfs(self, path: str, size: int, sample: bytes, patterns: list[str]) -> bool:
        if self.server.upload_mode != "lfs" or size == 0:
            return False
        return size > REGULAR_MAX_BYTES or b"\0" in sample or matches_lfs(path, patterns)

    def _lfs_patterns(self, files: dict) -> list[str]:
        entry = files.get(".gitattributes")
        if entry is None:
            return []
        return lfs_patterns(self.server.store.read_blob(entry["sha256"]).decode("utf-8", "replace"))

    def _preupload(
        self, repo_id: str, revision: str, query: dict, body: bytes, authed: bool
    ) -> None:
        self._require_auth(authed)
        if query.get("create_pr"):
            raise HubError(501, "Pull requests are not implemented by this test hub")
        payload = self._json_body(body)
        requested = payload.get("files")
        if not isinstance(requested, list):
            raise HubError(400, "`files` must be a list")
        store = self.server.store
        with store.lock:
            repo = store.repo(repo_id)
            files = repo["commits"][store.resolve(repo, revision)]["files"]
            patterns = self._lfs_patterns(files)
        answers = []
        for item in requested:
            if not isinstance(item, dict):
                raise HubError(400, "Each entry of `files` must be an object")
            path = check_repo_path(item.get("path"))
            size = item.get("size")
            if not isinstance(size, int) or size < 0:
                raise HubError(400, f"Invalid size for {path}: {size!r}")
            try:
                sample = base64.b64decode(item.get("sample") or "", validate=True)
            except (binascii.Error, ValueError):
                raise HubError(400, f"Invalid base64 sample for {path}") from None
            lfs = self._wants_lfs(path, size, sample, patterns)
            existing = files.get(path)
            oid = None
            if existing is not None:
                oid = existing["sha256"] if lfs else existing["blob_sha1"]
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json(200, {"files": answers, "commitOid": None})

    @staticmethod
    def _parse_commit_body(body: bytes) -> tuple[dict, list[tuple[str, dict]]]:
        """The header and the operations of an ndjson commit body; a 400 if any line is bad."""
        lines = [line for line in body.splitlines() if line.strip()]
        if not lines:
            raise HubError(400, "Empty commit payload")
        items = []
        for number, line in enumerate(lines, start=1):
            try:
                item = json.loads(line)
            except ValueError:
                raise HubError(400, f"Line {number} of the commit payload is not JSON") from None
            if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
                raise HubError(400, f"Line {number} must be {{'key': ..., 'value': {{...}}}}")
            items.append((item.get("key"), item["value"]))
        key, header = items[0]
        if key != "header":
            raise HubError(400, "The first line of the commit payload must be the header")
        if not isinstance(header.get("summary"), str) or not header["summary"].strip():
            raise HubError(400, "The commit header needs a non-empty `summary`")
        operations = []
        for key, value in items[1:]:
            if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                raise HubError(400, f"Unknown commit operation: {key!r}")
            operations.append((key, value))
        return header, operations

    def _apply_operations(self, repo: dict, parent_files: dict, operations: list) -> dict:
        """The file map after `operations`: inline blobs get stored, the state is not touched."""
        store = self.server.store
        patterns = self._lfs_patterns(parent_files)
        files = dict(parent_files)
        for key, value in operations:
            if key == "deletedFolder":
                folder = check_repo_path(str(value.get("path", "")).rstrip("/"))
                inside = [p for p in files if p.startswith(folder + "/")]
                if not inside:
                    raise HubError(
                        404, f"A folder with this name doesn't exist: {folder}", "EntryNotFound"
                    )
                for path in inside:
                    del files[path]
                continue
            path = check_repo_path(value.get("path"))
            if key == "deletedFile":
                if path not in files:
                    raise HubError(
                        404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                    )
                del files[path]
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(
                        400, f"Unsupported encoding for {path}: {value.get('encoding')!r}"
                    )
                try:
                    content = base64.b64decode(value.get("content", ""), validate=True)
                except (binascii.Error, ValueError, TypeError):
                    raise HubError(400, f"Invalid base64 content for {path}") from None
                if self._wants_lfs(path, len(content), content[:512], patterns):
                    raise HubError(400, f"{path} must be uploaded with LFS (see preupload)")
                files[path] = store.file_entry(content, lfs=False)
            else:  # lfsFile
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or not isinstance(oid, str):
                    raise HubError(400, f"lfsFile {path} needs a sha256 `oid`")
                uploaded_size = repo["lfs_objects"].get(oid)
                if uploaded_size is None:
                    raise HubError(400, f"LFS object {oid} for {path} was never uploaded")
                if value.get("size") is not None and value["size"] != uploaded_size:
                    raise HubError(400, f"Size of {path} does not match its LFS object")
                files[path] = store.file_entry(store.read_blob(oid), lfs=True)
        for path in files:
            if any(p.startswith(path + "/") for p in files):
                raise HubError(400, f"{path} cannot be both a file and a folder")
        readme = files.get("README.md")
        if readme is not None and readme != parent_files.get("README.md"):
            parse_front_matter(store.read_blob(readme["sha256"]).decode("utf-8", "replace"))
        return files

    def _commit(self, repo_id: str, revision: str, query: dict, body: bytes, authed: bool) -> None:
        server = self.server
        with server.counter_lock:
            server.commit_requests += 1
            number = server.commit_requests
            drop = number in server.drop_commits
            if drop or number in server.lose_commit_responses:
                server.dropped_commits += 1
        if drop:
            return self._drop_connection()
        self._require_auth(authed)
        if query.get("create_pr"):
            raise HubError(501, "Pull requests are not implemented by this test hub")
        header, operations = self._parse_commit_body(body)
        store = server.store
        with store.lock:
            repo = store.repo(repo_id)
            if revision not in repo["branches"]:
                if SHA1_RE.fullmatch(revision) and revision in repo["commits"]:
                    raise HubError(400, "Commits go to a branch, not to a commit id")
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo["branches"][revision]
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and (
                not isinstance(parent_commit, str)
                or not PARENT_RE.fullmatch(parent_commit)
                or not head.startswith(parent_commit.lower())
            ):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self._apply_operations(repo, repo["commits"][head]["files"], operations)
            commit_id = store.add_commit(
                repo, revision, head, files, header["summary"], header.get("description") or ""
            )
        if number in server.lose_commit_responses:
            return self._drop_connection()
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit_id,
                "commitUrl": f"{self._base_url()}/{repo_id}/commit/{commit_id}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    def _branch(self, repo_id: str, branch: str, body: bytes, authed: bool) -> None:
        self._require_auth(authed)
        store = self.server.store
        with store.lock:
            repo = store.repo(repo_id)
            if self.command == "DELETE":
                if branch not in repo["branches"]:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise HubError(400, "The default branch cannot be deleted")
                target = repo["branches"].pop(branch)
            else:
                if not BRANCH_RE.fullmatch(branch) or ".." in branch or SHA1_RE.fullmatch(branch):
                    raise HubError(400, f"Invalid branch name: {branch!r}")
                if branch in repo["branches"]:
                    raise HubError(409, "Reference already exists")
                starting_point = self._json_body(body).get("startingPoint") or "main"
                repo["branches"][branch] = store.resolve(repo, str(starting_point))
            try:
                store.save()
            except BaseException:
                if self.command == "DELETE":
                    repo["branches"][branch] = target
                else:
                    del repo["branches"][branch]
                raise
        self._json(200, {})

    # ------------------------------------------------------------------ LFS

    def _lfs_batch(self, repo_id: str, body: bytes, authed: bool) -> None:
        self._require_auth(authed)
        payload = self._json_body(body)
        if payload.get("operation") != "upload":
            raise HubError(501, "Only LFS uploads are implemented by this test hub")
        if payload.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "Only sha256 LFS objects are supported")
        objects = payload.get("objects")
        if not isinstance(objects, list):
            raise HubError(400, "`objects` must be a list")
        store = self.server.store
        with store.lock:
            uploaded = dict(store.repo(repo_id)["lfs_objects"])
        base = self._base_url()
        answers = []
        for item in objects:
            oid = item.get("oid") if isinstance(item, dict) else None
            size = item.get("size") if isinstance(item, dict) else None
            if not isinstance(oid, str) or not isinstance(size, int):
                raise HubError(400, "Each LFS object needs a string `oid` and an integer `size`")
            answer: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not SHA256_RE.fullmatch(oid) or size < 0:
                answer["error"] = {"code": 422, "message": f"Invalid object: {oid} ({size} bytes)"}
            elif uploaded.get(oid) != size:
                signature = self.server.sign(repo_id, oid, size)
                answer["actions"] = {
                    "upload": {
                        "href": f"{base}/_lfs/{repo_id}/{oid}?size={size}&sig={signature}",
                        "header": {},
                        "expires_in": 3600,
                    },
                    "verify": {"href": f"{base}/_lfs/{repo_id}/verify", "header": {}},
                }
            answers.append(answer)
        body_out = json.dumps({"transfer": "basic", "objects": answers, "hash_algo": "sha256"})
        self._send(200, body_out.encode(), content_type=LFS_CONTENT_TYPE)

    def _lfs_put(self, repo_id: str, oid: str, query: dict, body: bytes, authed: bool) -> None:
        size_text = query.get("size", [""])[0]
        signature = query.get("sig", [""])[0]
        signed = size_text.isdigit() and hmac.compare_digest(
            signature.encode(), self.server.sign(repo_id, oid, int(size_text)).encode()
        )
        if not (signed or authed):
            raise HubError(401, INVALID_CREDENTIALS)
        if hashlib.sha256(body).hexdigest() != oid or (size_text and len(body) != int(size_text)):
            raise HubError(400, f"Uploaded content does not match LFS object {oid}")
        store = self.server.store
        with store.lock:
            repo = store.repo(repo_id)
            store.put_blob(body)
            if repo["lfs_objects"].get(oid) != len(body):
                repo["lfs_objects"][oid] = len(body)
                try:
                    store.save()
                except BaseException:
                    del repo["lfs_objects"][oid]
                    raise
        self._send(200, b"", content_type="text/plain", headers={"ETag": f'"{oid}"'})

    def _lfs_verify(self, repo_id: str, body: bytes, authed: bool) -> None:
        self._require_auth(authed)
        payload = self._json_body(body)
        with self.server.store.lock:
            uploaded = self.server.store.repo(repo_id)["lfs_objects"].get(payload.get("oid"))
        if uploaded is None or uploaded != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} is not uploaded")
        self._json(200, {"success": True})


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, print the READY line and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="state folder (kept on restart)")
    parser.add_argument("--token", help=f"the one valid token (default: ${TOKEN_ENV})")
    parser.add_argument("--upload-mode", choices=("regular", "lfs"), default="regular")
    parser.add_argument(
        "--drop-commit",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="close the N-th commit request's connection unanswered, nothing applied (repeatable)",
    )
    parser.add_argument(
        "--lose-commit-response",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="apply the N-th commit request, then close its connection unanswered (repeatable)",
    )
    parser.add_argument(
        "--org", action="append", default=None, help=f"an org of the user (default {DEFAULT_ORGS})"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"give --token or set ${TOKEN_ENV}")
    server = HubServer(
        ("127.0.0.1", args.port),
        Store(args.data),
        token,
        args.upload_mode,
        set(args.drop_commit),
        set(args.lose_commit_response),
        tuple(args.org) if args.org else DEFAULT_ORGS,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"READY http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
