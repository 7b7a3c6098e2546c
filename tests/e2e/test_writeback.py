"""Write-back through a real mount: crashes, an unreachable bucket, conflicts, fsync, unmount.

Each test gets its own fake-gcs-server (the ``private`` fixture of conftest.py), so it can be
frozen with SIGSTOP (requests hang, as with a network outage) without disturbing other tests.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading

import pytest

from octuefs.mount import read_state, wait_for_exit

from .conftest import force_unmount, run_octuefs, wait_until

pytestmark = pytest.mark.fuse


def kill_daemon(mount) -> None:
    pid = read_state(str(mount.path))["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for_exit(pid, 10)
    force_unmount(mount.path)


def remount(mount):
    run_octuefs("mount", mount.spec, str(mount.path), "--cache-dir", str(mount.cache), "--log-file", str(mount.log), "-vv")


def test_kill_9_with_uploads_pending_then_remount_finishes_them(private):
    m = private.mount()
    (m / "before.csv").write_bytes(b"landed before")
    m.sync()
    private.freeze(m)
    written = {}
    for i in range(5):
        data = os.urandom(2000 + i)
        (m / f"f{i}.csv").write_bytes(data)  # close returns: the upload waits in the journal
        os.setxattr(m / f"f{i}.csv", "user.octue.tags", json.dumps({"i": i}).encode())
        written[f"f{i}.csv"] = data
    unclosed = open(m / "unclosed.csv", "wb")
    unclosed.write(b"never closed")
    unclosed.flush()
    kill_daemon(m)  # the daemon dies with five uploads pending and a file half written
    with pytest.raises(OSError):
        unclosed.close()  # ENOTCONN: its daemon is gone
    private.thaw()  # requests already on the wire may still land now; the rest waits in the journal

    remount(m)
    m.sync()
    bucket = private.bucket()
    names = {o.name for o in bucket.list_all("")[0]}
    assert names == {"before.csv", *written}  # the unclosed write never became an object
    for name, data in written.items():
        assert bucket.read_range(name, 0, 1 << 20) == data
        assert json.loads(bucket.stat(name).metadata["octue__tags"]) == {"i": int(name[1])}
    assert "resuming" in m.log_text() and "were still open for writing" in m.log_text()


def test_everything_arrives_after_the_bucket_was_unreachable(private):
    m = private.mount()
    private.freeze(m)
    for i in range(10):
        (m / f"x{i}.bin").write_bytes(bytes([i]) * 5000)

    def uploads() -> list[dict]:
        return json.loads(run_octuefs("status", str(m.path), "--json", timeout=60).stdout)["uploads"]

    # status answers while uploads are under way into a bucket that does not answer
    assert wait_until(lambda: any(r["state"] == "running" for r in uploads()), timeout=30, interval=0.2)
    rows = uploads()
    assert len(rows) == 10 and {r["state"] for r in rows} <= {"queued", "running"}
    assert sorted(os.listdir(m.path)) == [f"x{i}.bin" for i in range(10)]  # the mount shows them meanwhile
    assert (m / "x3.bin").read_bytes() == bytes([3]) * 5000
    private.thaw()
    m.sync()
    for i in range(10):
        assert private.bucket().read_range(f"x{i}.bin", 0, 10000) == bytes([i]) * 5000


def test_a_concurrent_change_is_preserved_and_reported(private):
    m = private.mount()
    bucket = private.bucket()
    bucket.upload_bytes("shared.csv", b"version 1")
    with open(m / "shared.csv", "r+b") as f:
        assert f.read() == b"version 1"
        bucket.upload_bytes("shared.csv", b"their version 2")  # another machine, meanwhile
        f.seek(0)
        f.write(b"my version 2")
    m.sync()
    objects = {o.name: o for o in bucket.list_all("")[0]}
    assert bucket.read_range("shared.csv", 0, 100) == b"their version 2"
    [copy] = [n for n in objects if n.startswith("shared.octuefs-conflict-")]
    assert bucket.read_range(copy, 0, 100) == b"my version 2"
    assert "conflict" in m.log_text() and copy in m.log_text()
    status = run_octuefs("status", str(m.path)).stdout
    assert "conflict: shared.csv" in status and copy in status


def test_fsync_returns_only_once_the_file_is_in_the_bucket(private):
    m = private.mount()
    private.freeze(m)
    done = threading.Event()

    def writer():
        with open(m / "fsynced.bin", "wb") as f:
            f.write(b"must be durable")
            f.flush()
            os.fsync(f.fileno())
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert not done.wait(1.5)  # the bucket is unreachable: fsync keeps waiting
    finally:
        private.thaw()
    t.join(60)
    assert done.is_set()
    assert private.bucket().read_range("fsynced.bin", 0, 100) == b"must be durable"


def test_unmount_writes_everything_out_first(private):
    m = private.mount()
    private.freeze(m)
    for i in range(5):
        (m / f"u{i}.txt").write_bytes(f"file {i}".encode())
    threading.Timer(1.5, private.thaw).start()
    result = run_octuefs("unmount", str(m.path), timeout=120)
    assert not os.path.ismount(m.path)
    assert "5/5" in result.stderr  # progress was shown
    for i in range(5):
        assert private.bucket().read_range(f"u{i}.txt", 0, 100) == f"file {i}".encode()


def test_unmount_can_leave_uploads_for_the_next_mount(private):
    m = private.mount()
    private.freeze(m)
    (m / "later.txt").write_bytes(b"next time")
    run_octuefs("unmount", "--leave-pending", str(m.path), timeout=60)
    assert not os.path.ismount(m.path)
    assert len(os.listdir(m.cache / "pending")) == 1  # left, sealed with its journal record, for the next mount
    private.thaw()
    remount(m)
    assert (m / "later.txt").read_bytes() == b"next time"
    m.sync()
    assert private.bucket().read_range("later.txt", 0, 100) == b"next time"


def test_a_full_cache_disk_gives_enospc_and_loses_nothing_closed(mount_factory, tmp_path):
    cache = tmp_path / "small-cache"
    cache.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(cache)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        m = mount_factory("--cache-dir", str(cache))
        (m / "small.bin").write_bytes(b"s" * 500_000)
        with pytest.raises(OSError) as info:
            with open(m / "huge.bin", "wb") as f:
                for _ in range(8):
                    f.write(b"h" * 1_000_000)
        assert info.value.errno == errno.ENOSPC
        m.sync()
        assert m.bucket.read_range("small.bin", 0, 1 << 20) == b"s" * 500_000
        run_octuefs("unmount", str(m.path))
    finally:
        force_unmount(tmp_path / "mnt0")
        subprocess.run(["umount", "-l", str(cache)])
