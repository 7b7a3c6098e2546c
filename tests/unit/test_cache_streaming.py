"""Sequential reads at a distance, against the in-memory bucket: a sequential reader keeps long
read-ahead requests in flight (few round trips per MiB), a random reader asks for its blocks only,
each block of a long request reaches its reader as soon as it is written, and a request that
fails half-way keeps what it brought and never mixes generations. The bytes are always checked."""

from __future__ import annotations

import random
import threading

import pytest

from octuefs.cache.readahead import AHEAD, DEMAND, FetchPool
from octuefs.errors import NotFound, StorageError
from octuefs.storage.base import pwrite_all

from .test_cache import (
    RecordingBucket,
    fast_checksums,  # noqa: F401 - an autouse fixture, used here too
    make_cache,
    pool_settled,
    put,
    wait_until,
)
from .test_cache_size import read_all

KiB = 1024
MiB = 1024 * KiB


class StreamingBucket(RecordingBucket):
    """A RecordingBucket whose ``read_range_into`` writes a block at a time, reporting progress
    as a streaming download does, and can stop after the first block of the request starting
    at an offset: hold there (``pauses``, then fail if ``fail_after_pause``) or fail there
    (``breaks``)."""

    piece = MiB

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pauses: dict[int, threading.Event] = {}
        self.paused: set[int] = set()  # requests holding after their first piece
        self.breaks: dict[int, BaseException] = {}
        self.fail_after_pause: dict[int, BaseException] = {}  # fail there once the pause ends

    def read_range_into(self, name, start, end, fd, generation=None, progress=None):
        data = self.read_range(name, start, end, generation)  # one request, recorded
        for at in range(0, len(data), self.piece):
            pwrite_all(fd, data[at : at + self.piece], start + at)
            if progress is not None:
                progress(start + min(at + self.piece, len(data)))
            if at == 0:
                failure = self.breaks.pop(start, None)
                if failure is not None:
                    raise failure
                gate = self.pauses.get(start)
                if gate is not None:
                    self.paused.add(start)
                    assert gate.wait(10), "test pause never ended"
                    failure = self.fail_after_pause.pop(start, None)
                    if failure is not None:
                        raise failure
        return len(data)


@pytest.fixture
def bucket():
    return StreamingBucket("streaming-test")


def test_a_sequential_reader_keeps_long_read_ahead_requests_in_flight(tmp_path, bucket):
    info, data = put(bucket, "seq.bin", 96 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=32 * MiB)
    bucket.set_latency(0.02)
    assert read_all(cache, info) == data
    assert bucket.blocks_fetched(MiB) == list(range(96))  # every block exactly once
    # The first read's block and the window it earned (4 MiB from where it ends) are one GET.
    assert bucket.ranges[0] == (0, 5 * MiB)
    # Read-ahead asks for half its window (16 MiB) at a time: about 96 / 16 requests, where
    # requests of request_size (2 MiB) would be 48 round trips.
    assert max(hi - lo for lo, hi in bucket.ranges) == 16 * MiB
    assert bucket.calls["read"] <= 12
    assert bucket.max_active >= 2  # the next one is on its way while the reader eats this one


class FarBucket(StreamingBucket):
    """A StreamingBucket that says it is ``rtt`` seconds away, as GCSBucket.round_trip does
    (its fastest small request, the CPU of one, how many were timed)."""

    rtt = 0.02

    def round_trip(self):
        return self.rtt, 0.0005, 8


def test_far_from_the_bucket_a_read_at_offset_0_asks_for_what_a_round_trip_brings_in_one_get(tmp_path):
    bucket = FarBucket("far")
    info, data = put(bucket, "far.bin", 96 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=64 * MiB)
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    # 20 ms at STREAM_RATE (1 GiB/s) is 20.5 MiB past the read: one GET, not a block and a
    # read-ahead GET beside it (which would need a second connection, and its handshake).
    assert bucket.ranges == [(0, 21 * MiB)]
    # It is bounded by the distance: a bucket ten times as far gets half the largest window.
    bucket.rtt, bucket.ranges = 0.2, []
    other, _ = put(bucket, "farther.bin", 96 * MiB, seed=1)
    assert cache.read(other, 0, 128 * KiB)
    assert wait_until(lambda: pool_settled(cache._pool))
    assert bucket.ranges == [(0, 32 * MiB), (32 * MiB, 33 * MiB)]  # (a GET is 32 MiB at most)


