"""A directory's entries come a page at a time: the first while the second is on its way, a
file never shown when a directory of its name follows pages later, and only a whole listing
is cached. Each next page is asked for as soon as the one before answers. The kernel's plain
READDIR after a READDIRPLUS pages through the same listing."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import types

import pytest

from octuefs.assembly import build_filesystem
from octuefs.config import MountConfig
from octuefs.errors import BucketUnreachable
from octuefs.fs.core import FileSystem
from octuefs.storage.fake import FakeBucket


class _GatedListing(FakeBucket):
    """A bucket that answers a listing's later pages only once ``gate`` is set."""

    def __init__(self, name: str):
        super().__init__(name)
        self.gate = threading.Event()
        self.gate.set()
        self.pages_asked = 0
        self.later_pages_asked = 0

    def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        self.pages_asked += 1
        if page_token is not None:
            self.later_pages_asked += 1
            assert self.gate.wait(10), "test gate never opened"
        return super().list_page(prefix, delimiter, page_token, max_results)


def _fs(bucket, tmp_path) -> FileSystem:
    return build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                          cache_dir=str(tmp_path / "c")))


def _fill(bucket, names):
    for name in names:
        bucket.upload_bytes(name, name.encode())


def test_the_first_page_is_served_while_the_second_is_on_its_way(tmp_path):
    bucket = _GatedListing("pages")
    _fill(bucket, [f"d/{i:05d}" for i in range(2500)])
    fs = _fs(bucket, tmp_path)
    bucket.gate.clear()
    batches = fs.readdir_batches("/d")
    first, more = next(batches)
    assert more
    # all but the page's last file, which waits for the next page in case "00999/" comes first
    assert [n for n, _ in first] == [f"{i:05d}" for i in range(999)] and first[-1][1].size == len(b"d/00998")
    assert fs.metacache.lookup("d/00500") is not None  # a page's files answer stat at once
    assert fs.metacache.listing("d/") is None  # not the whole yet
    bucket.gate.set()
    rest = [entry for batch, _ in batches for entry in batch]
    assert [n for n, _ in first + rest] == [f"{i:05d}" for i in range(2500)]
    asked = bucket.pages_asked
    assert len(fs.readdir("/d")) == 2500 and bucket.pages_asked == asked  # whole: cached


def test_every_listed_file_answers_stat_without_a_request_even_with_listings_not_cached(tmp_path):
    bucket = FakeBucket("stats")
    _fill(bucket, [f"d/{i:05d}" for i in range(2500)])
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                        cache_dir=str(tmp_path / "c"), list_ttl=0))
    assert len(fs.readdir("/d")) == 2500
    assert fs.metacache.listing("d/") is None  # (list_ttl=0)
    bucket.reset_calls()
    assert [fs.getattr(f"/d/{i:05d}").size for i in (0, 998, 999, 1999, 2000, 2499)] == [len(b"d/00000")] * 6
    assert bucket.calls["stat"] == 0 and bucket.calls["list"] == 0


def test_a_file_hidden_by_a_directory_pages_later_is_never_shown(tmp_path):
    bucket = FakeBucket("clash")
    # "x" sorts before "x-0000".."x-1499", which sort before the prefix "x/" ('-' < '/')
    _fill(bucket, ["d/x"] + [f"d/x-{i:04d}" for i in range(1500)] + ["d/x/inner.txt"])
    fs = _fs(bucket, tmp_path)
    entries = fs.readdir("/d")
    names = [n for n, _ in entries]
    assert names.count("x") == 1 and dict(entries)["x"].is_dir
    assert len(names) == 1501


def test_a_listing_given_up_half_way_is_not_cached(tmp_path):
    bucket = _GatedListing("abandon")
    _fill(bucket, [f"d/{i:05d}" for i in range(1500)])
    fs = _fs(bucket, tmp_path)
    batches = fs.readdir_batches("/d")
    assert len(next(batches)[0]) == 999
    batches.close()  # the reader went away (ls | head)
    kept = fs.metacache.listing("d/")  # (the fill may finish it in the background: then whole)
    assert kept is None or len(kept.files) == 1500
    assert len(fs.readdir("/d")) == 1500


# --- the FUSE side: one open directory's stream ------------------------------------------------


class _FailingLaterPages(FakeBucket):
    """A bucket whose listing fails after its first page (the network went away mid-listing)."""

    def list_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        if page_token is not None:
            raise BucketUnreachable("bucket unreachable: connection reset while listing")
        return super().list_page(prefix, delimiter, page_token, max_results)


def _stream(fs, path):
    from octuefs.fuse.dirstreams import DirStream
    from octuefs.fuse.ops import OctueOperations

    stream = DirStream(fs, path, OctueOperations(fs).packed)
    stream.start()
    return stream


