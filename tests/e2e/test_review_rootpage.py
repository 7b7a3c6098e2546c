"""Review of the root page (the bucket's check lists the mount root's first page and the mount
keeps it, branch ``rootpage``): right after mounting, the mount's own changes at the root and
another client's must show as on a mount without it, and nothing may be lost."""

from __future__ import annotations

import errno
import os
import time

import pytest

from .test_root_page import _bucket_holding

pytestmark = pytest.mark.fuse

NO_KERNEL_CACHE = ("--attr-timeout", "0", "--entry-timeout", "0")  # (every stat and open asks the daemon)


def _error(call) -> str | None:
    try:
        call()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None


@pytest.mark.parametrize("options", [(), ("--negative-ttl", "0.5"), ("--negative-ttl", "0"), ("--list-ttl", "0"),
                                     ("--stat-ttl", "0"), ("--no-prefetch",)])
def test_the_mounts_own_changes_at_the_root_right_after_mounting_show_at_once_and_stay(emulator, mount_factory,
                                                                                         options):
    """Delete, overwrite, rename (file and directory), rmdir, mkdir and setfattr of names the
    check's page shows: the page never brings back an old state, now or past --negative-ttl."""
    name, _direct = _bucket_holding(emulator, {"a.txt": b"A" * 10, "b.txt": b"B", "c.txt": b"C", "d/x": b"x",
                                               "e/y": b"y", "m/": b"", "z.txt": b"Z"})
    m = mount_factory(*NO_KERNEL_CACHE, *options, bucket=name)
    os.unlink(m / "a.txt")
    (m / "b.txt").write_bytes(b"new b content")
    os.rename(m / "c.txt", m / "c2.txt")
    os.rename(m / "d", m / "d2")
    os.rmdir(m / "m")
    os.setxattr(m / "z.txt", "user.k", b"v")
    os.mkdir(m / "n")
    for wait in (0.0, 1.0):
        time.sleep(wait)
        seen = dict(a=_error(lambda: os.stat(m / "a.txt")), b=(m / "b.txt").read_bytes(),
                    b_size=os.stat(m / "b.txt").st_size, c=_error(lambda: os.stat(m / "c.txt")),
                    c2=(m / "c2.txt").read_bytes(), d=_error(lambda: os.stat(m / "d")), d2=(m / "d2/x").read_bytes(),
                    m=_error(lambda: os.stat(m / "m")), z=os.getxattr(m / "z.txt", "user.k"),
                    n=os.path.isdir(m / "n"), ls=sorted(os.listdir(m.path)))
        assert seen == dict(a="ENOENT", b=b"new b content", b_size=13, c="ENOENT", c2=b"C", d="ENOENT", d2=b"x",
                            m="ENOENT", z=b"v", n=True, ls=["b.txt", "c2.txt", "d2", "e", "n", "z.txt"]), (wait, seen)


def test_changes_from_the_checks_stale_view_lose_nothing_changed_elsewhere(emulator, mount_factory):
    """Objects replaced elsewhere right after the check: a delete is refused (the newer version
    stays), a write goes beside it as a conflict copy, a setfattr and a rename keep its bytes."""
    name, direct = _bucket_holding(emulator, {f"{k}.txt": f"old {k}".encode() for k in "abcd"})
    m = mount_factory(*NO_KERNEL_CACHE, bucket=name)
    for k in "abcd":
        direct.upload_bytes(f"{k}.txt", f"NEW {k} from elsewhere".encode())
    (m / "b.txt").write_bytes(b"written by the mount")  # (a 412 forgets the root: the rest see the bucket)
    os.setxattr(m / "c.txt", "user.k", b"v")
    os.rename(m / "d.txt", m / "d2.txt")
    assert _error(lambda: os.unlink(m / "a.txt")) in (None, "EIO")
    m.sync()
    held = {i.name: direct.read_range(i.name, 0, 100) for i in direct.list_page("", None).objects}
    assert sorted(v for k, v in held.items() if k.startswith("b.")) == [b"NEW b from elsewhere", b"written by the mount"]
    assert held["c.txt"] == b"NEW c from elsewhere" and "v" in direct.stat("c.txt").metadata.values()
    assert held["d2.txt"] == b"NEW d from elsewhere" and "d.txt" not in held


@pytest.mark.parametrize("where", ["", "s/"])
def test_reopening_a_file_that_read_estale_reads_its_new_bytes(emulator, mount_factory, where):
    """A root file replaced elsewhere right after the check reads ESTALE ("reopen it", says the
    log); a reopen reads the new bytes, as on main, where the root's first lookup listed after the
    change. (Failed before the 404 of the listed generation forgot the name: every reopen read
    ESTALE for the rest of --list-ttl, in any listed directory.)"""
    name, direct = _bucket_holding(emulator, {f"{where}a.txt": b"old a", "s/other": b"o"})
    m = mount_factory(*NO_KERNEL_CACHE, bucket=name)
    if where:
        os.stat(m / f"{where}a.txt")  # (its directory listed, as the check lists the root)
    direct.upload_bytes(f"{where}a.txt", b"NEW a from elsewhere")
    first = _error(lambda: (m / f"{where}a.txt").read_bytes())
    assert first in (None, "ESTALE")  # old bytes never: the listed generation is gone
    assert (m / f"{where}a.txt").read_bytes() == b"NEW a from elsewhere"


def test_a_root_of_more_than_a_page_right_after_mounting(emulator, mount_factory):
    """The check's page is partial (1,000 of 1,200): names on it and past it read, a name
    uploaded elsewhere before its horizon opens at once, deletes on either side of it stay gone."""
    name, direct = _bucket_holding(emulator, {f"f{i:05d}": b"%d" % i for i in range(1200)})
    m = mount_factory(*NO_KERNEL_CACHE, bucket=name)
    direct.upload_bytes("f00005x", b"uploaded elsewhere after the check")
    assert (m / "f00010").read_bytes() == b"10" and (m / "f01100").read_bytes() == b"1100"
    assert (m / "f00005x").read_bytes() == b"uploaded elsewhere after the check"
    os.unlink(m / "f00020")
    os.unlink(m / "f01150")
    assert _error(lambda: os.stat(m / "f00020")) == _error(lambda: os.stat(m / "f01150")) == "ENOENT"
    assert len(os.listdir(m.path)) == 1199


@pytest.mark.parametrize("objects", [{"p/": b"", "p/a": b"a", "p/s/t": b"t"}, {"p/a": b"a", "p/s/t": b"t"}, {}])
def test_a_prefix_mount_right_after_mounting(emulator, mount_factory, objects):
    """With its marker, without, and a prefix that does not exist yet (an empty page)."""
    name, direct = _bucket_holding(emulator, {**objects, "other": b"o"})
    m = mount_factory(*NO_KERNEL_CACHE, bucket=name, prefix="p")
    direct.upload_bytes("p/new", b"uploaded elsewhere after the check")
    assert (m / "new").read_bytes() == b"uploaded elsewhere after the check"
    assert _error(lambda: os.stat(m / "other")) == "ENOENT"
    if objects:
        assert (m / "a").read_bytes() == b"a"
        os.unlink(m / "a")
        assert _error(lambda: os.stat(m / "a")) == "ENOENT"
    assert sorted(os.listdir(m.path)) == (["new", "s"] if objects else ["new"])
