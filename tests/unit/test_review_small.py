"""Review of the merge of ``small`` (d749226): a reader runs its own GET in its thread, in one of
the pool's places, and a read's GET that carries read-ahead is always queued. What a user relies
on: every byte read is exact, a failure is only the reader's whose fetch failed, and the pool's
places and read-ahead slots come back exactly once whatever happened (else the mount runs with
fewer workers, or none, from then on)."""

from __future__ import annotations

import random
import threading

from octuefs.errors import BucketUnreachable, StorageError

from .test_cache import (
    RecordingBucket,
    fast_checksums,  # noqa: F401 - an autouse fixture, used here too
    make_cache,
    put,
    wait_until,
)

KiB = 1024
MiB = 1024 * KiB


class FlakyBucket(RecordingBucket):
    """Fails about one ranged GET in five, at random (seeded), half of them as an outage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = random.Random(7)
        self._pick = threading.Lock()

    def read_range(self, name, start, end, generation=None):
        with self._pick:
            roll = self.rng.random()
        if roll < 0.1:
            raise BucketUnreachable("the bucket is away")
        if roll < 0.2:
            raise StorageError("a 500 from the bucket")
        return super().read_range(name, start, end, generation)


def test_readers_and_workers_give_back_every_place_and_slot_after_errors_and_no_room(tmp_path, monkeypatch):
    """Readers of small files (their GET in their thread), of big files from offset 0 (a GET that
    carries read-ahead, queued), at random offsets, in a cache too small for all of it, against a
    bucket that fails a GET in five: every read either returns exact bytes or raises, and once
    all is over the pool has nothing claimed, running or counted as read-ahead."""
    from octuefs.cache import fetching

    monkeypatch.setattr(fetching, "RECENT_FAILURE", 0.0)  # (every read asks again)
    bucket = FlakyBucket("review-small")
    block = 64 * KiB
    small = [put(bucket, f"s{i}", 3000 + i, seed=i) for i in range(40)]
    big = [put(bucket, f"b{i}", 2 * MiB + 1234 * i, seed=100 + i) for i in range(6)]
    cache = make_cache(tmp_path, bucket, block_size=block, fetch_workers=2, cache_size=3 * MiB,
                       read_ahead=1 * MiB, request_size=256 * KiB, ahead_request_size=512 * KiB)
    wrong: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30):
            kind = rng.random()
            info, data = rng.choice(small if kind < 0.4 else big)
            if kind < 0.7:
                offset, size = 0, (info.size if kind < 0.4 else 128 * KiB)
            else:
                offset = rng.randrange(info.size)
                size = rng.randrange(1, 300 * KiB)
            try:
                got = cache.read(info, offset, size)
            except (StorageError, BucketUnreachable):
                continue
            if got != data[offset : offset + size]:
                wrong.append(f"{info.name} {offset}+{size}")
            if kind >= 0.4 and kind < 0.7:  # go on reading it in order, as cat does
                for at in range(128 * KiB, info.size, 128 * KiB):
                    try:
                        got = cache.read(info, at, 128 * KiB)
                    except (StorageError, BucketUnreachable):
                        break
                    if got != data[at : at + 128 * KiB]:
                        wrong.append(f"{info.name} {at}")

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(60)
    assert not any(t.is_alive() for t in readers), "a reader hung"
    assert not wrong
    pool = cache._pool

    def idle() -> bool:
        with pool._cond:
            return not [t for _, _, t in pool._heap if not t.started] and pool._busy == 0

    assert wait_until(idle, 10)
    with pool._cond:
        assert (pool._claimed, pool._busy, pool._ahead, pool._running) == (0, 0, 0, {})
    assert cache.space._ahead_reserved == 0  # every read-ahead reservation settled


def test_a_reader_does_not_take_a_place_from_a_queued_fetch_another_reader_waits_for():
    """A fetch a reader waits for, queued because every place was taken, gets the next place
    that frees: a reader coming meanwhile queues behind it rather than running its own GET in
    that place first (a stream of small-file readers would otherwise hold a big file's reader,
    whose GET carries read-ahead and is always queued, back for as long as they keep coming)."""
    from octuefs.cache.readahead import DEMAND, FetchPool

    pool = FetchPool(1)
    assert pool.claim()  # a reader runs its GET in the one place
    ran, go = threading.Event(), threading.Event()

    def fetch():  # holds its place until the test has looked (else it may be done before)
        ran.set()
        go.wait(5)

    pool.submit(fetch, DEMAND)  # another reader's fetch waits for a place
    pool.unclaim()
    try:
        assert not pool.claim(), "a newcomer took the place the queued fetch was waiting for"
    finally:
        go.set()
    assert ran.wait(5)
    assert wait_until(lambda: pool._busy == 0)
    assert pool.claim()  # nothing queued: a reader runs its own again
    pool.unclaim()
