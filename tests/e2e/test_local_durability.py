"""``octuefs mount --local``: what a mount acknowledged survives ``kill -9`` of the daemon and its
emulator, with its generations, so that uploads recovered after the crash land normally.

Each test mounts with its own cache directory, kills the daemon and its fake-gcs-server child by
PID, lazily unmounts the dead mount, and mounts again with the same cache directory; every mount
is unmounted at teardown, even on failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from octuefs.mount import read_state

from .conftest import _fuse_available, force_unmount, is_mounted, run_octuefs

pytestmark = [pytest.mark.fuse, pytest.mark.emulator]


@pytest.fixture
def local(tmp_path):
    """``local.mount()`` mounts bucket ``durable`` with --local on one cache dir; ``local.crash()``
    kills the daemon and its emulator with SIGKILL."""
    if reason := _fuse_available():
        pytest.skip(reason)

    class Local:
        mp, cache, log = tmp_path / "mnt", tmp_path / "cache", tmp_path / "octuefs.log"

        def mount(self) -> None:
            run_octuefs("mount", "--local", "durable", str(self.mp), "--cache-dir", str(self.cache),
                        "--log-file", str(self.log), "-vv")  # fmt: skip
            assert os.path.ismount(self.mp)

        def crash(self) -> None:
            pid = int(read_state(str(self.mp))["pid"])
            children = _children(pid)
            for victim in [pid, *children]:
                os.kill(victim, signal.SIGKILL)
            subprocess.run(["fusermount3", "-uz", str(self.mp)], capture_output=True)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in [pid, *children]):
                assert time.monotonic() < deadline, "a killed process is still there"
                time.sleep(0.05)

    local = Local()
    local.mp.mkdir()
    try:
        yield local
    finally:
        if is_mounted(local.mp):
            run_octuefs("unmount", str(local.mp), check=False, timeout=60)
        force_unmount(local.mp)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_synced_file_survives_kill_9_with_its_metadata(local):
    local.mount()
    path = local.mp / "runs" / "data.csv"
    path.parent.mkdir()
    path.write_bytes(b"a,b\n1,2\n")
    os.setxattr(path, "user.octue.labels", b"raw cleaned")
    os.setxattr(path, "user.octue.tags.site", b"north")
    run_octuefs("sync", str(local.mp))
    octue = {name: os.getxattr(path, name) for name in os.listxattr(path) if name.startswith("user.octue.")}
    local.crash()

    local.mount()
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert {name: os.getxattr(path, name) for name in os.listxattr(path) if name.startswith("user.octue.")} == octue
    assert os.getxattr(path, "user.octue.labels") == b"cleaned raw"


def test_an_upload_pending_at_the_crash_lands_as_the_same_file(local):
    local.mount()
    names = [f"f{i:02d}.txt" for i in range(20)]
    for name in names:
        (local.mp / name).write_bytes(b"version 1 of " + name.encode())
    run_octuefs("sync", str(local.mp))
    for name in names:  # a burst of closes: their uploads are held back, so some are pending
        (local.mp / name).write_bytes(b"version 2, longer, of " + name.encode())
    pending = os.listdir(local.cache / "pending")
    local.crash()
    assert pending, "no upload was pending at the crash: the test proves nothing"

    local.mount()
    run_octuefs("sync", str(local.mp))
    listing = sorted(os.listdir(local.mp))
    assert not [n for n in listing if "octuefs-conflict" in n], listing
    assert listing == names
    for name in names:
        assert (local.mp / name).read_bytes() == b"version 2, longer, of " + name.encode()
