"""Reading ahead across files (octuefs.cache.prefetch): a directory's small files opened in name order,
or the rest of a directory read whole in no order, are fetched before they are opened, bounded,
dropped when the pattern breaks, never stale.

Every GET the bucket serves is recorded with the thread that asked (prefetches run on the
``octuefs-prefetch`` pool), so the tests count requests and see who made them."""

from __future__ import annotations

import os
import random
import threading
import time

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


def late_pool(fs, delay: float = 0.3) -> None:
    """The prefetch pool's threads take each task ``delay`` late (a loaded machine: they are
    scheduled after the reader has gone on to open the next file)."""
    pool = fs.prefetch.pool
    take = pool._next

    def late():
        time.sleep(delay)
        return take()

    pool._next = late


def idle(pool) -> bool:
    """Nothing running in ``pool``, nothing queued to run (read under its lock, at once)."""
    with pool._cond:
        return not (pool._busy or pool._claimed or [t for _, _, t in pool._heap if not t.started])


def quiet(fs) -> None:
    """Wait until no prefetch is queued or running: in the prefetch pool, nor in the cache's own
    (a prefetch a reader took over runs there, and starts the next wholesale fetches when done)."""
    assert wait_until(lambda: idle(fs.prefetch.pool) and idle(fs.cache._pool))


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
    shuffled = random.Random(3).sample(names(100), 100)[: fs.prefetch.wholesale_after - 1]  # (then: see below)
    for name in shuffled:
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert len(bucket.prefetched()) <= prefetch_module.SKIP * 4  # a chance pair in order fetches a window
    assert len(bucket.gets) <= len(shuffled) + prefetch_module.SKIP * 4


@pytest.mark.parametrize("late", [False, True], ids=["prompt", "late-pool"])
def test_the_window_is_bounded_in_requests_in_flight(bucket, tmp_path, late):
    data = fill(bucket, 60)
    bucket.held = set(names(60)[4:])
    fs = make_fs(bucket, tmp_path)
    if late:
        late_pool(fs)
    listed(fs)
    for i, name in enumerate(names(4)):  # prefetches of f002 and f003 answer; the rest stay in flight
        if i >= 2:  # (a reader that came first would take the queued prefetch over, in the cache's pool)
            assert wait_until(lambda: bucket.got(name) == 1)
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


@pytest.mark.parametrize("late", [False, True], ids=["prompt", "late-pool"])
def test_a_breaking_pattern_cancels_the_queued_prefetches(bucket, tmp_path, late):
    data = fill(bucket, 60)
    bucket.held = set(names(60)[4:])
    fs = make_fs(bucket, tmp_path)
    if late:
        late_pool(fs)
    listed(fs)
    for i, name in enumerate(names(4)):
        if i >= 2:  # (as above: the prefetch of f002 and f003 answers first)
            assert wait_until(lambda: bucket.got(name) == 1)
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
    # Out of order by a step or two, still read ahead: prefetches were started for most files
    # (whether the prefetch pool or a reader that came first made each GET is the machine's
    # timing: a loaded CI machine runs the pool's threads late).
    assert fs.prefetch.stats()["started"] > 60


# --- a directory read whole in no order (wholesale) ---------------------------------------------


def scattered(n: int, stride: int = 37) -> list[str]:
    """Every file of ``names(n)`` once, no two consecutive ones near each other in the listing: an
    order reading in name order cannot follow (``n`` must not be a multiple of ``stride``)."""
    return [names(n)[(i * stride) % n] for i in range(n)]


def bulk(fs) -> list[str]:
    return [n for n in fs.prefetch.stats() if n.startswith("bulk")]


def test_a_directory_read_whole_in_no_order_is_fetched_ahead_after_k_files_each_once(bucket, tmp_path):
    n = 400
    data = fill(bucket, n)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    k, lead = fs.prefetch.wholesale_after, fs.prefetch.lead
    order = scattered(n)
    for name in order[: k - 1]:
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert bucket.prefetched() == [] and len(bucket.gets) == k - 1  # nothing before K files read whole
    assert read(fs, "/" + order[k - 1]) == data[order[k - 1]]  # the K-th: its close starts the rest
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] == len(bucket.prefetched()) == lead * k  # K files earned lead * K
    for name in order[k:]:
        assert read(fs, "/" + name) == data[name]
        quiet(fs)
    assert len(bucket.gets) == n and all(bucket.got(name) == 1 for name in names(n))  # each file once
    ahead = bucket.prefetched()
    assert not set(ahead) & set(order[:k])
    # All the others but a few the reader reached (at random) before the fetches (in listing order) did:
    assert len(ahead) == fs.prefetch.stats()["bulk_opened"] >= n - k - 4
    assert fs.cache.usage()["read_misses"] == n - len(ahead)  # those asked nothing of the bucket


