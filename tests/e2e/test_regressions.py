"""Regressions found by the stress tests (test_differential, test_hostile, test_security)."""

from __future__ import annotations

import os

import pytest

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
