"""Reads through a real mount: large objects byte for byte, the kernel page cache kept across
opens of an unchanged object, and never a stale byte once the object is replaced.

Whether the kernel kept a file's pages is asked with mincore(2) on a fresh mapping, right after
open(2) and before any read: resident pages then are pages the kernel did not drop on open.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import random
import subprocess

import pytest

from .conftest import wait_until

MiB = 1024 * 1024

# Only the metadata caches would delay seeing a change made in the bucket; switch them off.
NO_METADATA_CACHES = ("--stat-ttl", "0", "--list-ttl", "0", "--attr-timeout", "0", "--entry-timeout", "0")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_bytes(fd: int, size: int) -> int:
    """How much of the file behind ``fd`` the kernel page cache holds (no read, no fault)."""
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        return sum(v & 1 for v in vec) * mmap.PAGESIZE
    finally:
        _libc.munmap(addr, size)


def resident_after_open(path, size: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident_bytes(fd, size)
    finally:
        os.close(fd)


def kept_across_reopen(path, size: int, read) -> bool:
    """Read the whole file with ``read(path)``, then reopen it: are all its pages still cached?

    This VM reclaims page cache now and then, even with memory free, so a page can go between
    the read and the reopen for reasons that have nothing to do with open; a few tries tell the
    two apart (a reopen that drops the cache drops all of it, every time).
    """
    for _ in range(3):
        read(path)
        if resident_after_open(path, size) == size:
            return True
    return False


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_64_mib_object_reads_back_byte_for_byte(mount):
    data = random.Random(64).randbytes(64 * MiB)
    mount.bucket.upload_bytes("big/data.bin", data)
    path = mount / "big/data.bin"
    assert mount.bucket.read_range("big/data.bin", 0, len(data)) == data  # what the bucket holds

    cat = subprocess.run(["cat", str(path)], capture_output=True, check=True)
    assert sha256(cat.stdout) == sha256(data)
    dd_args = ["dd", f"if={path}", "bs=4M", "skip=3", "count=5", "status=none"]
    dd = subprocess.run(dd_args, capture_output=True, check=True)
    assert dd.stdout == data[12 * MiB : 32 * MiB]
    with open(path, "rb") as f:
        rng = random.Random(1)
        for _ in range(50):
            offset, size = rng.randrange(len(data)), rng.choice([1, 4096, 100_000, MiB, 3 * MiB])
            f.seek(offset)
            assert f.read(size) == data[offset : offset + size]
        f.seek(0)
        assert sha256(f.read()) == sha256(data)


def test_a_cold_random_read_fetches_what_it_needs(mount_factory):
    mount = mount_factory()
    data = random.Random(7).randbytes(48 * MiB)
    mount.bucket.upload_bytes("r.bin", data)
    fd = os.open(mount / "r.bin", os.O_RDONLY)
    try:
        for offset in (40 * MiB + 5, 3 * MiB - 7, 47 * MiB, 17 * MiB + 123_456):
            assert os.pread(fd, 300_000, offset) == data[offset : offset + 300_000]
    finally:
        os.close(fd)


def test_an_unchanged_file_is_served_from_the_page_cache_a_replaced_one_never(mount_factory):
    mount = mount_factory(*NO_METADATA_CACHES)
    size = 8 * MiB
    path = mount / "f.bin"
    # Same size and same mtime every time (gcloud --preserve-posix keeps mtimes in this key), so
    # the kernel cannot tell the versions apart by their attributes: only the generation can.
    same_mtime = {"goog-reserved-file-mtime": "1700000000"}
    for version in range(4):
        data = random.Random(version).randbytes(size)
        mount.bucket.upload_bytes("f.bin", data, same_mtime)
        assert os.stat(path).st_mtime == 1700000000 and os.stat(path).st_size == size
        # A new generation: the kernel must drop what it held of the old one at open.
        assert resident_after_open(path, size) == 0
        assert sha256(path.read_bytes()) == sha256(data)
        # Unchanged: the next opens keep the pages, so reads need not reach the daemon.
        assert kept_across_reopen(path, size, lambda p: p.read_bytes())
        cat = subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout
        assert sha256(cat) == sha256(data)
        assert kept_across_reopen(path, size, lambda p: subprocess.run(["cat", str(p)], capture_output=True))


def test_a_file_replaced_with_another_size_reads_its_new_bytes(mount_factory):
    mount = mount_factory(*NO_METADATA_CACHES)
    path = mount / "g.bin"
    for size in (5 * MiB, 2 * MiB + 17, 9 * MiB, 100):
        data = os.urandom(size)
        mount.bucket.upload_bytes("g.bin", data)
        assert path.read_bytes() == data
        assert os.stat(path).st_size == size


def test_a_file_written_through_the_mount_then_replaced_elsewhere_reads_the_new_bytes(mount_factory, tmp_path):
    mount = mount_factory(*NO_METADATA_CACHES)
    path = mount / "w.bin"
    mine = os.urandom(3 * MiB)
    path.write_bytes(mine)
    assert path.read_bytes() == mine
    mount.sync()  # ours is in the bucket before theirs replaces it (else: a conflict copy)
    theirs = os.urandom(3 * MiB)
    mount.bucket.upload_bytes("w.bin", theirs)
    assert path.read_bytes() == theirs


def test_an_open_file_never_mixes_two_versions(mount_factory):
    mount = mount_factory(*NO_METADATA_CACHES)
    old, new = os.urandom(32 * MiB), os.urandom(32 * MiB)
    mount.bucket.upload_bytes("m.bin", old)
    with open(mount / "m.bin", "rb", buffering=0) as f:
        assert f.read(MiB) == old[:MiB]  # starts the read (and read-ahead) of the old version
        mount.bucket.upload_bytes("m.bin", new)
        offset = MiB
        while offset < len(old):
            try:
                chunk = os.pread(f.fileno(), MiB, offset)
            except OSError as exc:  # the rest of the old version is gone from the bucket
                assert exc.errno == errno.ESTALE
                break
            assert chunk == old[offset : offset + MiB]
            offset += MiB
    # close(2) sends RELEASE asynchronously: until the daemon has it the file still counts as
    # open, and an open that overtakes it shares the open file's version (ESTALE past what was
    # cached). Nothing outside the daemon says when RELEASE has landed: read until a fresh open
    # gets the new version.
    def fresh_open_reads_new() -> bool:
        try:
            return (mount / "m.bin").read_bytes() == new
        except OSError as exc:
            if exc.errno != errno.ESTALE:
                raise
            return False

    assert wait_until(fresh_open_reads_new, timeout=20, interval=0.1)


@pytest.mark.parametrize("tool", ["cat", "dd"])
def test_large_reads_of_an_object_written_through_the_mount(mount, tool, tmp_path):
    data = os.urandom(20 * MiB + 3)
    (tmp_path / "src").write_bytes(data)
    subprocess.run(["cp", str(tmp_path / "src"), str(mount / "c.bin")], check=True)
    mount.sync()
    assert mount.bucket.read_range("c.bin", 0, len(data) + 1) == data
    cmd = ["cat", str(mount / "c.bin")] if tool == "cat" else ["dd", f"if={mount / 'c.bin'}", "bs=1M", "status=none"]
    assert subprocess.run(cmd, capture_output=True, check=True).stdout == data


def test_a_streamed_file_read_again_after_the_kernel_dropped_it_comes_from_the_cached_copy(mount):
    # 96 MiB: past the size at which a streaming reader's cached copy leaves memory behind it
    # (octuefs.cache.content.LET_GO_MIN); the bytes it let go of must still be on disk.
    data = random.Random(96).randbytes(96 * MiB)
    mount.bucket.upload_bytes("stream.bin", data)
    path = mount / "stream.bin"
    cat = subprocess.run(["cat", str(path)], capture_output=True, check=True)
    assert sha256(cat.stdout) == sha256(data)
    # Gone from the bucket (the mount's listing still names it): a read can come only from the copy.
    mount.bucket.delete("stream.bin")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's pages of the mounted file
        assert resident_bytes(fd, len(data)) < len(data) // 4
        got = bytearray()
        while chunk := os.read(fd, 4 * MiB):
            got += chunk
    finally:
        os.close(fd)
    assert sha256(bytes(got)) == sha256(data)


def test_a_second_read_of_a_large_file_leaves_the_cached_copy_out_of_memory_too(mount):
    # The kernel lost the mounted file's pages after a first cat: the second reaches the daemon
    # and reads the cached copy back from disk, onto pages it must hand back too (the first's
    # mark of how far it let go must not hold the second back).
    data = random.Random(7).randbytes(96 * MiB)
    mount.bucket.upload_bytes("again.bin", data)
    path = mount / "again.bin"
    for _ in range(2):
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's pages of the mounted file
        os.close(fd)
        assert sha256(subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout) == sha256(data)
    copies = [os.path.join(d, f) for d, _, files in os.walk(mount.cache / "blocks") for f in files]
    assert len(copies) == 1
    fd = os.open(copies[0], os.O_RDONLY)
    try:
        assert resident_bytes(fd, len(data)) < len(data) // 2, "the second read left the copy in memory"
    finally:
        os.close(fd)
