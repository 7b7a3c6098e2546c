"""Review of issue 16 part 5 through real mounts: what only two mounts, or the kernel, show."""

from __future__ import annotations

import errno
import json
import os

import pytest

from .conftest import run_octuefs

SHORT = ("--attr-timeout", "0", "--entry-timeout", "0", "--negative-ttl", "0", "--stat-ttl", "0",
         "--list-ttl", "0")


def test_o_excl_is_exclusive_within_a_mount_and_across_machines_the_later_goes_beside(mount_factory):
    """A divergence (docs/semantics.md, "POSIX: what octuefs does not do"): a new file lives in
    its mount's cache until its upload, so a second machine's O_CREAT|O_EXCL finds nothing and
    succeeds too: O_EXCL is no lock across machines. Nothing is lost: the later upload meets the
    first's object and goes beside it as a conflict copy, which `octuefs sync` reports (exit 3)."""
    a = mount_factory(*SHORT)
    b = mount_factory(*SHORT, bucket=a.bucket.name)
    fa = os.open(a.path / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    fb = None
    try:
        with pytest.raises(OSError) as info:  # within one mount: exclusive
            os.open(a.path / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        assert info.value.errno == errno.EEXIST
        fb = os.open(b.path / "lock", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # across: not
        os.write(fa, b"a")
        os.fsync(fa)  # a's version lands first, before any fork below closes a copy of fb
        os.close(fa)
        fa = None
        # (`octuefs sync` is a child process: its fork copies fb and its exec closes the copy,
        # and a close saves, so b's empty file goes up now and beside, as the user's own close would)
        assert a.sync().returncode == 0
        os.write(fb, b"b")
        os.close(fb)
        fb = None
    finally:
        for fd in (fa, fb):
            if fd is not None:
                os.close(fd)
    assert b.sync().returncode == 3  # the conflict, reported
    objects = {o.name: a.bucket.read_range(o.name, 0, 16) for o in a.bucket.list_all("")[0]}
    assert objects["lock"] == b"a"
    copies = {n: objects[n] for n in objects if n.startswith("lock.octuefs-conflict-")}
    assert b"b" in copies.values(), copies
    reported = {c["saved_as"] for c in json.loads(run_octuefs("status", "--json", str(b.path)).stdout)["conflicts"]}
    assert set(copies) <= reported


def test_edges_on_one_mount_multibyte_names_ftruncate_o_trunc_and_chmod_times(mount_factory):
    """Held up in review: 255 bytes (not characters) is the name limit; ftruncate on an open
    file past 5 TiB is EFBIG and changes nothing; O_TRUNC of a file open on another descriptor
    empties it for both; a chmod's ctime stays when its PATCH lands."""
    import time
    m = mount_factory(*SHORT)
    ok = "é" * 127 + "n"  # 255 bytes
    with pytest.raises(OSError) as info:
        os.open(m.path / ("é" * 128), os.O_CREAT | os.O_WRONLY, 0o644)  # 256 bytes, 128 characters
    assert info.value.errno == errno.ENAMETOOLONG
    fd = os.open(m.path / ok, os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"keep")
    with pytest.raises(OSError) as info:
        os.ftruncate(fd, 6 * 1024**4)
    assert info.value.errno == errno.EFBIG
    os.close(fd)
    assert os.stat(m.path / ok).st_size == 4
    reader = open(m.path / ok, "rb")
    try:
        fd = os.open(m.path / ok, os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        assert os.fstat(reader.fileno()).st_size == 0 and reader.read() == b""
    finally:
        reader.close()
    m.sync()
    os.chmod(m.path / ok, 0o600)
    before = os.stat(m.path / ok)
    time.sleep(1.5)
    m.sync()
    after = os.stat(m.path / ok)
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_mode & 0o777) == \
        (before.st_mtime_ns, before.st_ctime_ns, 0o600)
