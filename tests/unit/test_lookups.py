"""What a lookup asks the bucket (docs/semantics.md, "Freshness: what a lookup asks the bucket").

A name is looked up in its directory's listing: one request answers every name in it, so
reading a directory's files by name costs a read per file and nothing per name; ``ls -l`` of a
directory just looked up costs its pages and no more; a name absent from a listing is "no such
file" only within ``--negative-ttl``, after which one request decides; and the mount's own
creates never cost a request per file. Request counts are the fake bucket's."""

from __future__ import annotations

import random
import time

import pytest

from octuefs.cache import listings
from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import FileNotFound
from octuefs.storage.fake import FakeBucket

from .corekit import close_write, make_fs, read


class _Recording(FakeBucket):
    """A fake bucket that notes the prefix of every list request, and can run ``during``
    once, right after the next list request has been answered."""

    during = None

    def __init__(self, name: str):
        super().__init__(name)
        self.listed: list[str] = []

    def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        self.listed.append(prefix)
        page = super().list_page(prefix, delimiter, page_token, max_results)
        hook, self.during = self.during, None
        if hook is not None:
            hook()
        return page

    def reset_calls(self) -> None:
        super().reset_calls()
        self.listed.clear()


def _upload(bucket, names, data=b"0123"):
    for name in names:
        bucket.upload_bytes(name, data + name.encode())


def test_files_read_by_name_from_a_fresh_mount_cost_one_listing_and_a_read_each(tmp_path):
    bucket = _Recording("by-name")
    names = [f"d/f{i:04d}.csv" for i in range(300)]
    _upload(bucket, names)
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    for name in random.Random(3).sample(names, len(names)):  # an order the mount cannot predict
        assert fs.getattr("/" + name).size == len(b"0123" + name.encode())
        assert read(fs, "/" + name) == b"0123" + name.encode()
    assert bucket.calls["stat"] == 0
    # the directory's listing, and the probe of the first name looked up (as a directory)
    assert bucket.listed.count("d/") == 1 and len(bucket.listed) <= 2
    assert bucket.calls["read"] + bucket.calls["download"] == len(names)


def test_ls_l_of_a_directory_just_looked_up_costs_its_pages_and_no_more(tmp_path):
    bucket = _Recording("ls")
    _upload(bucket, [f"big/o{i:05d}" for i in range(2500)] + ["top.txt"])  # 3 pages
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    assert fs.getattr("/big").is_dir  # (the kernel's LOOKUP before OPENDIR)
    entries = fs.readdir("/big")
    assert len(entries) == 2500
    # its first page came with the lookup (the probe of big/): three pages in all
    assert bucket.listed.count("big/") == 3 and bucket.listed.count("") <= 1
    assert bucket.calls["stat"] == 0
    bucket.reset_calls()
    sizes = [fs.getattr(f"/big/o{i:05d}").size for i in range(2500)]  # stat past the kernel's cache
    assert sizes == [len(f"0123big/o{i:05d}") for i in range(2500)]
    assert bucket.calls["list"] == bucket.calls["stat"] == 0


def test_stats_after_a_listing_ask_nothing_and_a_directory_hides_its_file(tmp_path):
    bucket = _Recording("stats")
    _upload(bucket, ["d/a", "d/x", "d/x/inner.txt", "d/z"])
    fs = make_fs(bucket, tmp_path)
    assert sorted(n for n, _ in fs.readdir("/d")) == ["a", "x", "z"]
    bucket.reset_calls()
    assert fs.lookup("d/x") is DIR and fs.getattr("/d/a").size == len(b"0123d/a")
    assert fs.lookup("d/nothing") is MISSING
    assert bucket.calls["list"] == bucket.calls["stat"] == 0


def test_a_name_past_the_pages_a_lookup_lists_is_asked_for_alone(tmp_path, monkeypatch):
    """A directory of a million objects is not listed to open one file."""
    monkeypatch.setattr(listings, "LOOKUP_PAGES", 2)
    monkeypatch.setattr(listings, "LOOKUP_WAIT", 1)
    bucket = _Recording("huge")
    _upload(bucket, [f"d/o{i:05d}" for i in range(6000)])  # 6 pages
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    assert fs.getattr("/d/o05999").size == len(b"0123d/o05999")
    assert bucket.calls["stat"] == 1
    assert bucket.listed.count("d/") <= 3  # the pages listed for lookups, one read ahead at most
    assert fs.getattr("/d/o00001").size  # a name the pages passed: no request
    assert bucket.calls["stat"] == 1


