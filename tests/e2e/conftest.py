"""End-to-end fixtures: a real kernel mount started with the ``octuefs`` command.

Each ``mount`` is of a fresh bucket on the session's fake-gcs-server. Teardown always runs:
``octuefs unmount``, then ``fusermount -uz`` if the mount is still there, then the daemon is
ended by its PID. A test fails if the daemon's log holds a traceback. ``private`` gives a test a
fake-gcs-server of its own, which it may freeze (SIGSTOP) to play a network outage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import octuefs
from octuefs.mount import MountError, read_state, wait_for_exit

E2E = Path(__file__).resolve().parent
# The checkout whose octuefs this session imported (a worktree, say, not the one pip installed).
SOURCE_ROOT = str(Path(octuefs.__file__).resolve().parents[1])


def pytest_collection_modifyitems(items):
    """Every test here mounts for real: mark it ``fuse`` (``-m "not fuse"`` leaves them out, and
    scripts/test's tests/require_all.py fails the run if one is skipped)."""
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.fuse)


@pytest.fixture(scope="session", autouse=True)
def _octuefs_under_test():
    """Every ``octuefs`` these tests start (the command and the daemon it forks) runs the code
    this session imported, not whatever checkout pip installed: that code's checkout goes first
    on PYTHONPATH, which they inherit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in (SOURCE_ROOT, os.environ.get("PYTHONPATH")) if p))
        yield


def octuefs_command() -> list[str]:
    exe = shutil.which("octuefs")
    return [exe] if exe else [sys.executable, "-m", "octuefs"]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed; return its last answer."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


def run_octuefs(*args: str, check: bool = True, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run([*octuefs_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"octuefs {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


@dataclasses.dataclass
class Mount:
    path: Path
    bucket: object  # a GCSBucket on the emulator, for assertions on the bucket's state
    log: Path
    cache: Path
    spec: str

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def sync(self) -> subprocess.CompletedProcess:
        """``octuefs sync``: wait until write-back has put every closed file in the bucket. Exit
        status 3 (a conflict reported: a version went beside its object) is not an error here;
        a test that means to check it looks at the result."""
        result = run_octuefs("sync", str(self.path), check=False)
        if result.returncode not in (0, 3):
            raise AssertionError(f"octuefs sync {self.path} failed ({result.returncode}):\n{result.stderr}")
        return result

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _fuse_available() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "no fusermount"
    return None


def is_mounted(path: Path) -> bool:
    """From /proc/mounts: os.path.ismount says False for a mount whose daemon is broken."""
    target = os.path.abspath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def force_unmount(path: Path) -> None:
    state = read_state(str(path))
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
    if state and state.get("pid"):
        pid = int(state["pid"])
        try:
            wait_for_exit(pid, 10)
        except MountError:
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _mounting(emulator, base: Path):
    """Yield ``make(*extra_args, prefix="", bucket=None, parent=None)``, which mounts a bucket on
    the emulator (mountpoints, caches and logs under ``base``); on leaving, every mount made is
    unmounted (forced if need be, its daemon ended by PID) and a traceback in a log fails."""
    if reason := _fuse_available():
        pytest.skip(reason)
    from octuefs.storage.gcs import GCSBucket

    mounts: list[Mount] = []

    def make(*extra: str, prefix: str = "", bucket: str | None = None, parent: Path | None = None) -> Mount:
        """``parent``: where to make the mountpoint (default ``base``)."""
        name = bucket or f"e2e-{uuid.uuid4().hex[:12]}"
        emulator.create_bucket(name)
        n = len(mounts)
        mp, cache, log = (parent or base) / f"mnt{n}", base / f"cache{n}", base / f"octuefs{n}.log"
        mp.mkdir()
        spec = name + (f"/{prefix}" if prefix else "")
        m = Mount(mp, GCSBucket(name), log, cache, spec)
        mounts.append(m)
        run_octuefs("mount", spec, str(mp), "--cache-dir", str(cache), "--log-file", str(log), "-vv", *extra)
        assert os.path.ismount(mp), m.log_text()[-2000:]
        return m

    try:
        yield make
    finally:
        errors = []
        for m in mounts:
            if os.path.ismount(m.path):
                result = run_octuefs("unmount", str(m.path), check=False, timeout=60)
                if result.returncode != 0:
                    errors.append(f"unmount {m.path}: {result.stderr.strip()}")
            force_unmount(m.path)
            text = m.log_text()
            if "Traceback" in text:
                errors.append(f"traceback in the daemon log {m.log}:\n{text[-4000:]}")
        if errors:
            pytest.fail("\n".join(errors))


@pytest.fixture
def mount_factory(emulator, tmp_path):
    """Mount buckets on the emulator: ``mount_factory(*extra_args, prefix="", bucket=None)``."""
    with _mounting(emulator, tmp_path) as make:
        yield make


@pytest.fixture
def counted(emulator, monkeypatch):
    """A proxy with no faults in front of the session's emulator, counting the requests of the
    mounts made now by kind (downloads, listings, ...); stopped at the end of the test."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(emulator.url, seed=1) as p:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
        yield p


@pytest.fixture(scope="module")
def module_mount_factory(emulator, tmp_path_factory):
    """``mount_factory`` for a whole module: a test module whose tests each work in a directory
    of their own shares one mount (a mount costs seconds on these machines)."""
    with _mounting(emulator, tmp_path_factory.mktemp("module-mounts")) as make:
        yield make


@pytest.fixture
def public_dir():
    """A directory any user may traverse (pytest's tmp dirs are private to root), for
    mountpoints another user reaches."""
    path = Path(tempfile.mkdtemp(prefix="octuefs-pub-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mount(mount_factory):
    return mount_factory()


@pytest.fixture
def private(monkeypatch, mount_factory):
    """A fresh emulator of this test's own, a bucket on it, and a way to mount that bucket."""
    from octuefs.local.emulator import Emulator
    from octuefs.storage.gcs import GCSBucket

    server = Emulator(kill_with_parent=True).start()
    frozen = {"on": False}

    class Private:
        url = server.url
        name = f"wb-{uuid.uuid4().hex[:10]}"

        def mount(self, *extra: str):
            return mount_factory(*extra, bucket=self.name)

        def bucket(self):
            return GCSBucket(self.name)

        def freeze(self, mount=None):
            if mount is not None:
                os.listdir(mount.path)  # a fresh listing answers lookups of new names meanwhile
            os.kill(server.pid, signal.SIGSTOP)
            frozen["on"] = True

        def thaw(self):
            os.kill(server.pid, signal.SIGCONT)
            frozen["on"] = False

    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        server.create_bucket(Private.name)
        yield Private()
    finally:
        if frozen["on"]:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()
