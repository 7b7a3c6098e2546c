"""Listings through a real mount: ``ls -l`` answered by one listing (READDIRPLUS).

The kernel takes the attributes a READDIRPLUS reply carries as the files' own, so they must be
exactly what ``stat`` would say, a file being written included, and a directory larger than one
reply must page through without losing or repeating an entry.
"""

from __future__ import annotations

import errno
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest


def ls_l(path) -> dict[str, tuple[str, int]]:
    """``ls -l`` parsed: name -> (type letter, size)."""
    out = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return {f[-1]: (f[0][0], int(f[4])) for f in (line.split() for line in out.splitlines()[1:])}


def test_ls_l_of_a_directory_larger_than_one_reply_shows_every_entry(mount):
    sizes = {f"f{i:04d}.dat": (i * 37) % 1000 for i in range(600)}  # ~20 READDIRPLUS replies
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: mount.bucket.upload_bytes(f"big/{kv[0]}", b"z" * kv[1]), sizes.items()))
    mount.bucket.upload_bytes("big/sub/inner.txt", b"inner")

    expected = {name: ("-", size) for name, size in sizes.items()}
    got = ls_l(mount / "big")
    assert {k: v for k, v in got.items() if k != "sub"} == expected
    assert got["sub"][0] == "d"
    # The attributes the listing gave are what stat says, and a second pass (rewinddir, a new
    # open) lists the same entries once each.
    assert {e.name: e.stat().st_size for e in os.scandir(mount / "big") if e.is_file()} == sizes
    assert sorted(os.listdir(mount / "big")) == sorted([*sizes, "sub"])
    fd = os.open(mount / "big", os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = os.listdir(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        assert sorted(os.listdir(fd)) == sorted(first)
    finally:
        os.close(fd)


def test_listing_shows_the_local_version_of_a_file_being_written(mount):
    mount.bucket.upload_bytes("d/old.txt", b"12345")
    assert ls_l(mount / "d") == {"old.txt": ("-", 5)}
    with open(mount / "d/old.txt", "r+b") as grown, open(mount / "d/new.txt", "wb") as fresh:
        grown.seek(0, os.SEEK_END)
        grown.write(b"x" * 95)
        grown.flush()
        fresh.write(b"y" * 7)
        fresh.flush()
        listed = ls_l(mount / "d")
        assert listed == {"old.txt": ("-", 100), "new.txt": ("-", 7)}
        assert os.stat(mount / "d/old.txt").st_size == 100  # what the listing told the kernel
    mount.sync()
    assert ls_l(mount / "d") == {"old.txt": ("-", 100), "new.txt": ("-", 7)}
    assert mount.bucket.stat("d/old.txt").size == 100
    assert mount.bucket.read_range("d/new.txt", 0, 100) == b"y" * 7


@pytest.mark.parametrize("name, code", [("security.selinux", errno.EOPNOTSUPP), ("system.posix_acl_access", errno.EOPNOTSUPP),
                                        ("trusted.x", errno.EOPNOTSUPP), ("user.other", errno.ENODATA)])
def test_attributes_outside_octuefs_namespaces_are_absent_and_leave_ours_working(mount, name, code):
    """Namespaces octuefs does not support answer EOPNOTSUPP, as a filesystem without SELinux
    labels or ACLs does (``ls -l`` then stops asking for them, file after file); a ``user.``
    name it does not keep is ENODATA."""
    mount.bucket.upload_bytes("f.csv", b"a,b\n", metadata={"octue__labels": '["raw"]'})
    with pytest.raises(OSError) as caught:
        os.getxattr(mount / "f.csv", name)
    assert caught.value.errno == code
    assert os.getxattr(mount / "f.csv", "user.octue.labels") == b"raw"
    out = subprocess.run(["ls", "-l", str(mount.path)], capture_output=True, text=True, check=True).stdout
    assert [line[:10] for line in out.splitlines()[1:]] == ["-rw-r--r--"]  # no ACL '+', no label '.'
    assert subprocess.run(["getfattr", "-d", str(mount / "f.csv")], capture_output=True, text=True,
                          check=True).stdout.count('user.octue.labels="raw"') == 1


def test_a_file_appended_to_during_a_long_listing_keeps_its_size_and_its_data(mount):
    """Later READDIRPLUS pages must carry attributes as they are then, not as they were when
    the listing began: the kernel takes them as newer than the append, and an O_APPEND write
    at a stale size overwrites data."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: mount.bucket.upload_bytes(f"d/f{i:04d}", b"0123456789"), range(1500)))
    mount.bucket.upload_bytes("d/f0250.log", b"0123456789")
    scan = os.scandir(mount / "d")
    next(scan)  # the first page: the listing is taken now
    fd = os.open(mount / "d/f0250.log", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"A" * 1000)
        rest = list(scan)  # the later pages
        scan.close()
        assert len(rest) == 1500
        assert os.stat(mount / "d/f0250.log").st_size == 1010
        os.write(fd, b"B" * 5)
    finally:
        os.close(fd)
    assert (mount / "d/f0250.log").read_bytes() == b"0123456789" + b"A" * 1000 + b"B" * 5


def test_a_file_removed_during_a_long_listing_does_not_come_back(mount):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: mount.bucket.upload_bytes(f"d/f{i:04d}", b"x"), range(1500)))
    scan = os.scandir(mount / "d")
    next(scan)
    os.unlink(mount / "d/f1400")
    list(scan)
    scan.close()
    assert not os.path.exists(mount / "d/f1400")
    with pytest.raises(FileNotFoundError):
        os.stat(mount / "d/f1400")


def test_an_object_uploaded_elsewhere_opens_by_name_once_negative_ttl_has_passed(mount_factory):
    """Freshness (docs/semantics.md): a name absent from a listing the mount holds is "no such
    file" only within --negative-ttl; past it the bucket is asked again, with listings still
    cached for --list-ttl (30 s)."""
    import time

    m = mount_factory("--negative-ttl", "1")
    m.bucket.upload_bytes("d/old.txt", b"old")
    assert sorted(os.listdir(m / "d")) == ["old.txt"]  # the listing is cached now
    m.bucket.upload_bytes("d/new.txt", b"uploaded by another program")
    try:  # within negative_ttl the mount may still say it is not there
        (m / "d/new.txt").read_bytes()
    except FileNotFoundError:
        pass
    time.sleep(1.2)
    assert (m / "d/new.txt").read_bytes() == b"uploaded by another program"
    assert sorted(os.listdir(m / "d")) == ["new.txt", "old.txt"]  # the relist refreshed the listing
