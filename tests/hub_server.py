"""A loopback stand-in for the Hugging Face Hub, enough for the real `huggingface_hub` client to create a model
repo and commit files to it (`HfApi.create_repo` + `HfApi.upload_folder`, huggingface_hub 2.x).

Endpoints, as the client calls them:
  GET  /api/whoami-v2                                       who the token belongs to
  POST /api/repos/create                                    {"name", "organization", "visibility"?}; 409 if it exists
  GET  /api/models/{repo_id}[/revision/{rev}]               repo info (create_repo's fallback, no-op commits)
  POST /api/validate-yaml                                   README.md metadata check
  POST /api/models/{repo_id}/preupload/{rev}                per-file upload mode: "regular" or "lfs"
  POST /{repo_id}.git/info/lfs/objects/batch                LFS batch API, "basic" transfer only
  PUT  /lfs-upload/{oid}?sig=...                            the upload href (pre-signed: no Authorization)
  POST /{repo_id}.git/info/lfs/objects/verify               the verify href
  POST /api/models/{repo_id}/commit/{rev}                   NDJSON: header, file (base64), lfsFile, deletedFile

Xet is never offered: the Hub picks Xet on the client side when `hf_xet` is installed and a file is uploaded in
"lfs" mode. So with `lfs=False` every file is "regular" (inlined base64 in the commit), which any client
configuration handles; with `lfs=True` weights and images are "lfs" like on the Hub and the client must have Xet
disabled (`huggingface_hub.constants.HF_HUB_DISABLE_XET = True`) to use the LFS batch API instead.

Every API call needs `Authorization: Bearer <token>`; anything else gets the Hub's 401 JSON error.
`fail(repo_id, status)` makes every call on that repo answer `status` (404, 403, ...).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


TEST_TOKEN = "hf_snp_loopback_test_token"
TEST_USER = "snp-tester"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".png", ".jpg", ".npz")  # the Hub's default .gitattributes, in part
LFS_MIN_SIZE = 10 * 1024 * 1024  # larger files are LFS whatever their name

_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_ROUTES = [
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "commit"),
    ("GET", re.compile(rf"/api/models/{_REPO}(/revision/(?P<rev>[^/]+))?"), "repo_info"),
    ("POST", re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("POST", re.compile(rf"/{_REPO}\.git/info/lfs/objects/verify"), "lfs_verify"),
    ("PUT", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "lfs_upload"),
]
_ERRORS = {
    401: "Invalid credentials in Authorization header",
    403: "You don't have the rights to create a model under this namespace",
    404: "Repository not found",
}


def _route(method: str, path: str) -> tuple[str, re.Match] | None:
    for verb, pattern, name in _ROUTES:
        match = pattern.fullmatch(path)
        if match and verb == method:
            return name, match
    return None


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)  # {"oid", "summary", "paths"}, oldest first

    @property
    def head(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40


class HubError(Exception):
    def __init__(self, status: int, message: str | None = None, code: str | None = None, **body):
        super().__init__(message or _ERRORS.get(status, "Error"))
        self.status, self.code, self.body = status, code, body


class HubServer:
    """`with HubServer() as hub:` serves on http://127.0.0.1:<free port> (`hub.endpoint`) from a thread."""

    def __init__(self, token: str = TEST_TOKEN, user: str = TEST_USER, lfs: bool = True):
        self.token, self.user, self.lfs = token, user, lfs
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded but maybe not committed yet
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), in order
        self.failures: dict[str, int] = {}
        self._upload_sigs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---- test helpers -----------------------------------------------------------------------------------------
    def fail(self, repo_id: str, status: int) -> None:
        """Every call touching `repo_id` (create included) answers `status` with the Hub's JSON error body."""
        self.failures[repo_id] = status

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos[repo_id].files)

    def paths_called(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.requests]

    # ---- request handling (called from server threads) --------------------------------------------------------
    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict, bytes | dict]:
        """(status, extra headers, JSON-able payload or raw bytes) for one request."""
        routed = _route(method, path)
        if routed is None:
            return 404, {}, {"error": f"Sorry, we can't find the page you are looking for: {method} {path}"}
        name, match = routed
        params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
        try:
            if name != "lfs_upload":  # pre-signed, like an S3 URL: the client sends no token there
                self._authenticate(headers)
            with self._lock:
                return 200, {}, getattr(self, f"_{name}")(body=body, query=query, **params)
        except HubError as err:
            extra = {"X-Error-Message": str(err)}
            if err.code:
                extra["X-Error-Code"] = err.code
            return err.status, extra, {"error": str(err), **err.body}

    def _authenticate(self, headers) -> None:
        if headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(401)

    def _check(self, repo_id: str, must_exist: bool = True) -> Repo | None:
        if repo_id in self.failures:
            status = self.failures[repo_id]
            raise HubError(status, code="RepoNotFound" if status == 404 else None)
        if must_exist and repo_id not in self.repos:
            raise HubError(404, code="RepoNotFound")
        return self.repos.get(repo_id)

    def _whoami(self, **_) -> dict:
        return {"type": "user", "name": self.user, "orgs": [], "auth": {"type": "access_token"}}

    def _create_repo(self, body: bytes, **_) -> dict:
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, "Only model repos are served here")
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        if self._check(repo_id, must_exist=False) is not None:
            # the Hub's conflict answer carries the URL: `create_repo(..., exist_ok=True)` returns it
            raise HubError(409, "You already created this model repo", url=f"{self.endpoint}/{repo_id}")
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": secrets.token_hex(12)}

    def _repo_info(self, repo: str, rev: str = "main", **_) -> dict:
        info = self._check(repo)
        siblings = [{"rfilename": path} for path in sorted(info.files)]
        return {"id": repo, "modelId": repo, "sha": info.head, "private": info.private, "siblings": siblings}

    def _validate_yaml(self, body: bytes, **_) -> dict:
        return {"errors": [], "warnings": []}

    def _preupload(self, repo: str, rev: str, body: bytes, **_) -> dict:
        info = self._check(repo)
        files = []
        for entry in json.loads(body)["files"]:
            path, size = entry["path"], entry["size"]
            lfs = self.lfs and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)
            # `oid` lets the client skip unchanged files: sha256 for LFS files, git blob sha1 for regular ones
            oid = None
            if path in info.files:
                content = info.files[path]
                oid = hashlib.sha256(content).hexdigest() if path in info.lfs_paths else git_blob_sha1(content)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files, "commitOid": info.head}

    def _lfs_batch(self, repo: str, body: bytes, **_) -> dict:
        self._check(repo)
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "Only basic LFS uploads are served here")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs_objects:  # no "actions": the object is already stored
                sig = self._upload_sigs.setdefault(oid, secrets.token_hex(16))
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-upload/{oid}?sig={sig}", "expires_in": 900},
                    "verify": {
                        "href": f"{self.endpoint}/{repo}.git/info/lfs/objects/verify",
                        "header": {"Authorization": f"Bearer {self.token}"},
                    },
                }
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _lfs_upload(self, oid: str, query: dict, body: bytes, **_) -> bytes:
        if self._upload_sigs.get(oid) is None or query.get("sig", [None])[0] != self._upload_sigs[oid]:
            raise HubError(403, "Request has expired or the signature does not match")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its sha256 {oid}")
        self.lfs_objects[oid] = body
        return b""

    def _lfs_verify(self, repo: str, body: bytes, **_) -> dict:
        self._check(repo)
        payload = json.loads(body)
        stored = self.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            raise HubError(404, f"LFS object {payload['oid']} was not uploaded")
        return {"message": "ok"}

    def _commit(self, repo: str, rev: str, body: bytes, **_) -> dict:
        info = self._check(repo)
        if unquote(rev) != "main":
            raise HubError(404, f"Invalid rev id: {unquote(rev)}", code="RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of the commit payload must be its header")
        files, lfs_paths = dict(info.files), set(info.lfs_paths)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"Unsupported encoding for {path}")
                files[path] = base64.b64decode(value["content"])
                lfs_paths.discard(path)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} for {path} was not uploaded")
                files[path] = self.lfs_objects[value["oid"]]
                lfs_paths.add(path)
            elif key == "deletedFile":
                files.pop(path, None)
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        info.files, info.lfs_paths = files, lfs_paths & set(files)
        oid = hashlib.sha1(f"{info.head}{lines!r}".encode()).hexdigest()
        info.commits.append({"oid": oid, "summary": lines[0]["value"]["summary"], "paths": sorted(files)})
        return {"commitUrl": f"{self.endpoint}/{repo}/commit/{oid}", "commitOid": oid, "success": True}


def _handler_for(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects

        def _serve(self) -> None:
            url = urlsplit(self.path)
            status, extra, payload = server.handle(
                self.command, url.path, parse_qs(url.query), self.headers, self._read_body()
            )
            with server._lock:
                server.requests.append((self.command, url.path, status))
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Request-Id", secrets.token_hex(8))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline().strip():  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format, *args) -> None:  # quiet: requests are recorded in `server.requests`
            pass

    return Handler
