"""Reads answered with read_buf (octuefs.fuse.bufreads), through a real mount, where a mistake
in who frees libfuse's memory would show: the daemon must neither crash (a double free, a
use after free) nor grow (a vector or buffer never freed), whatever the read meets."""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import sys
import threading
import time

from octuefs.mount import read_state

MiB = 1024 * 1024
NO_METADATA_CACHES = ("--stat-ttl", "0", "--list-ttl", "0", "--attr-timeout", "0", "--entry-timeout", "0")


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_many_reads_leave_the_daemons_memory_flat(mount):
    data = random.Random(7).randbytes(4 * MiB)
    mount.bucket.upload_bytes("leak/f.bin", data)
    pid = int(read_state(str(mount.path))["pid"])
    path = mount.path / "leak" / "f.bin"
    assert path.read_bytes() == data
    # O_DIRECT: every read goes to the daemon (the page cache would answer repeats).
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT wants
    try:
        for _ in range(200):  # warm up allocators and caches
            os.preadv(fd, [buf], 0)
        before = _rss(pid)
        for i in range(2000):  # 2 GiB through 1 MiB buffers: a leak of them is plain to see
            off = (i % 4) * MiB
            assert os.preadv(fd, [buf], off) == MiB
        for i in range(20000):  # small reads: the vectors themselves
            assert os.preadv(fd, [memoryview(buf)[:4096]], (i * 4096) % (4 * MiB)) == 4096
        assert buf[:4096] == data[(19999 * 4096) % (4 * MiB):][:4096]
        grown = _rss(pid) - before
    finally:
        buf.close()
        os.close(fd)
    assert grown < 64 * MiB, f"daemon RSS grew {grown / MiB:.0f} MiB over 22,000 reads"


def test_odd_reads_give_the_right_bytes_and_the_daemon_lives(mount):
    data = random.Random(8).randbytes(3 * MiB + 17)
    mount.bucket.upload_bytes("odd/f.bin", data)
    path = mount.path / "odd" / "f.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 0, 5) == b""
        assert os.pread(fd, 4096, len(data)) == b""  # at the end
        assert os.pread(fd, 4096, len(data) + 10 * MiB) == b""  # far past it
        assert os.pread(fd, 8 * MiB, 0) == data[:8 * MiB]  # bigger than max_read: split by the kernel
        assert os.pread(fd, 100, len(data) - 7) == data[-7:]
    finally:
        os.close(fd)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:  # page faults
        assert m[len(data) - 5000:] == data[-5000:]
        assert bytes(m) == data
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 2 * MiB)
    try:  # a direct read across the end: the short tail only
        assert os.preadv(fd, [buf], 2 * MiB) == MiB + 17
        assert buf[:MiB + 17] == data[2 * MiB:]
    finally:
        buf.close()
        os.close(fd)


def test_reads_of_a_file_being_written_truncated_renamed_and_unlinked(mount):
    path = mount.path / "w.bin"
    data = random.Random(9).randbytes(2 * MiB)
    with open(path, "wb") as f:  # dirty: answered from the staging copy, then the journal's
        f.write(data)
        f.flush()
        with open(path, "rb") as r:
            assert r.read() == data
    assert path.read_bytes() == data
    stop = threading.Event()
    errors: list[BaseException] = []

    def shrink_and_grow():
        try:
            with open(path, "r+b") as w:
                while not stop.is_set():
                    w.truncate(100)
                    w.truncate(2 * MiB)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MiB)
    t = threading.Thread(target=shrink_and_grow)
    t.start()
    try:
        for _ in range(300):  # a read racing a truncate: some bytes, never a crash
            assert 0 <= os.preadv(fd, [buf], MiB) <= MiB
    finally:
        stop.set()
        t.join()
        buf.close()
    try:
        os.rename(path, mount.path / "moved.bin")
        assert os.pread(fd, 50, 0) == data[:50]
        os.unlink(mount.path / "moved.bin")
        assert os.pread(fd, 50, 50) == data[50:100]  # unlinked while open: still readable
    finally:
        os.close(fd)
    assert not (mount.path / "moved.bin").exists()
    (mount.path / "after.txt").write_bytes(b"alive")
    assert (mount.path / "after.txt").read_bytes() == b"alive"


def test_a_read_that_fails_in_the_daemon_gives_an_error_and_the_mount_lives_on(mount_factory):
    mount = mount_factory(*NO_METADATA_CACHES)
    old = random.Random(10).randbytes(48 * MiB)
    mount.bucket.upload_bytes("stale/f.bin", old)
    path = mount.path / "stale" / "f.bin"
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    try:
        assert os.preadv(fd, [buf], 0) == 4096
        mount.bucket.upload_bytes("stale/f.bin", b"new" * 1000)  # the open generation is gone
        failures = 0
        for off in range(40 * MiB, 48 * MiB, 512 * 1024):  # blocks not fetched (nor read ahead)
            try:
                n = os.preadv(fd, [buf], off)
                assert buf[:n] == old[off:off + n]  # if it was cached: the old bytes, whole
            except OSError:
                failures += 1
    finally:
        buf.close()
        os.close(fd)
    assert failures >= 1  # (the point: reads that fail in the daemon, after it set up the vector)
    assert path.read_bytes() == b"new" * 1000  # the daemon is still there, and right


def test_reads_while_the_bucket_is_unreachable_pending_files_and_a_reader_killed_midway(private):
    m = private.mount()
    cold = random.Random(11).randbytes(8 * MiB)
    private.bucket().upload_bytes("cold.bin", cold)
    os.listdir(m.path)
    private.freeze(m)
    try:
        pending = random.Random(12).randbytes(3 * MiB + 5)
        (m.path / "pending.bin").write_bytes(pending)  # closed: its upload waits in the journal
        fd = os.open(m.path / "pending.bin", os.O_RDONLY | os.O_DIRECT)
        buf = mmap.mmap(-1, 4 * MiB)
        try:  # answered from the journal's copy
            assert os.preadv(fd, [buf], 0) == len(pending) and buf[:len(pending)] == pending
        finally:
            buf.close()
            os.close(fd)
        # A reader waiting on the frozen bucket, killed: its read is answered to no one later.
        reader = subprocess.Popen([sys.executable, "-c", f"open({str(m.path / 'cold.bin')!r}, 'rb').read()"])
        time.sleep(1.0)
        assert reader.poll() is None  # still waiting for the bucket
        reader.kill()
        reader.wait(10)
    finally:
        private.thaw()
    assert (m.path / "cold.bin").read_bytes() == cold
    assert (m.path / "pending.bin").read_bytes() == pending
    m.sync()
    assert private.bucket().read_range("pending.bin", 0, 8 * MiB) == pending
