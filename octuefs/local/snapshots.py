"""Snapshots of an emulator's buckets on disk: how :class:`octuefs.local.emulator.Emulator` persists.

Persistence. fake-gcs-server's own ``filesystem`` backend cannot hold Octue buckets faithfully
(1.54: it maps names to nested files, so it drops directory markers ``dir/``, cannot hold both
``a`` and ``a/x``, and normalises ``.``/``..`` segments; see tests/contract/test_emulator.py).
So the server runs on its ``memory`` backend, and given a ``data_dir`` this module keeps the
buckets itself: snapshots taken over the JSON API, restored by :meth:`Emulator.start`.
Layout of ``data_dir``::

    emulator.log                 the server's log (stdout and stderr), appended to
    lock                         flock()ed while an Emulator runs here (one per data_dir)
    snapshot/manifest.json       the last complete snapshot (below); its rename is the commit
    snapshot/blobs/<sha256>      object bytes, one file per distinct content (hex SHA-256)
    snapshot/**/*.tmp-*          leftovers of an interrupted snapshot: ignored, then removed
    buckets/                     the filesystem backend's root (``backend="filesystem"`` only);
                                 imported once into a snapshot when there is none yet, then
                                 left alone (delete it by hand)

``manifest.json`` (files 0600, directories 0700)::

    {"format": "octuefs-emulator-snapshot/1", "taken": "2024-05-01T12:00:00+00:00",
     "buckets": {"<bucket>": [{"name": "a/x", "blob": "<sha256>", "size": 8, "md5Hash": "<b64>",
                               "crc32c": "<b64>", "contentType": "text/plain",
                               "metadata": {"k": "v"}}, ...]}}

Object entries use the JSON API's field names; ``contentEncoding``, ``contentDisposition``,
``contentLanguage``, ``cacheControl``, ``customTime`` and ``storageClass`` are kept too when
set, and the stable ``generation`` and ``metageneration`` the front shows (see
:mod:`octuefs.local.journal`; the server's own are new after each restore). Not kept: times,
ACLs, bucket settings, noncurrent versions. Changes since the manifest are in ``journal/``.

Crash safety: a blob is written to a temporary file, fsynced and renamed into place; so is the
manifest, last. Blobs no manifest references are deleted only after that commit. A crash at any
moment leaves the previous manifest and all its blobs intact. A snapshot copies each object
consistently (its download is pinned to the listed generation) but is not a point-in-time view
of a bucket under concurrent writes. A manifest that cannot be read, or whose blobs are missing,
makes :meth:`Emulator.start` fail with the path to move aside, rather than start empty (and then
snapshot that emptiness over the data).

Speed: restoring is bounded by the server, whose memory backend scans a bucket's objects on
every write: n objects into one bucket cost O(n^2) (measured, 2 CPUs: 1,000 small objects in
0.8 s, 2,000 in 2.5 s, 4,000 in 8 s). A snapshot in which nothing changed costs one listing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import urllib.parse
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from octuefs.durable import fsync_dir

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "octuefs-emulator-snapshot/1"
_KEPT_FIELDS = ("contentType", "contentEncoding", "contentDisposition", "contentLanguage", "cacheControl",
                "customTime", "storageClass", "metadata")  # fmt: skip
_WORKERS = 16  # parallel requests while restoring or snapshotting
_CHUNK = 1024 * 1024


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken or restored; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class SnapshotStats:
    """What one :meth:`Emulator.snapshot` did."""

    buckets: int
    objects: int
    downloaded: int  # objects whose bytes were fetched; the others' were in the store already
    written: bool  # False when nothing had changed since the last snapshot (nothing rewritten)


# --- snapshots: the store on disk ------------------------------------------------------------


class Store:
    """``data_dir/snapshot``: a manifest and content-addressed blobs (see the module docstring).
    Not thread-safe except :meth:`write_blob`; the Emulator's ``_snapshot_lock`` serializes."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs"
        self.manifest_path = root / "manifest.json"

    def prepare(self) -> dict | None:
        """Create the directories, remove leftovers of interrupted snapshots, check and return
        the manifest (None if there is none yet); SnapshotError if it is damaged."""
        for d in (self.root, self.blobs):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in [*self.root.glob("*.tmp-*"), *self.blobs.glob("*.tmp-*")]:
            leftover.unlink(missing_ok=True)
        return self._load()

    def damaged(self, why: str) -> SnapshotError:
        return SnapshotError(f"the snapshot in {self.root} is damaged ({why}); move that directory aside to start without it")

    def _load(self) -> dict | None:
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise self.damaged(f"{self.manifest_path.name}: {exc}") from None
        try:
            if manifest["format"] != SNAPSHOT_FORMAT:
                raise self.damaged(f"unknown format {manifest['format']!r}")
            entries = [(bucket, e["name"], e["blob"], int(e["size"])) for bucket, es in manifest["buckets"].items() for e in es]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise self.damaged(f"{self.manifest_path.name}: bad entry {exc!r}") from None
        bad = [f"gs://{b}/{name}" for b, name, blob, size in entries if not self._blob_has_size(blob, size)]
        if bad:
            raise self.damaged(f"{len(bad)} objects' bytes are missing or truncated, e.g. {bad[:3]}")
        return manifest

    def _blob_has_size(self, blob: str, size: int) -> bool:
        try:
            return (self.blobs / blob).stat().st_size == size
        except OSError:
            return False

    def blob_path(self, blob: str) -> Path:
        return self.blobs / blob

    def write_blob(self, chunks: Iterable[bytes], what: str, md5: str | None) -> str:
        """Store ``chunks`` and return their SHA-256 (the blob's name); SnapshotError if their
        MD5 (base64) is not ``md5``. Thread-safe: each call has its own temporary file."""
        tmp = self.blobs / f"blob.tmp-{uuid.uuid4().hex}"
        sha, digest = hashlib.sha256(), hashlib.md5()
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    sha.update(chunk)
                    digest.update(chunk)
                f.flush()
                os.fsync(f.fileno())
            if md5 is not None and b64encode(digest.digest()).decode() != md5:
                raise SnapshotError(f"{what}: the downloaded bytes do not match the object's MD5")
            os.replace(tmp, self.blobs / sha.hexdigest())
        finally:
            tmp.unlink(missing_ok=True)
        return sha.hexdigest()

    def commit(self, manifest: dict) -> None:
        """Make ``manifest`` the snapshot (atomically, durably). Blobs it no longer names stay
        until :meth:`collect`."""
        fsync_dir(self.blobs)  # the new blobs' names, before the manifest that names them
        tmp = self.root / f"manifest.json.tmp-{uuid.uuid4().hex}"
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
                json.dump(manifest, f, ensure_ascii=False, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root)

    def collect(self, keep: set[str]) -> None:
        """Delete every blob not in ``keep`` (and no temporary file being written)."""
        for path in self.blobs.iterdir():
            if path.name not in keep and ".tmp-" not in path.name:
                path.unlink(missing_ok=True)


