"""The block cache against the in-memory bucket: read-ahead, parallel ranges, in-flight blocks,
failed fetches, generation pinning and bounded resources. The bytes are always checked."""

from __future__ import annotations

import base64
import os
import random
import threading
import time
import zlib

import pytest

from octuefs.cache import content as cache_module
from octuefs.cache import fetching
from octuefs.cache.content import ContentCache
from octuefs.cache.readahead import AHEAD, DEMAND, FetchPool, Streams
from octuefs.errors import NotFound, StorageError
from octuefs.storage import fake
from octuefs.storage.fake import FakeBucket

KiB = 1024
MiB = 1024 * KiB


class RecordingBucket(FakeBucket):
    """A FakeBucket that records each ranged read, how many run at once, and can hold back
    (``gates``) or fail once (``failures``) the read starting at a given offset."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ranges: list[tuple[int, int]] = []
        self.max_active = 0
        self.gates: dict[int, threading.Event] = {}
        self.failures: dict[int, BaseException] = {}
        self._active = 0
        self._rec = threading.Lock()

    def read_range(self, name, start, end, generation=None):
        with self._rec:
            self.ranges.append((start, end))
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            failure = self.failures.pop(start, None)
            gate = self.gates.get(start)
        try:
            if gate is not None:
                assert gate.wait(10), "test gate never opened"
            if failure is not None:
                raise failure
            return super().read_range(name, start, end, generation)
        finally:
            with self._rec:
                self._active -= 1

    def blocks_fetched(self, block_size: int) -> list[int]:
        with self._rec:
            return sorted(b for lo, hi in self.ranges for b in range(lo // block_size, (hi - 1) // block_size + 1))


@pytest.fixture(autouse=True)
def fast_checksums(monkeypatch):
    """The fake computes crc32c in pure Python (seconds for tens of MiB); these tests need none."""
    monkeypatch.setattr(fake, "crc32c_b64", lambda data: base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode())


@pytest.fixture
def bucket():
    return RecordingBucket("cache-test")


def put(bucket: FakeBucket, name: str, size: int, seed: int = 0):
    data = random.Random(seed).randbytes(size)
    return bucket.upload_bytes(name, data), data


def make_cache(tmp_path, bucket, block_size=MiB, **kw) -> ContentCache:
    return ContentCache(str(tmp_path / "cache"), bucket, block_size, **kw)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def pool_settled(pool: FetchPool, busy: int = 0) -> bool:
    """True once ``busy`` of the pool's threads are running tasks, every other one waits for
    work, and every task not started is read-ahead held back by its key's limit: from then on
    nothing new starts until a task is submitted or a running one ends. (It reads the pool's
    private state, under its lock: the one way to know that nothing more is on its way.)"""
    with pool._cond:
        unstarted = [task for _, _, task in pool._heap if not task.started]
        return pool._threads - pool._waiting == busy and all(pool._held_back_locked(t) for t in unstarted)


@pytest.fixture
def joined(monkeypatch):
    """``joined(block, readers)``: wait (10 s at most) until ``readers`` readers wait at once on
    the one fetch bringing ``block``. Counts who waits on each fetch (``_Fetch.wait_for``)."""
    cond = threading.Condition()
    waiting: dict[object, int] = {}

    class WatchedFetch(fetching._Fetch):
        __slots__ = ()

        def wait_for(self, block, upto):
            with cond:
                waiting[self] = waiting.get(self, 0) + 1
                cond.notify_all()
            try:
                return super().wait_for(block, upto)
            finally:
                with cond:
                    waiting[self] -= 1

    monkeypatch.setattr(fetching, "_Fetch", WatchedFetch)

    def joined(block: int, readers: int = 1) -> bool:
        with cond:
            return cond.wait_for(lambda: any(f.first <= block <= f.last and n >= readers for f, n in waiting.items()),
                                 timeout=10)

    return joined


# --- sequential and random access ---------------------------------------------------------------


def test_sequential_reads_read_ahead_in_fewer_larger_parallel_requests(tmp_path, bucket):
    info, data = put(bucket, "seq.bin", 48 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=256 * KiB, request_size=4 * MiB, read_ahead=16 * MiB)
    bucket.set_latency(0.005)
    chunk = 128 * KiB  # what the kernel sends
    out = bytearray()
    for offset in range(0, info.size, chunk):
        out += cache.read(info, offset, chunk)
    assert bytes(out) == data
    blocks = bucket.blocks_fetched(256 * KiB)
    assert blocks == list(range(48 * MiB // (256 * KiB)))  # every block exactly once
    # One request per block would be 192; read-ahead asks for up to half its window at a time.
    assert bucket.calls["read"] <= 15
    assert max(hi - lo for lo, hi in bucket.ranges) == 8 * MiB
    assert bucket.max_active > 1  # several ranges in flight at once


def test_read_ahead_fetches_the_next_blocks_before_they_are_asked_for(tmp_path, bucket):
    info, data = put(bucket, "next.bin", 32 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB)
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]
    assert cache.read(info, 128 * KiB, 128 * KiB) == data[128 * KiB : 256 * KiB]
    # Nobody asked past the first block, yet the following ones arrive.
    assert wait_until(lambda: set(range(1, 4)) <= set(bucket.blocks_fetched(MiB)))
    before = bucket.calls["read"]
    assert cache.read(info, 2 * MiB, 128 * KiB) == data[2 * MiB : 2 * MiB + 128 * KiB]
    assert wait_until(lambda: bucket.calls["read"] >= before)


def test_the_read_ahead_window_grows_up_to_its_maximum():
    streams = Streams(initial=4 * MiB, maximum=32 * MiB, tolerance=MiB, min_run=2 * MiB)
    windows = []
    pos = 0
    while pos < 200 * MiB:
        ahead = streams.observe(pos, pos + 128 * KiB)
        if ahead is not None:
            windows.append(ahead[1] - pos - 128 * KiB)
        pos += 128 * KiB
    assert windows[0] == 4 * MiB
    assert max(windows) == 32 * MiB
    assert windows == sorted(windows)  # never shrinks while the reader stays sequential


def test_only_a_long_enough_run_or_a_start_at_offset_0_reads_ahead():
    streams = Streams(initial=4 * MiB, maximum=32 * MiB, tolerance=MiB, min_run=2 * MiB)
    assert streams.observe(10 * MiB, 10 * MiB + 100) is None
    assert streams.observe(50 * MiB, 50 * MiB + 100) is None
    for offset in range(10 * MiB + 100, 11 * MiB, 128 * KiB):  # one random 1 MiB read, in pieces
        assert streams.observe(offset, offset + 128 * KiB) is None
    assert streams.observe(12 * MiB - 100, 12 * MiB + 100) == (12 * MiB + 100, 16 * MiB + 100)  # 2 MiB run
    assert streams.observe(0, 100) == (100, 4 * MiB + 100)  # offset 0: the start of a whole-file read


def test_random_1_mib_reads_fetch_only_their_blocks(tmp_path, bucket):
    info, data = put(bucket, "random-mib.bin", 32 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    for block in [20, 5, 27, 12]:
        for offset in range(block * MiB, (block + 1) * MiB, 128 * KiB):
            assert cache.read(info, offset, 128 * KiB) == data[offset : offset + 128 * KiB]
    assert wait_until(lambda: pool_settled(cache._pool))  # any fetch started in the background is done
    assert bucket.blocks_fetched(MiB) == [5, 12, 20, 27]


def test_random_reads_fetch_only_the_blocks_they_touch(tmp_path, bucket):
    info, data = put(bucket, "random.bin", 64 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    blocks = [40, 3, 17, 55, 28, 9, 62, 33]
    for block in blocks:
        offset = block * MiB + 1234
        assert cache.read(info, offset, 100) == data[offset : offset + 100]
    assert wait_until(lambda: pool_settled(cache._pool))  # any fetch started in the background is done
    assert bucket.blocks_fetched(MiB) == sorted(blocks)
    assert bucket.calls["read"] == len(blocks)


def test_a_read_across_many_blocks_fetches_them_in_parallel(tmp_path, bucket):
    info, data = put(bucket, "wide.bin", 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, fetch_workers=4)
    bucket.set_latency(0.05)
    start = time.monotonic()
    assert cache.read(info, MiB, 14 * MiB) == data[MiB : 15 * MiB]
    elapsed = time.monotonic() - start
    assert bucket.calls["read"] == 7 and bucket.max_active == 4
    assert elapsed < 7 * 0.05  # not one request after another


def test_a_reader_runs_its_own_get_in_its_thread_within_the_pools_bound(tmp_path, bucket):
    """A read of a small file makes its GET in the reader's own thread (no hand-off to a worker
    and back), in one of the pool's places: readers and workers together never run more GETs at
    once than the pool's bound, and a reader that finds every place taken queues its fetch."""
    files = [put(bucket, f"small{i}", 4 * KiB, seed=i) for i in range(3)]
    cache = make_cache(tmp_path, bucket, block_size=MiB, fetch_workers=2)
    threads: dict[str, str] = {}
    read_range = bucket.read_range

    def recording(name, start, end, generation=None):
        threads[name] = threading.current_thread().name
        return read_range(name, start, end, generation)

    bucket.read_range = recording
    info, data = files[0]
    assert cache.read(info, 0, 4096) == data  # alone: in this thread
    assert threads["small0"] == threading.current_thread().name
    gate = bucket.gates[0] = threading.Event()  # every GET now waits at the gate
    cache.drop("small0")
    threads.clear()
    got: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda i=i: got.update({f"small{i}": cache.read(files[i][0], 0, 4096)}),
                                name=f"reader{i}") for i in range(3)]
    for reader in readers:
        reader.start()
    assert wait_until(lambda: bucket._active == 2)
    time.sleep(0.05)
    assert bucket._active == 2 and len(threads) == 2  # the third waits for a place
    gate.set()
    for reader in readers:
        reader.join(5)
    assert got == {f"small{i}": files[i][1] for i in range(3)} and bucket.max_active == 2
    assert len(threads) == 3 and sum(1 for t in threads.values() if t.startswith("reader")) >= 2