def test_near_the_bucket_a_read_at_offset_0_reads_ahead_as_before(tmp_path):
    bucket = FarBucket("near")
    bucket.rtt = 0.0003  # loopback: less than the usual start, which stands
    info, data = put(bucket, "near.bin", 64 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=64 * MiB)
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    assert bucket.ranges == [(0, 5 * MiB)]  # the block, and 4 MiB (two blocks' worth) past the read


def test_far_from_the_bucket_a_stream_from_offset_0_grows_as_soon_as_it_goes_on(tmp_path):
    bucket = FarBucket("grows")
    info, data = put(bucket, "grows.bin", 96 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=64 * MiB)
    for offset in range(0, 3 * MiB, 128 * KiB):  # past min_run (2 MiB), far from half the window
        assert cache.read(info, offset, 128 * KiB) == data[offset : offset + 128 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    # The window doubled (20 MiB to 41 MiB from the reader) once the reader went past 2 MiB: the
    # next request is on its way long before the first one's 21 MiB are eaten.
    assert bucket.ranges == [(0, 21 * MiB), (21 * MiB, 44 * MiB)]
    assert read_all(cache, info) == data
    assert bucket.blocks_fetched(MiB) == list(range(96))  # every block once


def test_far_from_the_bucket_random_readers_still_fetch_only_their_blocks(tmp_path):
    bucket = FarBucket("random-far")
    info, data = put(bucket, "random.bin", 64 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=64 * MiB)
    offsets = random.Random(5).sample(range(MiB, info.size - 4 * KiB), 30)
    for offset in offsets:
        assert cache.read(info, offset, 4 * KiB) == data[offset : offset + 4 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    assert all(hi - lo == MiB for lo, hi in bucket.ranges)  # one block each: no window, no merge
    # One read of the start (a file's header) fetches the first window, and nothing more after it.
    assert cache.read(info, 0, 4 * KiB) == data[: 4 * KiB]
    assert cache.read(info, 40 * MiB, 4 * KiB) == data[40 * MiB : 40 * MiB + 4 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    assert max(hi for lo, hi in bucket.ranges if lo == 0) <= 21 * MiB
    assert sum(hi - lo for lo, hi in bucket.ranges) <= (30 + 1) * MiB + 21 * MiB


def test_a_random_reader_asks_for_its_blocks_only(tmp_path, bucket):
    info, data = put(bucket, "random.bin", 64 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, read_ahead=32 * MiB)
    offsets = random.Random(3).sample(range(MiB, info.size - 4 * KiB), 40)
    for offset in offsets:
        assert cache.read(info, offset, 4 * KiB) == data[offset : offset + 4 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))
    assert all(hi - lo == MiB for lo, hi in bucket.ranges)  # one block each, nothing ahead
    assert bucket.calls["read"] == len({offset // MiB for offset in offsets} | {(o + 4 * KiB - 1) // MiB for o in offsets})


def test_a_reader_gets_a_block_as_soon_as_it_lands_not_when_the_request_ends(tmp_path, bucket):
    info, data = put(bucket, "early.bin", 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=MiB, read_ahead=16 * MiB)
    pause = bucket.pauses[MiB] = threading.Event()
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]  # offset 0: blocks 1.. read ahead in one GET
    assert wait_until(lambda: MiB in bucket.paused)  # that GET wrote block 1 and holds
    (lo, hi), = [r for r in bucket.ranges if r[0] == MiB]
    assert hi - lo > MiB  # it brings more than the block the reader wants now
    reads = bucket.calls["read"]
    assert cache.read(info, MiB, 256 * KiB) == data[MiB : MiB + 256 * KiB]  # while the GET holds
    assert bucket.calls["read"] == reads  # block 1 came from that GET, not from a request of its own
    pause.set()
    assert read_all(cache, info) == data
    assert bucket.blocks_fetched(MiB) == list(range(16))


def held_after_a_quarter_of_block_1(tmp_path, bucket, name: str):
    """4 MiB blocks written 1 MiB at a time: a read at offset 0 starts read-ahead of the blocks
    after it, in a GET the pool runs, held (``pause``) once it has written the first MiB of block 1."""
    info, data = put(bucket, name, 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=4 * MiB, request_size=4 * MiB, read_ahead=8 * MiB)
    pause = bucket.pauses[4 * MiB] = threading.Event()
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]
    assert wait_until(lambda: 4 * MiB in bucket.paused), "the read-ahead GET never started"
    return info, data, cache, pause


def test_a_reader_of_a_blocks_first_bytes_does_not_wait_for_the_rest_of_the_block(tmp_path, bucket):
    # A reader of bytes in the quarter of block 1 written gets them now; a reader past it waits.
    info, data, cache, pause = held_after_a_quarter_of_block_1(tmp_path, bucket, "piece.bin")
    got = {}
    early = threading.Thread(target=lambda: got.setdefault("early", cache.read(info, 4 * MiB + 1000, 64 * KiB)))
    early.start()
    early.join(5)
    assert not early.is_alive(), "a reader of bytes already written waited for the whole block"
    assert got["early"] == data[4 * MiB + 1000 : 4 * MiB + 1000 + 64 * KiB]
    later = threading.Thread(target=lambda: got.setdefault("later", cache.read(info, 7 * MiB, 4096)))
    later.start()
    later.join(0.3)
    assert later.is_alive(), "a reader of bytes not written yet did not wait for them"
    pause.set()
    later.join(5)
    assert got["later"] == data[7 * MiB : 7 * MiB + 4096]
    assert read_all(cache, info) == data
    assert bucket.blocks_fetched(4 * MiB).count(1) == 1  # block 1 came in that one GET


def test_a_reader_never_gets_bytes_a_get_that_failed_mid_block_did_not_write(tmp_path, bucket):
    # The held GET then fails. The reader of the MiB it wrote has it; the reader past it, waiting
    # meanwhile, gets its own bytes asked again, never the hole the failed GET left (zeros).
    info, data, cache, pause = held_after_a_quarter_of_block_1(tmp_path, bucket, "half.bin")
    assert cache.read(info, 5 * MiB - 4096, 4096) == data[5 * MiB - 4096 : 5 * MiB]  # written: no wait
    got, errors = {}, []

    def late():
        try:
            got["late"] = cache.read(info, 5 * MiB, 64 * KiB)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    reader = threading.Thread(target=late)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), "a reader of bytes not written yet did not wait for them"
    bucket.fail_after_pause[4 * MiB] = StorageError("connection reset mid-body")
    pause.set()
    reader.join(5)
    assert not reader.is_alive() and not errors, errors
    assert got["late"] == data[5 * MiB : 5 * MiB + 64 * KiB]
    assert read_all(cache, info) == data


def test_a_request_that_fails_half_way_keeps_its_landed_blocks_and_mixes_no_generations(tmp_path, bucket):
    old, data = put(bucket, "replaced.bin", 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=MiB, read_ahead=16 * MiB)
    # The read-ahead GET of blocks 1.. writes block 1, then the generation is gone (404).
    bucket.breaks[MiB] = NotFound("the generation is gone")
    assert cache.read(old, 0, 128 * KiB) == data[: 128 * KiB]
    assert wait_until(lambda: not bucket.breaks and pool_settled(cache._pool))
    new, new_data = put(bucket, "replaced.bin", 16 * MiB, seed=1)
    reads = bucket.calls["read"]
    assert cache.read(old, MiB, 100) == data[MiB : MiB + 100]  # landed before the failure: kept
    assert bucket.calls["read"] == reads
    with pytest.raises(NotFound):  # not landed: asked again, pinned to the old generation
        cache.read(old, 3 * MiB, 100)
    assert read_all(cache, new) == new_data  # the new generation, every byte its own


def test_read_ahead_of_many_files_leaves_a_worker_for_a_reader():
    pool = FetchPool(workers=4, idle=0.5, name="spare-test-pool")
    gate, lock = threading.Event(), threading.Lock()
    running: list[str] = []

    def task(name: str):
        def run():
            with lock:
                running.append(name)
            gate.wait(5)
        return run

    for i in range(6):  # six files streaming: long read-ahead requests, one key each
        pool.submit(task(f"ahead{i}"), AHEAD, key=f"file{i}")
    assert wait_until(lambda: pool_settled(pool, busy=3))
    assert len(running) == 3  # one worker stays free for readers
    pool.submit(task("demand"), DEMAND, key="file9")
    assert wait_until(lambda: "demand" in running)  # starts at once, before any read-ahead ends
    gate.set()
    assert wait_until(lambda: len(running) == 7)