def test_a_handful_of_files_read_in_no_order_fetches_nothing_more(bucket, tmp_path):
    data = fill(bucket, 1000)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    few = random.Random(5).sample(names(1000), 20)
    for name in few:
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert len(bucket.gets) == 20 and bucket.prefetched() == []  # one GET per file read, nothing else
    k = fs.prefetch.wholesale_after
    more = [name for name in scattered(1000) if name not in few][: k - 1 - 20]
    for name in more:  # nor K - 1 distinct files
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert len(bucket.gets) == k - 1 and bucket.prefetched() == [] and "bulk_started" not in fs.prefetch.stats()


def test_wholesale_fetches_are_bounded_in_requests_in_flight_and_by_what_the_reader_read(bucket, tmp_path):
    n = 300
    data = fill(bucket, n)
    bucket.held = set(names(n))  # every prefetch GET waits (a slow network)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    k, lead, requests = fs.prefetch.wholesale_after, fs.prefetch.lead, fs.prefetch.pool.workers
    for name in scattered(n)[:k]:
        assert read(fs, "/" + name) == data[name]
    assert wait_until(lambda: bucket.active == requests)
    assert fs.prefetch.stats()["bulk_in_flight"] == fs.prefetch.stats()["bulk_started"] == requests  # none queued
    # A read elsewhere meanwhile is not held behind them.
    bucket.upload_bytes("e/other.dat", b"x" * 5000)
    assert read(fs, "/e/other.dat") == b"x" * 5000
    bucket.release.set()
    quiet(fs)
    assert bucket.max_active == requests  # never more in flight
    stats = fs.prefetch.stats()
    assert stats["bulk_started"] == len(bucket.prefetched()) == lead * k < n - k  # the reader stopped at K files
    assert stats["bulk_in_flight"] == 0


def test_wholesale_fetches_are_bounded_in_bytes_and_by_the_cache_size(bucket, tmp_path):
    size = 64 * KiB
    data = fill(bucket, 100, size)
    fs = make_fs(bucket, tmp_path, cache_size=4 * MiB)  # a budget of 4 MiB / 8 = 512 KiB: 8 files
    assert fs.prefetch.max_bytes == 512 * KiB
    listed(fs)
    k = fs.prefetch.wholesale_after
    for i, name in enumerate(scattered(100)[: k + 20]):
        assert read(fs, "/" + name) == data[name]
        quiet(fs)
        stats = fs.prefetch.stats()
        assert stats["outstanding_bytes"] <= 512 * KiB and stats["outstanding_files"] <= 8
        if i == k - 1:
            assert stats["bulk_started"] == 8  # the budget, not lead * K
    assert fs.cache.usage()["clean_bytes"] <= 4 * MiB


def test_wholesale_stops_when_a_file_is_read_again_or_closed_half_read(bucket, tmp_path):
    n = 300
    data = fill(bucket, n)
    bucket.held = set(names(n))
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    k, requests = fs.prefetch.wholesale_after, fs.prefetch.pool.workers
    order = scattered(n)
    for name in order[:k]:
        read(fs, "/" + name)
    assert wait_until(lambda: bucket.active == requests)
    assert read(fs, "/" + order[0]) == data[order[0]]  # read again (not one of the last few): the pattern breaks
    bucket.release.set()
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] == requests  # nothing started after the break
    for name in order[k : 2 * k - 1]:  # K - 1 new files: not enough to start again
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] == requests
    assert read(fs, "/" + order[2 * k - 1]) == data[order[2 * k - 1]]  # the K-th since the break: again
    quiet(fs)
    started = fs.prefetch.stats()["bulk_started"]
    assert started > requests and fs.prefetch.stats()["bulk_runs"] == 2
    fh = fs.open("/" + order[2 * k], os.O_RDONLY)  # a file closed half read: the pattern breaks
    assert fs.read(fh, 100, 0) == data[order[2 * k]][:100]
    fs.release(fh)
    for name in order[2 * k + 1 : 2 * k + 10]:
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] == started
    assert all(bucket.got(name) <= 1 for name in names(n)) and len(bucket.gets) == len({n for n, _ in bucket.gets})


def test_a_file_opened_twice_in_a_row_does_not_break_the_pattern(bucket, tmp_path):
    """A program that opens each file twice (looks at its header, then reads it) reads the
    directory whole all the same."""
    n = 100
    data = fill(bucket, n)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in scattered(n)[: fs.prefetch.wholesale_after]:
        assert read(fs, "/" + name) == data[name]
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] > 0


