"""A small Hub-protocol server for the publishing tests: what `huggingface_hub` needs to create a repo, preupload,
upload LFS objects, commit, tag, list refs and trees and resolve files at a revision.

Repositories are real git repositories (`ROOT/datasets/ORG/NAME`, non-bare): each commit is one git commit made
with git's plumbing, LFS files are stored as git-lfs pointers with their objects under `.git/lfs/objects`, and
tags are annotated git tags. So the read side can be served by a third-party server (olah) from the same folders.

    python tests/hub_server.py --root DIR --port PORT --token TOKEN

`POST /_test/drop-commits` with `{"on": true}` makes every commit request read its body and drop the
connection without committing (a network failure mid-push); `{"on": false}` ends it. `/_test/drop-tags` does the
same to requests that create a tag.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from net import free_port, serve_process

GITATTRIBUTES = "*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".parquet", ".png", ".arrow", ".bin")
POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
_POINTER = re.compile(r"^version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n$")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "hub",
    "GIT_AUTHOR_EMAIL": "hub@localhost",
    "GIT_COMMITTER_NAME": "hub",
    "GIT_COMMITTER_EMAIL": "hub@localhost",
}


class NotFound(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Repo:
    """One dataset repository on disk."""

    def __init__(self, root: Path, repo_id: str) -> None:
        self.repo_id = repo_id
        self.path = root / "datasets" / repo_id

    def exists(self) -> bool:
        return (self.path / ".git").is_dir()

    def git(self, *args: str, data: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        result = subprocess.run(
            ["git", "-C", str(self.path), *args],
            input=data,
            capture_output=True,
            env={**os.environ, **GIT_ENV, **(env or {})},
        )
        if result.returncode:
            raise RuntimeError(f"git {' '.join(args)}: {result.stderr.decode()}")
        return result.stdout

    def create(self) -> None:
        self.path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")
        blob = self.git("hash-object", "-w", "--stdin", data=GITATTRIBUTES.encode()).decode().strip()
        with tempfile.TemporaryDirectory() as scratch:
            env = {"GIT_INDEX_FILE": f"{scratch}/index"}
            self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},.gitattributes", env=env)
            tree = self.git("write-tree", env=env).decode().strip()
        commit = self.git("commit-tree", tree, "-m", "initial commit").decode().strip()
        self.git("update-ref", "refs/heads/main", commit)

    def resolve(self, revision: str) -> str:
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
        except RuntimeError:
            raise NotFound("RevisionNotFound", f"Invalid rev id: {revision}") from None

    def lfs_object(self, oid: str) -> Path:
        return self.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def commit(self, revision: str, items: list[dict], message: str) -> str:
        parent = self.resolve(revision)
        with tempfile.TemporaryDirectory() as scratch:
            env = {"GIT_INDEX_FILE": f"{scratch}/index"}
            self.git("read-tree", parent, env=env)
            for item in items:
                key, value = item["key"], item["value"]
                if key == "file":
                    content = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    if not self.lfs_object(value["oid"]).is_file():
                        raise ValueError(f"LFS object {value['oid']} was not uploaded")
                    content = POINTER.format(oid=value["oid"], size=value["size"]).encode()
                elif key == "deletedFile":
                    self.git("update-index", "--force-remove", value["path"], env=env)
                    continue
                elif key == "deletedFolder":
                    listed = self.git("ls-files", "-z", value["path"].rstrip("/") + "/", env=env).split(b"\0")
                    for path in filter(None, listed):
                        self.git("update-index", "--force-remove", path.decode(), env=env)
                    continue
                else:
                    raise ValueError(f"unknown commit item {key!r}")
                blob = self.git("hash-object", "-w", "--stdin", data=content).decode().strip()
                self.git("update-index", "--add", "--cacheinfo", f"100644,{blob},{value['path']}", env=env)
            tree = self.git("write-tree", env=env).decode().strip()
        commit = self.git("commit-tree", tree, "-p", parent, "-m", message).decode().strip()
        self.git("update-ref", f"refs/heads/{revision}", commit, parent)
        return commit

    def refs(self) -> dict[str, list[dict[str, str]]]:
        listing = self.git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)").decode().splitlines()
        refs: dict[str, list[dict[str, str]]] = {"branches": [], "tags": [], "converts": []}
        for line in listing:
            name, target, peeled = [*line.split(" "), ""][:3]
            for prefix, group in (("refs/heads/", "branches"), ("refs/tags/", "tags")):
                if name.startswith(prefix):
                    refs[group].append({"name": name[len(prefix) :], "ref": name, "targetCommit": peeled or target})
        return refs

    def read(self, commit: str, path: str) -> tuple[bytes, str, dict | None]:
        """File content, its git blob id, and its LFS info when stored as a pointer."""
        try:
            blob = self.git("rev-parse", "--verify", "--quiet", f"{commit}:{path}").decode().strip()
            raw = self.git("cat-file", "blob", blob)
        except RuntimeError:
            raise NotFound("EntryNotFound", f"{path} does not exist at {commit}") from None
        pointer = _POINTER.match(raw.decode("utf-8", "replace")) if len(raw) < 200 else None
        if pointer:
            oid, size = pointer.group(1), int(pointer.group(2))
            return self.lfs_object(oid).read_bytes(), blob, {"oid": oid, "size": size, "pointerSize": len(raw)}
        return raw, blob, None

    def tree(self, commit: str, path: str, recursive: bool) -> list[dict]:
        spec = f"{commit}:{path}" if path else commit
        try:
            self.git("rev-parse", "--verify", "--quiet", spec)
        except RuntimeError:
            raise NotFound("EntryNotFound", f"{path} does not exist at {commit}") from None
        args = ["ls-tree", "-l", "-z", *(["-r", "-t"] if recursive else []), commit, *([path + "/"] if path else [])]
        entries = []
        for record in filter(None, self.git(*args).split(b"\0")):
            meta, name = record.decode().split("\t", 1)
            _mode, kind, oid, size = meta.split()
            if kind == "tree":
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
                continue
            _, _, lfs = self.read(commit, name)
            entry = {"type": "file", "oid": oid, "size": lfs["size"] if lfs else int(size), "path": name}
            entries.append(entry | ({"lfs": lfs} if lfs else {}))
        return entries


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: Path, port: int, token: str) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.root = root
        self.token = token
        self.lock = threading.Lock()
        self.dropped: set[str] = set()  # routes ("commits", "tags") whose requests drop the connection
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        with (self.server.root / "requests.log").open("a") as log:
            log.write(f"{self.command} {self.path}\n")

    # -- plumbing ------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else None)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.server.token}":
            return True
        self._error(401, "Invalid credentials in Authorization header", "Unauthorized")
        return False

    def _repo(self, repo_id: str) -> Repo:
        repo = Repo(self.server.root, unquote(repo_id))
        if not repo.exists():
            raise NotFound("RepoNotFound", f"Repository {repo.repo_id} not found")
        return repo

    def _dispatch(self, routes: list[tuple[str, object]]) -> None:
        path = urlsplit(self.path).path
        try:
            for pattern, handler in routes:
                match = re.fullmatch(pattern, path)
                if match:
                    with self.server.lock:
                        return handler(**match.groupdict())  # type: ignore[operator]
            self._error(404, f"no route {self.command} {path}")
        except NotFound as err:
            self._error(404, str(err), err.code)
        except (ValueError, KeyError, RuntimeError) as err:
            self._error(400, str(err), "BadRequest")

    # -- routes --------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        repo = r"/api/datasets/(?P<repo_id>[^/]+/[^/]+)"
        self._dispatch(
            [
                (repo + "/refs", self.refs),
                (repo + r"/revision/(?P<revision>[^/]+)", self.info),
                (repo + r"/tree/(?P<revision>[^/]+)(?P<path>/.*)?", self.tree),
                (r"/datasets/(?P<repo_id>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)", self.resolve),
                (r"/lfs/(?P<repo_id>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})", self.lfs_download),
            ]
        )

    do_HEAD = do_GET

    def do_POST(self) -> None:
        repo = r"/api/datasets/(?P<repo_id>[^/]+/[^/]+)"
        self._dispatch(
            [
                (r"/api/repos/create", self.create),
                (r"/api/validate-yaml", self.validate_yaml),
                (repo + r"/preupload/(?P<revision>[^/]+)", self.preupload),
                (r"/datasets/(?P<repo_id>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
                (repo + r"/commit/(?P<revision>[^/]+)", self.commit),
                (repo + r"/tag/(?P<revision>[^/]+)", self.tag),
                (r"/_test/drop-(?P<route>commits|tags)", self.drop),
            ]
        )

    def do_PUT(self) -> None:
        self._dispatch([(r"/lfs/(?P<repo_id>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})", self.lfs_upload)])

    def do_DELETE(self) -> None:
        self._dispatch([(r"/api/datasets/(?P<repo_id>[^/]+/[^/]+)/tag/(?P<tag>[^/]+)", self.delete_tag)])

    def create(self) -> None:
        body = json.loads(self._body())
        if not self._authorized():
            return
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        repo = Repo(self.server.root, repo_id)
        url = {"url": f"{self.server.url}/datasets/{repo_id}", "name": repo_id}
        if repo.exists():
            return self._json(409, url | {"error": "You already created this dataset repo"})
        repo.create()
        self._json(200, url)

    def validate_yaml(self) -> None:
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def refs(self, repo_id: str) -> None:
        self._json(200, self._repo(repo_id).refs())

    def info(self, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_id)
        sha = repo.resolve(unquote(revision))
        files = [{"rfilename": e["path"]} for e in repo.tree(sha, "", recursive=True) if e["type"] == "file"]
        self._json(200, {"id": repo.repo_id, "sha": sha, "private": False, "siblings": files, "tags": []})

    def tree(self, repo_id: str, revision: str, path: str | None) -> None:
        repo = self._repo(repo_id)
        recursive = parse_qs(urlsplit(self.path).query).get("recursive") == ["true"]
        self._json(200, repo.tree(repo.resolve(unquote(revision)), unquote(path or "").strip("/"), recursive))

    def resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._repo(repo_id)
        sha = repo.resolve(unquote(revision))
        content, blob, lfs = repo.read(sha, unquote(path))
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob}"', "Accept-Ranges": "bytes"}
        if lfs:
            headers |= {"X-Linked-Etag": f'"{lfs["oid"]}"', "X-Linked-Size": str(lfs["size"])}
        status, ranged = 200, self.headers.get("Range")
        if ranged:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged)
            if match:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(content) - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
                content, status = content[start : end + 1], 206
        self._send(status, content, headers | {"Content-Type": "application/octet-stream"})

    def preupload(self, repo_id: str, revision: str) -> None:
        body = json.loads(self._body())
        if not self._authorized():
            return
        self._repo(repo_id)
        files = [
            {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular"}
            | {"shouldIgnore": False}
            for f in body["files"]
        ]
        self._json(200, {"files": files})

    def lfs_batch(self, repo_id: str) -> None:
        body = json.loads(self._body())
        if not self._authorized():
            return
        repo = self._repo(repo_id)
        objects = []
        for item in body["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if not repo.lfs_object(item["oid"]).is_file():
                href = f"{self.server.url}/lfs/{repo_id}/{item['oid']}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, repo_id: str, oid: str) -> None:
        content = self._body()
        if hashlib.sha256(content).hexdigest() != oid:
            return self._error(400, "LFS object does not match its oid", "BadRequest")
        target = self._repo(repo_id).lfs_object(oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        self._send(200)

    def lfs_download(self, repo_id: str, oid: str) -> None:
        self._send(200, self._repo(repo_id).lfs_object(oid).read_bytes())

    def commit(self, repo_id: str, revision: str) -> None:
        items = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._authorized():
            return
        if "commits" in self.server.dropped:
            return self._drop_connection()
        repo = self._repo(repo_id)
        header = next(item["value"] for item in items if item["key"] == "header")
        message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
        sha = repo.commit(unquote(revision), [item for item in items if item["key"] != "header"], message)
        url = f"{self.server.url}/datasets/{repo_id}/commit/{sha}"
        self._json(200, {"success": True, "commitOid": sha, "commitUrl": url, "pullRequestUrl": None})

    def tag(self, repo_id: str, revision: str) -> None:
        body = json.loads(self._body())
        if not self._authorized():
            return
        if "tags" in self.server.dropped:
            return self._drop_connection()
        repo = self._repo(repo_id)
        sha = repo.resolve(unquote(revision))
        if body["tag"] in {tag["name"] for tag in repo.refs()["tags"]}:
            return self._error(409, f"Tag {body['tag']} already exists", "TagAlreadyExists")
        repo.git("tag", "-a", body["tag"], sha, "-m", body.get("message") or body["tag"])
        self._json(200, {})

    def delete_tag(self, repo_id: str, tag: str) -> None:
        if not self._authorized():
            return
        repo = self._repo(repo_id)
        if unquote(tag) not in {t["name"] for t in repo.refs()["tags"]}:
            raise NotFound("RevisionNotFound", f"Tag {tag} not found")
        repo.git("tag", "-d", unquote(tag))
        self._json(200, {})

    def drop(self, route: str) -> None:
        if json.loads(self._body())["on"]:
            self.server.dropped.add(route)
        else:
            self.server.dropped.discard(route)
        self._json(200, {})

    def _drop_connection(self) -> None:
        """A network failure: the request was read, the connection is reset without an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


@contextmanager
def serve_hub(root: Path, token: str) -> Iterator[str]:
    """Run this server in its own process over `root`; yield its URL."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, __file__, "--root", root, "--port", str(port), "--token", token]
    with serve_process(command, root.parent / "hub_server.log", f"{url}/api/datasets/none/none/refs"):
        yield url


@contextmanager
def serve_olah(root: Path, work: Path) -> Iterator[str]:
    """Run olah (a third-party Hub mirror) serving the git repositories under `root`, offline; yield its URL."""
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    config = work / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{work / "repos"}"\n'
        f'mirrors-path = ["{root}"]\nmirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        "[accessibility]\noffline = true\n"
    )
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "olah.server", "-c", config, "--log-path", work / "logs"]
    with serve_process(command, work / "olah.log", f"{url}/api/datasets/none/none/refs", cwd=work):
        yield url


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    HubServer(args.root, args.port, args.token).serve_forever()