def test_an_object_uploaded_elsewhere_is_found_by_name_after_negative_ttl(tmp_path):
    bucket = _Recording("fresh")
    _upload(bucket, ["d/old.txt"])
    fs = make_fs(bucket, tmp_path, negative_ttl=0.3)
    assert [n for n, _ in fs.readdir("/d")] == ["old.txt"]
    assert fs.fills.settle(5)  # (the root's listing, started by the lookup of "d", answered before counting)
    bucket.upload_bytes("d/new.txt", b"from another program")
    bucket.reset_calls()
    with pytest.raises(FileNotFound):  # within negative_ttl of the listing: may say so
        fs.getattr("/d/new.txt")
    assert bucket.calls["list"] == bucket.calls["stat"] == 0
    time.sleep(0.35)
    assert read(fs, "/d/new.txt") == b"from another program"  # one request decides: a relist
    assert bucket.listed.count("d/") == 1 and len(bucket.listed) <= 2 and bucket.calls["stat"] == 0
    bucket.reset_calls()
    with pytest.raises(FileNotFound):  # ... which answers for every other name in it
        fs.getattr("/d/other.txt")
    assert bucket.calls["list"] == bucket.calls["stat"] == 0
    assert fs.readdir("/d") and sorted(n for n, _ in fs.readdir("/d")) == ["new.txt", "old.txt"]


def test_a_burst_of_creates_asks_o1_listings_while_its_uploads_land(tmp_path):
    bucket = _Recording("burst")
    _upload(bucket, ["d/existing.txt"])
    fs = make_fs(bucket, tmp_path)  # uploads go at once: they land during the burst
    bucket.reset_calls()
    began = time.monotonic()
    for i in range(1000):
        close_write(fs, f"/d/n{i:04d}.txt", b"new")
    took = time.monotonic() - began
    assert bucket.calls["stat"] == 0
    # A few listings, not one per file: an absent name is believed for negative_ttl, then the
    # directory is listed again (a burst slowed by a loaded machine may last a few of those).
    assert bucket.calls["list"] <= 3 + int(took / fs.config.negative_ttl)
    assert fs.uploader.sync(timeout=30) == 0
    assert len(fs.readdir("/d")) == 1001 and sum(1 for n in bucket.objects() if n.startswith("d/n")) == 1000


def test_a_relist_read_while_the_mount_changes_the_directory_is_kept_with_those_changes(tmp_path):
    """A create after negative_ttl relists the directory; the mount's uploads and deletes that
    land while it is on its way are laid over it, so the next creates ask nothing."""
    bucket = _Recording("merge")
    _upload(bucket, ["d/gone.txt", "d/kept.txt"])
    fs = make_fs(bucket, tmp_path, negative_ttl=0.2)
    assert len(fs.readdir("/d")) == 2
    close_write(fs, "/d/mine.txt", b"mine")
    time.sleep(0.25)

    def meanwhile():
        fs.unlink("/d/gone.txt")
        assert fs.uploader.sync(timeout=10) == 0  # mine.txt lands
    bucket.during = meanwhile
    bucket.reset_calls()
    with pytest.raises(FileNotFound):
        fs.getattr("/d/later.txt")  # past negative_ttl: a relist, with the changes above during it
    assert bucket.listed.count("d/") == 1
    bucket.reset_calls()
    assert sorted(n for n, _ in fs.readdir("/d")) == ["kept.txt", "mine.txt"]
    with pytest.raises(FileNotFound):
        fs.getattr("/d/gone.txt")
    assert fs.getattr("/d/mine.txt").size == 4
    assert bucket.calls["list"] == bucket.calls["stat"] == 0


def test_names_in_a_directory_made_by_the_mount_ask_nothing(tmp_path):
    bucket = _Recording("made")
    fs = make_fs(bucket, tmp_path)
    fs.mkdir("/new")
    bucket.reset_calls()
    for i in range(50):
        close_write(fs, f"/new/f{i}", b"x")
    assert bucket.calls["list"] == bucket.calls["stat"] == 0


def test_a_bucket_that_refuses_listings_still_opens_files_by_name(tmp_path):
    """A role with storage.objects.get but not .list: files open by name, as before."""
    from octuefs.errors import PermissionDenied

    class NoList(FakeBucket):
        def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
            raise PermissionDenied("403: storage.objects.list denied")

    bucket = NoList("nolist")
    _upload(bucket, ["d/a.txt", "d/b.txt"])
    fs = make_fs(bucket, tmp_path)
    assert read(fs, "/d/a.txt") == b"0123d/a.txt"
    assert read(fs, "/d/b.txt") == b"0123d/b.txt"
    with pytest.raises(PermissionDenied):  # absent, or a directory? Only a listing can say
        fs.getattr("/d/c.txt")


def test_the_kernel_keeps_no_does_not_exist_of_its_own():
    """The daemon alone answers "does not exist", within --negative-ttl; a kernel copy would
    add its own timeout to that window."""
    from octuefs.config import MountConfig
    from octuefs.mount import fuse_kwargs

    assert fuse_kwargs(MountConfig(bucket="b", mountpoint="/mnt"))["negative_timeout"] == 0
