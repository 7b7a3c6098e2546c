"""Regressions found by the stress tests (test_differential, test_hostile, test_security)."""

from __future__ import annotations

import os

import pytest

from octuefs import mount as octuefs_mount

pytestmark = pytest.mark.fuse


def test_unlinking_an_open_file_leaves_no_hidden_entry(mount):
    # Without libfuse's hard_remove, the kernel's unlink of an open file became a rename to
    # .fuse_hiddenNNNN: it showed in listings and went up to the bucket under that name.
    f = open(mount / "a", "wb")
    try:
        f.write(b"x" * 100)
        f.flush()
        os.unlink(mount / "a")
        assert os.listdir(mount.path) == []
        f.write(b"more")
    finally:
        f.close()
    assert os.listdir(mount.path) == []
    mount.sync()
    assert mount.bucket.list_all("", delimiter=None)[0] == []
    assert os.listdir(mount.cache / "staging") == []  # nothing of it is left in the cache either


def test_ftruncate_of_a_file_being_written_uploads_nothing_before_close(mount):
    # mfusepy dropped the file handle of libfuse 3's truncate, so ftruncate became a
    # truncate by path, which saves at once: the writer's unfinished data went up.
    fd = os.open(mount / "t.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"unfinished")
        os.ftruncate(fd, 4)
        # Wait for uploads in this process: a fork/exec (octuefs sync) would close a copy of
        # fd, and every close is a FUSE flush, which saves.
        octuefs_mount.sync(str(mount.path))
        assert mount.bucket.list_all("", delimiter=None)[0] == []
        os.write(fd, b"++")
    finally:
        os.close(fd)
    mount.sync()
    assert mount.bucket.read_range("t.bin", 0, 100) == b"unfi\0\0\0\0\0\0++"


@pytest.mark.parametrize("kind", ["new", "pending", "uploaded"])
def test_an_open_file_stays_usable_after_unlink(mount, kind):
    # POSIX: the name goes, the open file stays. It used to answer EIO (getattr and
    # truncate without a path), ENOENT (write) and ESTALE (read and fstat).
    p = mount / "u.bin"
    if kind == "new":
        fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"hello")
    else:
        p.write_bytes(b"hello")
        if kind == "uploaded":
            mount.sync()
        fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists() and os.listdir(mount.path) == []
        assert os.pread(fd, 100, 0) == b"hello"
        assert os.pwrite(fd, b"XY", 1) == 2
        os.ftruncate(fd, 4)
        assert os.pread(fd, 100, 0) == b"hXYl"
        assert os.pread(fd, 100, 2) == b"Yl"
        os.fsync(fd)
    finally:
        os.close(fd)
    mount.sync()
    assert mount.bucket.list_all("", delimiter=None)[0] == []
    assert os.listdir(mount.cache / "staging") == []


def test_an_open_file_replaced_by_rename_stays_usable(mount):
    (mount / "old").write_bytes(b"old content")
    (mount / "new").write_bytes(b"new content")
    mount.sync()
    fd = os.open(mount / "old", os.O_RDWR)
    try:
        os.rename(mount / "new", mount / "old")
        assert os.pread(fd, 100, 0) == b"old content"
        os.pwrite(fd, b"OLD", 0)
    finally:
        os.close(fd)
    mount.sync()
    assert (mount / "old").read_bytes() == b"new content"
    assert mount.bucket.read_range("old", 0, 100) == b"new content"
    assert [o.name for o in mount.bucket.list_all("", delimiter=None)[0]] == ["old"]


@pytest.mark.xfail(strict=True, raises=OSError, reason=(
    "libfuse's high-level API cannot name an unlinked file, and the kernel sends fstat's GETATTR "
    "without a file handle, so libfuse itself answers ESTALE before octuefs is asked; only the "
    "low-level API (inode numbers) could answer it"))
def test_fstat_of_a_file_unlinked_while_open(mount):
    fd = os.open(mount / "s.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"hello")
        os.unlink(mount / "s.bin")
        assert os.fstat(fd).st_size == 5
    finally:
        os.close(fd)
