"""Review of the cold sequential read change (c5ea459): the first read's GET carries its
read-ahead. What a user relies on around it: a read someone waits for always finds a worker,
and read-ahead (merged into a read's GET or not) keeps to the cache's read-ahead rules."""

from __future__ import annotations

import threading
import time

import pytest

from octuefs.storage.base import pwrite_all

from .test_cache import (
    fast_checksums,  # noqa: F401 - an autouse fixture, used here too
    make_cache,
    pool_settled,
    put,
    wait_until,
)
from .test_cache_size import read_all
from .test_cache_streaming import StreamingBucket

KiB = 1024
MiB = 1024 * KiB


class HoldingBucket(StreamingBucket):
    """A ranged GET of more than one block writes its first block, then holds until ``gate``:
    the read-ahead part of a long GET still arriving, as at a distance."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fail_with: BaseException | None = None  # raised by a held GET once let go
        self.held = 0
        self._count = threading.Lock()

    def read_range_into(self, name, start, end, fd, generation=None, progress=None):
        data = self.read_range(name, start, end, generation)
        for at in range(0, len(data), self.piece):
            pwrite_all(fd, data[at : at + self.piece], start + at)
            if progress is not None:
                progress(start + min(at + self.piece, len(data)))
            if at == 0 and len(data) > self.piece:
                with self._count:
                    self.held += 1
                assert self.gate.wait(10), "test gate never opened"
                failure, self.fail_with = self.fail_with, None
                if failure is not None:
                    raise failure
        return len(data)


def test_a_reader_of_a_new_file_is_not_held_back_by_the_read_ahead_of_files_opened_before(tmp_path):
    """`head -c 100 *` with 8 readers at once (xargs -P8): each file's first read returns once
    its block is in, while its read-ahead goes on arriving. The next file's first read must
    find a worker at once (one is always kept for reads someone waits for), not wait until
    some earlier file's read-ahead has all arrived."""
    bucket = HoldingBucket("hold")
    files = [put(bucket, f"f{i}.bin", 32 * MiB, seed=i) for i in range(9)]
    cache = make_cache(tmp_path, bucket, block_size=MiB, fetch_workers=8)
    try:
        for info, data in files[:8]:  # each returns with its first block
            assert cache.read(info, 0, 100) == data[:100]
        assert wait_until(lambda: bucket.held >= 7)
        info, data = files[8]
        got = {}
        reader = threading.Thread(target=lambda: got.update(data=cache.read(info, 0, 100)), daemon=True)
        reader.start()
        reader.join(3)
        assert got.get("data") == data[:100], "the 9th file's first read waited for others' read-ahead"
    finally:
        bucket.gate.set()
        assert wait_until(lambda: pool_settled(cache._pool))


def test_a_small_cache_shared_by_readers_from_offset_0_fetches_each_block_once(tmp_path):
    """Six files read side by side from offset 0 through a 16 MiB cache: each reader's first
    GET carries read-ahead, which must keep to the read-ahead rules (within the read-ahead
    budget, spared until read, dropped when there is no room), or the readers evict each
    other's blocks before they are read and fetch them again."""
    from .test_cache import RecordingBucket
    from .test_cache_size import bounded

    limit = 16 * MiB
    bucket = RecordingBucket("small-cache")
    cache = bounded(tmp_path, bucket, limit, request_size=2 * MiB)
    objects = [put(bucket, f"m{i}.bin", 16 * MiB, seed=60 + i) for i in range(6)]
    outs = [bytearray() for _ in objects]
    for offset in range(0, 16 * MiB, 128 * KiB):
        for (info, _), out in zip(objects, outs):
            out += cache.read(info, offset, 128 * KiB)
            assert cache.usage()["clean_bytes"] <= limit
    assert all(bytes(out) == data for (_, data), out in zip(objects, outs))
    assert sum(hi - lo for lo, hi in bucket.ranges) <= 1.05 * 6 * 16 * MiB


def _slow_warmers(monkeypatch, first):
    """GCSBucket.list_page answers the check's own listing with ``first()`` at once, and holds
    the listings that only warm connections (threads named octuefs-warm) for 8 s: a path that
    drops some connections."""
    from octuefs.storage import gcs

    def list_page(self, *args, **kwargs):
        if threading.current_thread().name == "octuefs-warm":
            time.sleep(8)
            return None
        return first()

    monkeypatch.setattr(gcs.GCSBucket, "list_page", list_page)
    return gcs.GCSBucket("warm", project="p", endpoint="http://127.0.0.1:9")


