"""Reading ahead across files (octuefs.cache.prefetch): a directory's small files opened in name order
are fetched before they are opened, bounded, dropped when the order breaks, never stale.

Every GET the bucket serves is recorded with the thread that asked (prefetches run on the
``octuefs-prefetch`` pool), so the tests count requests and see who made them."""

from __future__ import annotations

import os
import random
import threading

import pytest

from octuefs.cache import prefetch as prefetch_module
from octuefs.storage.fake import FakeBucket

from .corekit import HeldUpload, close_write, make_fs, read, wait_until

KiB = 1024
MiB = 1024 * KiB


class CountingBucket(FakeBucket):
    """Records each ranged GET as (object name, asked by a prefetch); a prefetch GET of a name in
    ``held`` waits until ``release`` (a slow network, for the ones in flight)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gets: list[tuple[str, bool]] = []
        self.held: set[str] = set()
        self.release = threading.Event()
        self.active = self.max_active = 0
        self._rec = threading.Lock()

    def read_range(self, name, start, end, generation=None):
        ahead = threading.current_thread().name.startswith("octuefs-prefetch")
        with self._rec:
            self.gets.append((name, ahead))
            self.active += ahead
            self.max_active = max(self.max_active, self.active)
        try:
            if ahead and name in self.held:
                assert self.release.wait(10), "the test never released the held GETs"
            return super().read_range(name, start, end, generation)
        finally:
            with self._rec:
                self.active -= ahead

    def got(self, name: str) -> int:
        with self._rec:
            return sum(1 for n, _ in self.gets if n == name)

    def prefetched(self) -> list[str]:
        with self._rec:
            return [n for n, ahead in self.gets if ahead]


def names(n: int) -> list[str]:
    return [f"d/f{i:03d}.dat" for i in range(n)]


def fill(bucket, n: int, size: int = 4 * KiB) -> dict[str, bytes]:
    data = {name: random.Random(name).randbytes(size) for name in names(n)}
    for name, content in data.items():
        bucket.upload_bytes(name, content)
    return data


@pytest.fixture
def bucket():
    return CountingBucket("prefetch-test")


def listed(fs) -> None:
    """``ls d``: the listing is cached, as after the readdir of ``cat d/*``."""
    fs.readdir("/d")


def quiet(fs) -> None:
    """Wait until no prefetch is queued or running."""
    assert wait_until(lambda: not fs.prefetch.pool._heap and fs.prefetch.pool._waiting == fs.prefetch.pool._threads)


def test_files_read_in_listing_order_are_fetched_ahead_and_then_read_without_a_request(bucket, tmp_path):
    data = fill(bucket, 40)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    order = names(40)
    for i, name in enumerate(order):
        if i >= 2:  # two opens in order, then each next file is fetched before it is opened
            assert wait_until(lambda: bucket.got(name) == 1), f"{name} was not fetched ahead"
        assert read(fs, "/" + name) == data[name]
        assert bucket.got(name) == 1, f"{name} fetched again when it was read"
    assert sorted(bucket.prefetched()) == order[2:]
    assert len(bucket.gets) == 40  # one GET a file, no more
    assert fs.cache.usage()["clean_bytes"] == 40 * 4 * KiB  # counted as clean cached data


def test_shuffled_order_prefetches_at_most_a_few_then_nothing(bucket, tmp_path):
    data = fill(bucket, 100)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    shuffled = random.Random(3).sample(names(100), 100)
    for name in shuffled:
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert len(bucket.prefetched()) <= prefetch_module.SKIP * 4  # a chance pair in order fetches a window
    assert len(bucket.gets) <= 100 + prefetch_module.SKIP * 4 and all(bucket.got(n) >= 1 for n in names(100))


def test_the_window_is_bounded_in_requests_in_flight(bucket, tmp_path):
    data = fill(bucket, 60)
    bucket.held = set(names(60)[4:])
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in names(4):  # prefetches of f002 and f003 answer; the rest stay in flight
        assert read(fs, "/" + name) == data[name]
    requests = fs.prefetch.pool.workers
    assert wait_until(lambda: bucket.active == requests)
    started = fs.prefetch.stats()["started"]
    assert started > requests  # more were asked for than run at once ...
    assert bucket.max_active == requests  # ... yet no more than that many GETs were ever in flight
    bucket.release.set()
    quiet(fs)
    assert len(bucket.prefetched()) == started <= fs.prefetch.files + 2


def test_the_window_is_bounded_in_bytes_and_by_the_cache_size(bucket, tmp_path):
    size = 64 * KiB
    data = fill(bucket, 40, size)
    fs = make_fs(bucket, tmp_path, cache_size=2 * MiB)  # a budget of 2 MiB / 8 = 256 KiB: 4 files
    assert fs.prefetch.max_bytes == 256 * KiB
    listed(fs)
    for name in names(12):
        assert read(fs, "/" + name) == data[name]
        quiet(fs)
        stats = fs.prefetch.stats()
        assert stats["outstanding_bytes"] <= 256 * KiB and stats["outstanding_files"] <= 4
    ahead = {int(n[3:6]) for n in bucket.prefetched()}
    assert max(ahead) <= 11 + 4  # never more than the budget past the last file opened


def test_a_file_replaced_after_the_listing_is_never_served_with_the_old_bytes(bucket, tmp_path):
    data = fill(bucket, 10)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in names(2):
        read(fs, "/" + name)
    quiet(fs)
    assert bucket.got("d/f004.dat") == 1  # its old generation is in the cache
    new = b"replaced elsewhere after the listing" * 50
    bucket.upload_bytes("d/f004.dat", new)
    bucket.upload_bytes("d/f009.dat", new)  # replaced before its prefetch: that one finds nothing
    fs.metacache.clear()  # the listing's time is up: the next lookups ask the bucket
    listed(fs)
    for name in names(10)[2:]:
        assert read(fs, "/" + name) == (new if name in ("d/f004.dat", "d/f009.dat") else data[name])


def test_a_breaking_pattern_cancels_the_queued_prefetches(bucket, tmp_path):
    data = fill(bucket, 60)
    bucket.held = set(names(60)[4:])
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in names(4):
        assert read(fs, "/" + name) == data[name]
    requests = fs.prefetch.pool.workers
    assert wait_until(lambda: bucket.active == requests)
    queued = fs.prefetch.stats()["started"] - 2 - requests
    assert queued > 0
    assert read(fs, "/d/f050.dat") == data["d/f050.dat"]  # the order breaks
    assert fs.prefetch.stats()["cancelled"] == queued
    bucket.release.set()
    quiet(fs)
    assert sorted(bucket.prefetched()) == names(60)[2 : 4 + requests]  # none of those queued was asked for
    assert fs.cache.usage()["cached_files"] == 4 + requests + 1  # cancelled ones left no empty copies
    for name in names(60)[4:12]:  # what did land reads right, without another request
        assert read(fs, "/" + name) == data[name] and bucket.got(name) == 1


def test_a_file_pending_upload_is_never_prefetched(bucket, tmp_path):
    data = fill(bucket, 10)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    held = HeldUpload(bucket)
    close_write(fs, "/d/f003.dat", b"mine, not yet in the bucket")
    assert held.started.wait(5)
    for name in names(10):
        want = b"mine, not yet in the bucket" if name == "d/f003.dat" else data[name]
        assert read(fs, "/" + name) == want
    held.release()
    assert "d/f003.dat" not in bucket.prefetched() and bucket.got("d/f003.dat") == 0


def test_files_read_by_name_in_order_without_a_listing_are_fetched_ahead_from_the_lookups_listing(bucket, tmp_path):
    """No readdir: the first lookup in the directory lists it (octuefs.cache.listings), and the
    files after the second one opened in order are fetched before they are opened."""
    data = fill(bucket, 30)
    fs = make_fs(bucket, tmp_path)
    for i, name in enumerate(names(30)):
        if i >= 3:
            assert wait_until(lambda: bucket.got(name) == 1), f"{name} was not fetched ahead"
        assert read(fs, "/" + name) == data[name]
        assert bucket.got(name) == 1
    assert bucket.calls["stat"] == 0  # the listings answered every lookup
    assert len(bucket.prefetched()) >= 27 and len(bucket.gets) == 30


def test_no_prefetch_turns_it_off(bucket, tmp_path):
    data = fill(bucket, 10)
    fs = make_fs(bucket, tmp_path, prefetch_files=0)
    listed(fs)
    assert fs.prefetch is None
    for name in names(10):
        assert read(fs, "/" + name) == data[name]
    assert bucket.prefetched() == [] and len(bucket.gets) == 10


def test_writers_do_not_start_prefetches(bucket, tmp_path):
    fill(bucket, 10)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in names(10):
        fs.release(fs.open("/" + name, os.O_WRONLY))
    assert bucket.prefetched() == []


def test_a_reader_never_waits_behind_prefetches(bucket, tmp_path):
    data = fill(bucket, 60)
    bucket.held = set(names(60)[4:12])
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in names(4):
        assert read(fs, "/" + name) == data[name]
    requests = fs.prefetch.pool.workers
    assert wait_until(lambda: bucket.active == requests)  # every prefetch worker waits on the network
    # A file whose prefetch is still queued behind them: the reader takes it over, at once.
    assert read(fs, "/d/f013.dat") == data["d/f013.dat"] and bucket.got("d/f013.dat") == 1
    # Another file of the mount: the cache's own workers are free for it.
    bucket.upload_bytes("e/other.dat", b"x" * 5000)
    assert read(fs, "/e/other.dat") == b"x" * 5000
    assert bucket.active == requests
    bucket.release.set()
    quiet(fs)
    for name in names(60)[4:12]:
        assert read(fs, "/" + name) == data[name] and bucket.got(name) == 1


def test_a_huge_directory_read_by_name_is_not_listed_whole_unasked(bucket, tmp_path, monkeypatch):
    from octuefs.cache import listings

    monkeypatch.setattr(listings, "LOOKUP_PAGES", 1)  # a page is 1,000 objects: 1,001 are "huge" here
    for i in range(1001):
        bucket.upload_bytes(f"d/f{i:04d}.dat", b"%d" % i)
    fs = make_fs(bucket, tmp_path)
    for i in range(4):
        assert read(fs, f"/d/f{i:04d}.dat") == b"%d" % i
    quiet(fs)
    assert fs.metacache.listing("d/") is None  # not cached whole, so nothing fetched ahead
    assert bucket.prefetched() == []


def test_parallel_readers_of_one_sorted_list_get_exact_bytes_each_file_fetched_once(bucket, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    data = fill(bucket, 120)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    with ThreadPoolExecutor(4) as pool:  # a data loader's workers taking the next file of a sorted list
        got = list(pool.map(lambda name: read(fs, "/" + name), names(120)))
    assert got == [data[n] for n in names(120)]
    quiet(fs)
    assert len(bucket.gets) == 120 and all(bucket.got(n) == 1 for n in names(120))
    assert len(bucket.prefetched()) > 60  # out of order by a step or two, still read ahead