def test_wholesale_gives_up_when_the_files_it_fetched_are_not_opened(bucket, tmp_path):
    """A reader of the last quarter of the directory only: the files fetched (from the start of
    the listing) are never opened, far fewer hits than a reader of the whole directory would
    have had, so the run gives up, and does not start again while the directory is read."""
    n = 1000
    data = fill(bucket, n)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    last_quarter = [names(n)[750 + (i * 37) % 250] for i in range(250)]
    for name in last_quarter[:100]:
        assert read(fs, "/" + name) == data[name]
        quiet(fs)
    stats = fs.prefetch.stats()
    assert stats["bulk_given_up"] == 1 and "bulk_opened" not in stats
    started = stats["bulk_started"]
    assert started < 100 * fs.prefetch.lead * 3 / 4  # it stopped early, not at the lead's bound
    assert stats["outstanding_files"] == stats["outstanding_bytes"] == 0  # their budget given back
    for name in last_quarter[100:]:
        assert read(fs, "/" + name) == data[name]
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] == started and fs.prefetch.stats()["bulk_runs"] == 1


def test_wholesale_fetches_only_files_of_the_kinds_read(bucket, tmp_path):
    pictures = {f"d/p{i:03d}.jpg": random.Random(i).randbytes(3000) for i in range(80)}
    for i in range(80):
        bucket.upload_bytes(f"d/p{i:03d}.json", b'{"label": %d}' % i)  # beside each picture, never read
    for name, content in pictures.items():
        bucket.upload_bytes(name, content)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    order = [sorted(pictures)[(i * 37) % 80] for i in range(80)]
    for name in order:
        assert read(fs, "/" + name) == pictures[name]
        quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] > 0
    assert not [n for n in bucket.prefetched() if n.endswith(".json")]
    assert len(bucket.gets) == 80


def test_wholesale_never_serves_bytes_older_than_the_lookup_says(bucket, tmp_path):
    """The files are fetched as the generations the listing names. One replaced in the bucket
    after its copy landed, and one replaced while its fetch was on its way, read new bytes once
    the listing is refreshed: the copies fetched ahead are of generations nobody opens now."""
    n = 100
    data = fill(bucket, n)
    order = scattered(n)
    k = 32
    late = order[k + 5]
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    assert fs.prefetch.wholesale_after == k
    bucket.held = {late}  # its fetch waits on the network
    for name in order[:k]:
        read(fs, "/" + name)
    assert wait_until(lambda: bucket.active == 1)
    landed = next(name for name in bucket.prefetched() if name != late)
    assert wait_until(lambda: fs.cache.usage()["cached_files"] >= k + 1)
    new = b"replaced elsewhere after the listing" * 50
    bucket.upload_bytes(landed, new)
    bucket.upload_bytes(late, new)  # replaced while its fetch of the old generation waits
    bucket.release.set()
    quiet(fs)
    fs.metacache.clear()  # the listing's time is up: the next lookups ask the bucket
    listed(fs)
    for name in order[k:]:
        assert read(fs, "/" + name) == (new if name in (landed, late) else data[name])


def test_more_prefetches_run_at_once_when_the_bucket_is_far(bucket, tmp_path):
    """Near the bucket a prefetch is CPU (8 at once); far away it is a wait for the answer, and
    16 run at once (the bucket's own timing of its small requests says which)."""
    fill(bucket, 10)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    read(fs, "/d/f000.dat")
    assert fs.prefetch.pool.workers == fs.prefetch.requests == 8
    bucket.round_trip = lambda: (0.020, 0.001, 5)  # 20 ms a request, 1 ms of it CPU
    fs.prefetch._far_checked = -prefetch_module.FAR_RECHECK
    read(fs, "/d/f005.dat")
    assert fs.prefetch.pool.workers == fs.prefetch.far_requests == 16
    bucket.round_trip = lambda: (0.0004, 0.0003, 5)
    fs.prefetch._far_checked = -prefetch_module.FAR_RECHECK
    read(fs, "/d/f009.dat")
    assert fs.prefetch.pool.workers == 8


def test_wholesale_never_fetches_a_file_pending_upload(bucket, tmp_path):
    """A file written through the mount and not yet uploaded reads the local version: its old
    bytes in the bucket are never fetched ahead, by a directory read whole either."""
    n = 100
    data = fill(bucket, n)
    order = scattered(n)
    k = 32
    mine = order[k + 3]
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    held = HeldUpload(bucket)
    close_write(fs, "/" + mine, b"mine, not yet in the bucket")
    assert held.started.wait(5)
    for name in order:
        want = b"mine, not yet in the bucket" if name == mine else data[name]
        assert read(fs, "/" + name) == want
        quiet(fs)
    held.release()
    assert fs.prefetch.stats()["bulk_started"] > 0
    assert mine not in bucket.prefetched() and bucket.got(mine) == 0


