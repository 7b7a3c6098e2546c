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
