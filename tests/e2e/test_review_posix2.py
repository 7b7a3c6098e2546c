"""Review of issue 16 part 5 through real mounts: what only two mounts, or the kernel, show."""

from __future__ import annotations

import errno
import os

import pytest

SHORT = ("--attr-timeout", "0", "--entry-timeout", "0", "--negative-ttl", "0", "--stat-ttl", "0",
         "--list-ttl", "0")


def test_o_excl_on_two_mounts_lets_only_one_create_the_file(mount_factory):
    """Two machines taking a lock file with O_CREAT|O_EXCL: only one may succeed. The first
    mount's file is only in its cache until its upload (write-back), so the second's create
    finds nothing and succeeds too; both think they hold the lock."""
    a = mount_factory(*SHORT)
    b = mount_factory(*SHORT, bucket=a.bucket.name)
    fa = os.open(a.path / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fa, b"a")
        with pytest.raises(OSError) as info:
            fb = os.open(b.path / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fb)
        assert info.value.errno == errno.EEXIST
    finally:
        os.close(fa)