# --- blocks in flight ----------------------------------------------------------------------------


def test_concurrent_readers_of_one_block_cause_one_fetch(tmp_path, bucket):
    info, data = put(bucket, "shared.bin", 4 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    bucket.set_latency(0.1)
    barrier = threading.Barrier(8)
    results = {}

    def reader(i):
        barrier.wait()
        results[i] = cache.read(info, 2 * MiB + i * 1000, 500)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bucket.blocks_fetched(MiB).count(2) == 1  # (the readers look sequential: block 3 is read ahead)
    assert all(results[i] == data[2 * MiB + i * 1000 : 2 * MiB + i * 1000 + 500] for i in range(8))


def test_a_slow_block_blocks_only_its_own_readers(tmp_path, bucket):
    info, data = put(bucket, "slow.bin", 8 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    gate = bucket.gates[5 * MiB] = threading.Event()
    slow = threading.Thread(target=lambda: cache.read(info, 5 * MiB, 10))
    slow.start()
    assert wait_until(lambda: (5 * MiB, 6 * MiB) in bucket.ranges)
    # Block 5 is stuck in the network; other blocks of the same object still read at once.
    assert cache.read(info, 2 * MiB, 10) == data[2 * MiB : 2 * MiB + 10]
    assert slow.is_alive()
    gate.set()
    slow.join(5)
    assert not slow.is_alive()


def test_a_failed_fetch_raises_to_its_readers_only_and_a_retry_succeeds(tmp_path, bucket):
    info, data = put(bucket, "fail.bin", 8 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    gate = bucket.gates[3 * MiB] = threading.Event()
    bucket.failures[3 * MiB] = StorageError("injected: the network broke")
    errors, results = [], {}

    def reader(offset):
        try:
            results[offset] = cache.read(info, offset, 100)
        except StorageError as exc:
            errors.append(exc)

    waiting = [threading.Thread(target=reader, args=(3 * MiB + i,)) for i in range(3)]
    for t in waiting:
        t.start()
    assert wait_until(lambda: (3 * MiB, 4 * MiB) in bucket.ranges)
    assert cache.read(info, 6 * MiB, 100) == data[6 * MiB : 6 * MiB + 100]  # another block: fine
    gate.set()
    for t in waiting:
        t.join(5)
    assert len(errors) == 3 and all("injected" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3  # each reader raises its own copy
    bucket.gates.clear()
    assert cache.read(info, 3 * MiB, 100) == data[3 * MiB : 3 * MiB + 100]  # the block was left missing
    assert bucket.ranges.count((3 * MiB, 4 * MiB)) == 2


def test_a_failed_read_ahead_leaves_the_blocks_missing_for_the_reader_to_fetch(tmp_path, bucket):
    info, data = put(bucket, "ahead.bin", 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=MiB, ahead_request_size=MiB)
    bucket.failures[2 * MiB] = StorageError("injected read-ahead failure")
    out = bytearray()
    for offset in range(0, info.size, 128 * KiB):
        out += cache.read(info, offset, 128 * KiB)
    assert bytes(out) == data
    assert bucket.ranges.count((2 * MiB, 3 * MiB)) == 2


def test_a_reader_that_joined_a_failed_read_ahead_fetches_its_block_itself(tmp_path, bucket, joined):
    info, data = put(bucket, "joined.bin", 16 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=MiB, ahead_request_size=MiB)
    gate = bucket.gates[2 * MiB] = threading.Event()
    bucket.failures[2 * MiB] = StorageError("injected read-ahead failure")
    assert cache.read(info, 0, 128 * KiB) == data[: 128 * KiB]  # offset 0: reads blocks 1.. ahead
    assert wait_until(lambda: (2 * MiB, 3 * MiB) in bucket.ranges)
    result = {}
    reader = threading.Thread(target=lambda: result.update(got=cache.read(info, 2 * MiB, 100)))
    reader.start()
    assert joined(2)  # the reader now waits for the read-ahead of block 2
    gate.set()
    reader.join(5)
    assert result["got"] == data[2 * MiB : 2 * MiB + 100]
    assert bucket.ranges.count((2 * MiB, 3 * MiB)) == 2


def test_the_pool_runs_demand_before_read_ahead_and_boosts_a_waited_for_task():
    pool = FetchPool(workers=1, idle=0.5, name="order-test-pool")
    gate, order = threading.Event(), []
    pool.submit(lambda: gate.wait(5), DEMAND)  # occupies the only worker
    ahead = [pool.submit(lambda i=i: order.append(f"ahead{i}"), AHEAD) for i in range(3)]
    pool.submit(lambda: order.append("demand"), DEMAND)
    pool.boost(ahead[2])  # a reader now waits for it
    gate.set()
    assert wait_until(lambda: len(order) == 4)
    assert order == ["demand", "ahead2", "ahead0", "ahead1"]


def test_read_ahead_of_one_file_runs_two_at_a_time_but_never_holds_back_a_reader_or_other_files():
    pool = FetchPool(workers=6, idle=0.5, name="per-key-test-pool")
    gate, lock = threading.Event(), threading.Lock()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    done: list[str] = []

    def task(key: str):
        def run():
            with lock:
                running[key] = running.get(key, 0) + 1
                peak[key] = max(peak.get(key, 0), running[key])
            gate.wait(5)
            with lock:
                running[key] -= 1
                done.append(key)
        return run

    for _ in range(5):
        pool.submit(task("a"), AHEAD, key="file-a")
    pool.submit(task("b"), AHEAD, key="file-b")
    pool.submit(task("demand-a"), DEMAND, key="file-a")  # a reader waits: it runs at once
    assert wait_until(lambda: running.get("a") == 2 and running.get("b") == 1 and running.get("demand-a") == 1)
    assert wait_until(lambda: pool_settled(pool, busy=4))  # nothing else will start by itself
    assert running["a"] == 2  # the other three read-aheads of file a wait their turn
    gate.set()
    assert wait_until(lambda: len(done) == 7)
    assert peak["a"] == 2


# --- generations, staging, resources -----------------------------------------------------------


def test_reads_stay_pinned_to_their_generation(tmp_path, bucket):
    info, data = put(bucket, "gen.bin", 4 * MiB, seed=1)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    assert cache.read(info, 100, 100) == data[100:200]
    new, new_data = put(bucket, "gen.bin", 4 * MiB, seed=2)
    assert cache.read(info, 200, 100) == data[200:300]  # cached block of the old generation
    with pytest.raises(NotFound):
        cache.read(info, 3 * MiB, 100)  # not cached: the old generation is gone
    assert cache.read(new, 0, 4 * MiB) == new_data


def test_a_reader_of_a_carried_over_generation_is_not_failed_by_the_old_ones_fetch(tmp_path, bucket, joined):
    data = random.Random(3).randbytes(4 * MiB)
    old = bucket.upload_bytes("c.bin", data)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    gate = bucket.gates[MiB] = threading.Event()
    results = {}

    def read(key, info):
        try:
            results[key] = cache.read(info, MiB, 100)
        except NotFound as exc:
            results[key] = exc

    old_reader = threading.Thread(target=read, args=("old", old))
    old_reader.start()
    assert wait_until(lambda: (MiB, 2 * MiB) in bucket.ranges)
    new = bucket.upload_bytes("c.bin", data)  # the same bytes as a new generation
    cache.carry_over(old, new)
    new_reader = threading.Thread(target=read, args=("new", new))
    new_reader.start()
    assert joined(1, readers=1)  # the new reader now waits for the old generation's fetch of block 1 (the old reader runs it)
    gate.set()
    old_reader.join(5)
    new_reader.join(5)
    assert isinstance(results["old"], NotFound)  # its generation is gone
    assert results["new"] == data[MiB : MiB + 100]


def test_stage_copies_the_whole_object_and_truncate_fetches_only_what_it_keeps(tmp_path, bucket):
    info, data = put(bucket, "stage.bin", 10 * MiB + 5)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    path = cache.stage(info, length=MiB + 10)
    assert open(path, "rb").read() == data[: MiB + 10]
    assert bucket.blocks_fetched(MiB) == [0, 1]
    path = cache.stage(info)
    assert open(path, "rb").read() == data
    assert cache.stage(None) and os.path.getsize(cache.stage(None)) == 0


def test_adopt_drop_and_carry_over_keep_the_table_right(tmp_path, bucket):
    info, data = put(bucket, "a.bin", 2 * MiB)
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    staged = cache.stage(info)
    new = bucket.upload_file("a.bin", staged, {})
    cache.adopt(new, staged)
    bucket.reset_calls()
    assert cache.read(new, 0, 2 * MiB) == data and bucket.calls["read"] == 0
    patched = bucket.patch_metadata("a.bin", {"k": "v"})
    cache.carry_over(new, patched)
    assert cache.read(patched, 0, 2 * MiB) == data and bucket.calls["read"] == 0
    cache.drop("a.bin")
    assert cache.read(patched, 0, 2 * MiB) == data and bucket.calls["read"] == 1


def test_open_files_and_memory_stay_bounded(tmp_path, bucket, monkeypatch):
    monkeypatch.setattr(cache_module, "MAX_OPEN_FILES", 8)
    cache = make_cache(tmp_path, bucket, block_size=MiB, request_size=2 * MiB, fetch_workers=3)
    bucket.set_latency(0.002)
    objects = [put(bucket, f"f{i}", 6 * MiB, seed=i) for i in range(20)]
    fds_before = len(os.listdir("/proc/self/fd"))
    for info, data in objects:
        assert cache.read(info, 0, info.size) == data
        assert len(cache._open) <= 8
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 8
    assert bucket.max_active <= 3  # the pool's bound
    assert max(hi - lo for lo, hi in bucket.ranges) <= 2 * MiB
    for info, data in objects:  # closed descriptors reopen on the next read
        assert cache.read(info, MiB, 10) == data[MiB : MiB + 10]


def test_close_gives_back_every_idle_descriptor_and_the_cache_still_reads(tmp_path, bucket):
    """An unmount closes what the cache kept open for reuse: a process that mounts again and
    again (a long-lived host of FileSystem) must not run out of descriptors."""
    cache = make_cache(tmp_path, bucket, block_size=MiB)
    objects = [put(bucket, f"f{i}", MiB + 1, seed=i) for i in range(5)]
    fds_before = len(os.listdir("/proc/self/fd"))
    for info, data in objects:
        assert cache.read(info, 0, info.size) == data
    assert len(os.listdir("/proc/self/fd")) >= fds_before + 5
    cache.close()
    assert len(os.listdir("/proc/self/fd")) <= fds_before and not cache._open
    info, data = objects[0]
    assert cache.read(info, 0, 10) == data[:10]


def test_idle_pool_threads_end():
    pool = FetchPool(workers=3, idle=0.05, name="idle-test-pool")
    done = threading.Event()
    pool.submit(done.set, AHEAD)
    pool.submit(lambda: None, DEMAND)
    assert done.wait(2)
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("idle-test-pool")], 2)