def test_a_listing_that_fails_half_way_gives_its_first_entries_then_the_error(tmp_path):
    bucket = _FailingLaterPages("fail")
    _fill(bucket, [f"d/{i:05d}" for i in range(1500)])
    fs = _fs(bucket, tmp_path)
    stream = _stream(fs, "/d")
    assert len(stream.upto(2)) == 2 + 999  # ".", "..", then the first page's files
    with pytest.raises(BucketUnreachable):
        stream.upto(2 + 999)  # the entry that did not come
    assert fs.metacache.listing("d/") is None


def test_a_directory_closed_half_way_stops_listing_after_its_page(tmp_path):
    bucket = _GatedListing("closed")
    _fill(bucket, [f"d/{i:05d}" for i in range(5500)])
    fs = _fs(bucket, tmp_path)
    bucket.gate.clear()
    stream = _stream(fs, "/d")
    deadline = time.monotonic() + 10
    while bucket.later_pages_asked < 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # until the thread waits for the second page
    stream.close()  # (ls | head: the reader went away)
    bucket.gate.set()
    deadline = time.monotonic() + 10
    while any(t.name == "octuefs-list" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "octuefs-list" for t in threading.enumerate())
    # the page in flight and at most two asked ahead of it, no more (there are five after the first)
    assert bucket.later_pages_asked <= 3
    while any(t.name.startswith("octuefs-page") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name.startswith("octuefs-page") for t in threading.enumerate())
    assert fs.metacache.listing("d/") is None


def test_entries_deleted_through_the_mount_while_listing_are_refreshed_even_in_the_first_reply(tmp_path):
    bucket = FakeBucket("deleted")
    _fill(bucket, ["d/a.txt", "d/b.txt"])
    fs = _fs(bucket, tmp_path)
    stream = _stream(fs, "/d")
    fs.unlink("/d/a.txt")  # after the listing began, before its first reply went out
    assert stream.stale(0) is not None and "a.txt" in stream.stale(0)
    assert "a.txt" in stream.stale(3)


# --- the bucket side: pages asked for ahead of the caller ---------------------------------------


class _PipelineProbe(FakeBucket):
    """A bucket whose pages, once fetched, convert only after the next page has been asked for:
    a listing that converted each page before asking for the next would fail."""

    def __init__(self, name: str):
        super().__init__(name)
        self.fetched = 0
        self.asked = threading.Condition()

    def fetch_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        with self.asked:
            self.fetched += 1
            number = self.fetched
            self.asked.notify_all()
        fetched = super().fetch_page(prefix, delimiter, page_token, max_results)

        def convert():
            if fetched.next_token is not None:
                with self.asked:
                    assert self.asked.wait_for(lambda: self.fetched > number, timeout=10), "next page never asked for"
            return fetched.convert()

        return dataclasses.replace(fetched, convert=convert)


def test_the_next_page_is_asked_for_before_the_caller_converts_this_one():
    bucket = _PipelineProbe("ahead")
    _fill(bucket, [f"d/{i:05d}" for i in range(3500)])
    pages = list(bucket.iter_pages_ahead("d/", "/"))
    assert [o.name for page in pages for o in page.objects] == [f"d/{i:05d}" for i in range(3500)]
    assert bucket.fetched == 4


def test_an_error_while_asking_ahead_comes_after_the_pages_before_it():
    bucket = _FailingLaterPages("ahead-fails")
    _fill(bucket, [f"d/{i:05d}" for i in range(1500)])
    pages = bucket.iter_pages_ahead("d/", "/")
    assert len(next(pages).objects) == 1000
    with pytest.raises(BucketUnreachable):
        next(pages)
    deadline = time.monotonic() + 10
    while any(t.name == "octuefs-page" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "octuefs-page" for t in threading.enumerate())


class _WrongGuesses(FakeBucket):
    """A bucket whose announced next tokens are wrong where ``lie`` says: a later page's token
    (pages skipped), a token on the last page, none on a middle page, or one the server refuses."""

    def __init__(self, name: str, lie):
        super().__init__(name)
        self.lie = lie
        self.asked: list[str | None] = []

    def fetch_page(self, prefix="", delimiter="/", page_token=None, max_results=1000):
        self.asked.append(page_token)
        if page_token == "refused":
            raise BucketUnreachable("bucket unreachable: 400 invalid page token")  # never reaches the caller
        page = super().fetch_page(prefix, delimiter, page_token, max_results)
        return dataclasses.replace(page, next_token=self.lie(len(self.asked), page.next_token))