def in_parallel(fn: Callable[..., None], jobs: list[tuple]) -> None:
    """``fn(*job)`` for every job on a few threads; the first failure cancels the rest and is raised."""
    if not jobs:
        return
    with concurrent.futures.ThreadPoolExecutor(min(_WORKERS, len(jobs))) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# --- snapshots: talking to the server --------------------------------------------------------


class HTTPError(Exception):
    def __init__(self, status: int, what: str, body: bytes):
        super().__init__(f"{what}: HTTP {status} {body[:300]!r}")
        self.status = status


class Http:
    """Keep-alive HTTP/1.1 to the emulator: one connection per thread (http.client, so no proxy
    can capture it). A context manager: leaving it closes every connection it opened."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []  # guarded by _lock
        self._lock = threading.Lock()

    def __enter__(self) -> Http:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    def open(self, method: str, path: str, body: bytes | Callable[[], Iterable[bytes]] | None = None,
             headers: dict[str, str] | None = None) -> http.client.HTTPResponse:  # fmt: skip
        """Send a request and return the response, which the caller must read to its end.
        ``body`` may be a function returning an iterable, so that it can be sent again when an
        idle connection turns out to be closed."""
        for _attempt in range(2):
            conn = getattr(self._local, "conn", None)
            fresh = conn is None
            if fresh:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                with self._lock:
                    self._all.append(conn)
            try:
                conn.request(method, path, body=body() if callable(body) else body, headers=headers or {})
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                self._local.conn = None
                if fresh:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs) -> dict:
        with self.open(method, path, **kwargs) as resp:
            data = resp.read()
        if resp.status != 200:
            raise HTTPError(resp.status, f"{method} {path}", data)
        return json.loads(data)


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def manifest_entry(resource: dict) -> dict:
    """A manifest entry (without its blob) from an object resource."""
    entry = {"name": resource["name"], "size": int(resource.get("size", 0))}
    for key in ("md5Hash", "crc32c", *_KEPT_FIELDS):
        value = resource.get(key)
        if value in (None, "", {}) or (key == "customTime" and value.startswith("0001-")):  # Go's zero time
            continue
        entry[key] = value
    return entry


def _list_objects(client: Http, bucket: str) -> Iterator[dict]:
    token = None
    while True:
        query = {"projection": "full", "maxResults": "1000", **({"pageToken": token} if token else {})}
        page = client.json("GET", f"/storage/v1/b/{_q(bucket)}/o?{urllib.parse.urlencode(query)}")
        yield from page.get("items", [])
        token = page.get("nextPageToken")
        if not token:
            return


def dump(client: Http, store: Store, previous: dict | None) -> tuple[dict, SnapshotStats]:
    """Copy the server's buckets into ``store``; return the manifest now committed (or
    ``previous`` if nothing changed) and what was done. Bytes already in the store (same MD5,
    CRC32C and size as an object of ``previous``) are not downloaded again."""
    started = time.monotonic()
    known = {}
    for entries in (previous or {"buckets": {}})["buckets"].values():
        known.update({(e.get("md5Hash"), e.get("crc32c"), e["size"]): e["blob"] for e in entries if e.get("md5Hash")})
    buckets: dict[str, list[dict]] = {}
    fetch: list[tuple[str, dict, dict]] = []
    for bucket in [b["name"] for b in client.json("GET", "/storage/v1/b").get("items", [])]:
        try:
            resources = list(_list_objects(client, bucket))
        except HTTPError as exc:
            if exc.status == 404:  # deleted since the bucket listing
                continue
            raise
        buckets[bucket] = []
        for resource in resources:
            entry = manifest_entry(resource)
            blob = known.get((entry.get("md5Hash"), entry.get("crc32c"), entry["size"]))
            if blob is not None:
                entry["blob"] = blob
            else:
                fetch.append((bucket, entry, resource))
            buckets[bucket].append(entry)
    if fetch:
        in_parallel(lambda *job: _fetch(client, store, *job), fetch)
        buckets = {b: [e for e in entries if "blob" in e] for b, entries in buckets.items()}  # drop the deleted
    stats = SnapshotStats(len(buckets), sum(map(len, buckets.values())), len(fetch), written=False)
    if previous is not None and previous["buckets"] == buckets:
        return previous, stats
    taken = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = {"format": SNAPSHOT_FORMAT, "taken": taken, "buckets": buckets}
    store.commit(manifest)
    log.debug("snapshot of %s: %d objects in %d buckets, %d downloaded, %.2fs",
              store.root, stats.objects, stats.buckets, stats.downloaded, time.monotonic() - started)  # fmt: skip
    return manifest, dataclasses.replace(stats, written=True)


def _fetch(client: Http, store: Store, bucket: str, entry: dict, resource: dict) -> None:
    """Download one listed object's bytes into the store and set ``entry["blob"]``; leave the
    entry without a blob if the object was deleted since the listing."""
    for _attempt in range(10):  # each retry follows a replacement seen since the listing
        what = f"gs://{bucket}/{resource['name']}"
        path = f"/storage/v1/b/{_q(bucket)}/o/{_q(resource['name'])}"
        # pinned to the listed generation; Accept-Encoding: gzip, or gzip objects come decompressed
        query = urllib.parse.urlencode({"alt": "media", "generation": resource["generation"]})
        with client.open("GET", f"/download{path}?{query}", headers={"Accept-Encoding": "gzip"}) as resp:
            if resp.status == 200:
                entry["blob"] = store.write_blob(iter(lambda: resp.read(_CHUNK), b""), what, entry.get("md5Hash"))
                return
            data = resp.read()
        if resp.status != 404:
            raise HTTPError(resp.status, f"download {what}", data)
        try:  # replaced or deleted since the listing
            resource = client.json("GET", path)
        except HTTPError as exc:
            if exc.status == 404:
                return
            raise
        entry.clear()
        entry.update(manifest_entry(resource))
    raise SnapshotError(f"gs://{bucket}/{entry['name']} kept changing while being copied")


def upload(client: Http, store: Store, bucket: str, entry: dict) -> dict:
    """Create one object from its manifest entry, in one multipart request; return the server's answer."""
    boundary = uuid.uuid4().hex
    resource = {"name": entry["name"], **{k: entry[k] for k in _KEPT_FIELDS if k in entry}}
    content_type = entry.get("contentType")  # the server takes it from the media part's header
    head = (
        f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(resource)}\r\n"
        f"--{boundary}\r\n" + (f"Content-Type: {content_type}\r\n" if content_type else "") + "\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    blob = store.blob_path(entry["blob"])

    def body() -> Iterator[bytes]:
        yield head
        with open(blob, "rb") as f:
            yield from iter(lambda: f.read(_CHUNK), b"")
        yield tail

    length = len(head) + entry["size"] + len(tail)
    headers = {"Content-Type": f"multipart/related; boundary={boundary}", "Content-Length": str(length)}
    answer = client.json("POST", f"/upload/storage/v1/b/{_q(bucket)}/o?uploadType=multipart", body=body, headers=headers)
    if entry.get("md5Hash") and answer.get("md5Hash") != entry["md5Hash"]:
        raise store.damaged(f"blobs/{entry['blob']} does not hold the bytes of gs://{bucket}/{entry['name']}")
    return answer