def test_a_bucket_check_waits_for_its_extra_connections_no_longer_than_its_deadline(monkeypatch):
    """The listings that only open connections are waited for within the check's deadline in
    all (not the deadline once per connection), and not at all once the check has failed: the
    mount's error line comes at once."""
    from octuefs.errors import BucketNotFound

    bucket = _slow_warmers(monkeypatch, lambda: None)
    started = time.monotonic()
    bucket.check(deadline=1.0, connections=4)
    assert time.monotonic() - started < 2.0

    def missing():
        raise BucketNotFound("no such bucket")

    bucket = _slow_warmers(monkeypatch, missing)
    started = time.monotonic()
    with pytest.raises(BucketNotFound):
        bucket.check(deadline=1.0, connections=4)
    assert time.monotonic() - started < 0.5


def test_a_bucket_check_opens_its_extra_connections_only_after_its_own_listing_was_answered(monkeypatch):
    """The listings that only warm connections go out after the check's own listing was
    answered (its credentials' token is then fetched once, not once per connection), and not
    at all when the check fails: a wrong bucket or a failing endpoint gets one check."""
    from octuefs.errors import BucketNotFound
    from octuefs.storage import gcs

    calls: list[tuple[str, float]] = []
    answered: list[float] = []
    outcome = {"fail": False}

    def list_page(self, *args, **kwargs):
        calls.append((threading.current_thread().name, time.monotonic()))
        if threading.current_thread().name != "octuefs-warm":
            time.sleep(0.05)  # the check's own round trip
            answered.append(time.monotonic())
            if outcome["fail"]:
                raise BucketNotFound("no such bucket")
        return None

    monkeypatch.setattr(gcs.GCSBucket, "list_page", list_page)
    bucket = gcs.GCSBucket("warm", project="p", endpoint="http://127.0.0.1:9")
    bucket.check(deadline=1.0, connections=4)
    warm = [t for name, t in calls if name == "octuefs-warm"]
    assert len(calls) == 5 and len(warm) == 4  # the check's, then 4 at once
    assert min(warm) >= answered[0]

    calls.clear()
    outcome["fail"] = True
    with pytest.raises(BucketNotFound):
        bucket.check(deadline=1.0, connections=4)
    time.sleep(0.1)
    assert [name for name, _ in calls] == [threading.current_thread().name]


def test_a_reader_that_joined_the_read_ahead_of_another_reads_get_tries_again_when_it_fails(tmp_path):
    """The first read's GET carries read-ahead; a second read (the kernel's own read-ahead of
    the same reader, or another reader) joins it for a block of that read-ahead. The GET breaks
    after the first read's block: that is not the second read's failure (as for any read-ahead
    it joined): it asks for its block once more and gets it."""
    from octuefs.errors import TransientError

    bucket = HoldingBucket("joined")
    info, data = put(bucket, "joined.bin", 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]
    assert wait_until(lambda: bucket.held == 1)  # the GET that goes on past block 0 holds
    (lo, hi), = [(lo, hi) for lo, hi in bucket.ranges if hi - lo > MiB]
    assert lo <= MiB < 3 * MiB <= hi  # blocks 1 and 2 come in it
    got = {}

    def second():
        try:
            got["data"] = cache.read(info, 2 * MiB, 100)
        except Exception as exc:  # what the kernel would turn into EIO
            got["error"] = exc

    reader = threading.Thread(target=second, daemon=True)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive()  # it waits for block 2, which that GET brings
    bucket.fail_with = TransientError("connection reset mid-body")
    bucket.gate.set()
    reader.join(10)
    assert got == {"data": data[2 * MiB : 2 * MiB + 100]}
    assert read_all(cache, info) == data


def test_far_from_the_bucket_head_c_100_fetches_what_it_did_near_it_and_cat_the_round_trip(tmp_path):
    """`head -c 100 *`, `dd bs=4k count=1`, a header read: the kernel asks 16-32 KiB at offset 0
    and the reader leaves. That first read reads ahead as near the bucket (the usual start), not
    what a round trip brings (up to half the largest window, per file); a first read the size a
    streaming reader asks (cat, cp: 256 KiB) gets the round trip's window."""
    from .test_cache_streaming import FarBucket

    bucket = FarBucket("heads")
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=64 * MiB)
    head, head_data = put(bucket, "head.bin", 96 * MiB)
    assert cache.read(head, 0, 16 * KiB) == head_data[: 16 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    assert bucket.ranges == [(0, 5 * MiB)]  # its block, and the usual 4 MiB past the read
    bucket.ranges = []
    cat, data = put(bucket, "cat.bin", 96 * MiB, seed=1)
    assert cache.read(cat, 0, 256 * KiB) == data[: 256 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    assert bucket.ranges == [(0, 21 * MiB)]  # 20 ms at 1 GiB/s past the read, in one GET
    assert read_all(cache, head) == head_data  # a header reader that goes on reads it all