@pytest.mark.parametrize("lie", [
    lambda n, true: true,
    lambda n, true: None if n == 2 else true,  # says the listing ends after the second page
    lambda n, true: "refused" if n in (1, 3) else true,  # a token the server refuses
    lambda n, true: true or "refused",  # a token on the last page
], ids=["right", "ends-early", "refused", "more-after-last"])
def test_pages_read_ahead_on_a_wrong_token_are_dropped_and_the_listing_goes_on_from_the_right_one(lie):
    bucket = _WrongGuesses("guesses", lie)
    _fill(bucket, [f"d/{i:05d}" for i in range(3500)])
    names = [o.name for page in bucket.iter_pages_ahead("d/", "/", max_results=1000) for o in page.objects]
    assert names == [f"d/{i:05d}" for i in range(3500)]


def test_a_skipping_guess_is_caught_too():
    bucket = FakeBucket("skip")
    _fill(bucket, [f"d/{i:05d}" for i in range(4500)])
    tokens = [p.next_token for p in bucket.iter_pages("d/", "/")]
    skip = _WrongGuesses("skip", lambda n, true: tokens[1] if n == 1 else true)  # page 1 points at page 3
    _fill(skip, [f"d/{i:05d}" for i in range(4500)])
    names = [o.name for page in skip.iter_pages_ahead("d/", "/") for o in page.objects]
    assert names == [f"d/{i:05d}" for i in range(4500)]
    assert skip.asked[:2] == [None, tokens[1]] and tokens[0] in skip.asked


# --- the kernel's side: READDIRPLUS and plain READDIR on one open directory ------------------------


class _Libfuse:
    """What libfuse 3's high-level API does with one open directory's requests
    (``fuse_lib_readdir_common``): entries the filesystem fills with offsets go to the kernel as
    they are; entries filled without (offset 0, mfusepy's plain ``readdir``) are a listing of its
    own, taken afresh at offset 0 or when none is buffered, and served from by position."""

    def __init__(self, fs, path: str):
        from octuefs.fuse.ops import _FUSE, OctueOperations

        self.fuse = object.__new__(_FUSE)  # (no mount: only what readdir_fuse_3 uses)
        self.fuse.operations, self.fuse.encoding, self.fuse.errors = OctueOperations(fs), "utf-8", "surrogateescape"
        self.path = path.encode()
        self.fip = types.SimpleNamespace(contents=types.SimpleNamespace(fh=self.fuse.operations.opendir(path)))
        self.buffered: list[str] | None = None

    def request(self, offset: int, plus: bool) -> list[tuple[str, int]]:
        """One READDIR(PLUS) at ``offset``: the (name, offset) pairs sent to the kernel."""
        if offset == 0:
            self.buffered = None
        if self.buffered is None:
            got: list[tuple[str, int]] = []

            def fill(buf, name, st, off, flags):
                got.append((name.decode(), off))
                return 0

            from octuefs.fuse import ops  # (mfusepy as ops loads it: libfuse 3)

            filler = ops.mfusepy.fuse_fill_dir_t(fill)  # (a C function, as libfuse gives)
            self.fuse.readdir_fuse_3(self.path, None, filler, offset, self.fip, 1 if plus else 0)
            assert all(off for _, off in got) or not any(off for _, off in got)
            if all(off for _, off in got):
                return got
            self.buffered = [name for name, _ in got]
        return [(name, i + 1) for i, name in enumerate(self.buffered)][offset:]


def test_a_directory_read_on_in_plain_readdir_after_readdirplus_lists_no_name_twice(tmp_path):
    # The kernel (readdirplus_auto) asks with READDIRPLUS at offset 0 and, unless a lookup under
    # the directory advised otherwise, with plain READDIR after that. A file new since the
    # listing began (here an outside upload; in the differential test, the conflict copy of a
    # raced upload) must not shift the entries the second request numbers from: a name the
    # first reply sent would come again (the differential test's ['b.txt', 'b.txt', 'd']).
    bucket = FakeBucket("plain")
    _fill(bucket, ["a", "d"])
    fs = build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                              cache_dir=str(tmp_path / "c"), stat_ttl=0, list_ttl=0, negative_ttl=0))
    try:
        handles = [fs.create("/b.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC) for _ in range(2)]  # open, not saved
        fs.truncate("/b.txt", 1, handles[0])
        kernel = _Libfuse(fs, "/")
        names, offset, plus = [], 0, True
        while True:
            reply = kernel.request(offset, plus)
            if not reply:
                break
            names += [name for name, _ in reply]
            offset, plus = reply[-1][1], False
            bucket.upload_bytes("a.octuefs-conflict-1", b"theirs")  # lands between two requests
        assert sorted(n for n in names if n not in (".", "..")) in (["a", "b.txt", "d"],
                                                                     ["a", "a.octuefs-conflict-1", "b.txt", "d"])
        for fh in handles:
            fs.release(fh)
    finally:
        fs.shutdown()