def test_a_failed_wholesale_fetch_is_no_reader_s_error(bucket, tmp_path):
    """The bucket was away while files were fetched ahead (nobody waiting for them) and is back:
    a reader that opens one of those files now fetches it and gets its bytes, not the error of a
    fetch it never asked for."""
    from octuefs.errors import BucketUnreachable

    n = 100
    data = fill(bucket, n)
    order = scattered(n)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    k = fs.prefetch.wholesale_after
    away = threading.Event()
    away.set()
    plain, refused = bucket.read_range, set()

    def read_range(name, start, end, generation=None):
        if away.is_set() and threading.current_thread().name.startswith("octuefs-prefetch"):
            refused.add(name)
            raise BucketUnreachable("the bucket is away")
        return plain(name, start, end, generation)

    bucket.read_range = read_range
    for name in order[:k]:
        assert read(fs, "/" + name) == data[name]
    assert wait_until(lambda: fs.prefetch.stats().get("bulk_started", 0) >= fs.prefetch.pool.workers)
    quiet(fs)
    away.clear()  # back
    failed = [n for n in order[k:] if n in refused]
    assert failed
    for name in failed[:4]:
        assert read(fs, "/" + name) == data[name]


def test_unmount_while_wholesale_fetches_are_in_flight_neither_hangs_nor_fails(bucket, tmp_path, caplog):
    """Unmounting cancels what is queued and does not wait for the GETs on their way; those
    end quietly, and start nothing more."""
    n = 300
    data = fill(bucket, n)
    bucket.held = set(names(n))
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    for name in scattered(n)[: fs.prefetch.wholesale_after]:
        assert read(fs, "/" + name) == data[name]
    requests = fs.prefetch.pool.workers
    assert wait_until(lambda: bucket.active == requests)
    followed = fs.prefetch._dirs["d/"]
    finished = threading.Event()
    threading.Thread(target=lambda: (fs.shutdown(), finished.set()), daemon=True).start()
    assert finished.wait(5), "unmount waited for the prefetches in flight"
    started = fs.prefetch.stats()["bulk_started"]
    bucket.release.set()
    quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] == started == len(bucket.prefetched())  # nothing after
    assert followed.flying == 0  # each counted out once: the cancelled and those that ended
    assert not [r for r in caplog.records if r.levelno >= 30], [r.getMessage() for r in caplog.records]


def test_files_written_through_the_mount_while_a_directory_is_read_whole_are_not_fetched(bucket, tmp_path):
    """A program writes new files into the directory another reads whole: while they are open
    or pending they are the mount's own (never fetched), and once uploaded their content is the
    cache's already: not one GET of them, and each reads back what was written."""
    n = 120
    data = fill(bucket, n)
    order = scattered(n)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    k = fs.prefetch.wholesale_after
    written = {f"d/w{i:03d}.dat": random.Random(f"w{i}").randbytes(4 * KiB) for i in range(20)}
    for name in order[:k]:
        assert read(fs, "/" + name) == data[name]
    for name, content in written.items():
        close_write(fs, "/" + name, content)
    assert wait_until(lambda: set(written) <= set(bucket.objects()) and not any(fs.files.node(n) for n in written))
    fs.metacache.clear()  # the next copy of the listing has them (uploaded, as the bucket says)
    listed(fs)
    fs.prefetch._dirs["d/"].taken -= prefetch_module.REFRESH  # (its copy's time is up)
    for name in order[k:]:
        assert read(fs, "/" + name) == data[name]
        quiet(fs)
    assert fs.prefetch.stats()["bulk_started"] > 0
    assert fs.prefetch._dirs["d/"].bulk_cursor == max(written)[2:]  # the run went past them all
    for name, content in written.items():
        assert read(fs, "/" + name) == content
    assert not [name for name in written if bucket.got(name)]


def test_two_readers_of_one_directory_in_different_orders_get_exact_bytes_each_file_fetched_once(bucket, tmp_path):
    """Two programs read the whole directory at once, each in its own shuffled order: whatever
    the prefetcher makes of that (the second one's opens are reopens of files the first read),
    every read is exact and no file is fetched twice."""
    from concurrent.futures import ThreadPoolExecutor

    n = 200
    data = fill(bucket, n)
    fs = make_fs(bucket, tmp_path)
    listed(fs)
    orders = [random.Random(seed).sample(names(n), n) for seed in (11, 12)]

    def reader(order):
        return [name for name in order if read(fs, "/" + name) != data[name]]

    with ThreadPoolExecutor(2) as pool:
        wrong = [w for ws in pool.map(reader, orders) for w in ws]
    assert not wrong
    quiet(fs)
    assert all(bucket.got(name) == 1 for name in names(n)) and len(bucket.gets) == n
