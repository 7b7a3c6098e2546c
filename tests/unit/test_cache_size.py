"""A bounded content cache (``cache_size``) against the in-memory bucket: clean data stays within
the limit (as counted, and as the disk sees it), least recently used first, evicted blocks come
back byte for byte, blocks in use are never taken, and unsaved data is never touched."""

from __future__ import annotations

import base64
import errno
import os
import random
import threading
import zlib

import pytest

from octuefs.assembly import build_filesystem
from octuefs.cache import content as cache_module
from octuefs.cache import space as cachespace
from octuefs.cache.content import ContentCache
from octuefs.config import (
    DEFAULT_CACHE_SIZE,
    UNLIMITED,
    MountConfig,
    effective_cache_size,
    parse_size,
)
from octuefs.errors import TransientError
from octuefs.storage import fake

from .test_cache import RecordingBucket, put, wait_until

KiB = 1024
MiB = 1024 * KiB
# ext4 may give a sparse file an extent block or two of its own; that is not cached data.
METADATA_SLACK = 16 * KiB


@pytest.fixture(autouse=True)
def fast_checksums(monkeypatch):
    monkeypatch.setattr(fake, "crc32c_b64", lambda data: base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode())


@pytest.fixture
def bucket():
    return RecordingBucket("cache-size-test")


def bounded(tmp_path, bucket, limit, block_size=MiB, **kw) -> ContentCache:
    return ContentCache(str(tmp_path / "cache"), bucket, block_size, cache_size=limit, **kw)


def disk_usage(cache: ContentCache) -> tuple[int, int]:
    """(bytes the disk holds for the cached copies, how many copies), from st_blocks."""
    used = files = 0
    for root, _, names in os.walk(os.path.join(cache.root, "blocks")):
        for name in names:
            used += os.stat(os.path.join(root, name)).st_blocks * 512
            files += 1
    return used, files


def assert_within(cache: ContentCache, limit: int) -> None:
    assert cache.usage()["clean_bytes"] <= limit
    used, files = disk_usage(cache)
    assert used <= limit + files * METADATA_SLACK, f"{used} bytes on disk in {files} files, limit {limit}"


def read_all(cache: ContentCache, info, chunk: int = 128 * KiB) -> bytes:
    out = bytearray()
    for offset in range(0, info.size, chunk):
        out += cache.read(info, offset, chunk)
    return bytes(out)


# --- the limit ----------------------------------------------------------------------------------


def test_one_file_larger_than_the_cache_read_sequentially_stays_within_the_limit(tmp_path, bucket):
    info, data = put(bucket, "big.bin", 48 * MiB)
    limit = 8 * MiB
    cache = bounded(tmp_path, bucket, limit, request_size=4 * MiB)
    bucket.set_latency(0.002)
    out = bytearray()
    for offset in range(0, info.size, 128 * KiB):
        out += cache.read(info, offset, 128 * KiB)
        assert_within(cache, limit)
    assert bytes(out) == data
    assert cache.usage()["peak_bytes"] <= limit  # not even for a moment
    # Read-ahead ran (fewer requests than blocks) and never evicted a block before its reader
    # got to it: every block was fetched exactly once.
    assert bucket.blocks_fetched(MiB) == list(range(48))
    assert bucket.calls["read"] < 48


def test_many_files_read_in_turn_stay_within_the_limit_and_read_back_right(tmp_path, bucket):
    limit = 6 * MiB
    cache = bounded(tmp_path, bucket, limit)
    objects = [put(bucket, f"f{i}.bin", (i % 3 + 1) * MiB + 12345, seed=i) for i in range(10)]
    for info, data in objects * 2:  # the second round reads evicted blocks back
        assert read_all(cache, info) == data
        assert_within(cache, limit)
    assert cache.usage()["evicted_bytes"] > 0


def test_the_least_recently_used_go_first_and_evicted_blocks_are_fetched_again(tmp_path, bucket):
    cache = bounded(tmp_path, bucket, 4 * MiB)
    (a, a_data), (b, b_data), (c, c_data) = (put(bucket, f"{n}.bin", 2 * MiB, seed=i) for i, n in enumerate("abc"))
    assert cache.read(a, 0, a.size) == a_data
    assert cache.read(b, 0, b.size) == b_data
    assert cache.read(a, 0, a.size) == a_data  # a is now more recent than b
    bucket.reset_calls()
    assert cache.read(c, 0, c.size) == c_data  # room for c: b goes, not a
    assert bucket.calls["read"] == 1
    bucket.reset_calls()
    assert cache.read(a, 0, a.size) == a_data
    assert bucket.calls["read"] == 0  # still cached
    assert cache.read(b, 0, b.size) == b_data  # evicted: fetched again, same bytes
    assert bucket.calls["read"] == 1
    assert_within(cache, 4 * MiB)


def test_concurrent_sequential_readers_do_not_evict_each_others_read_ahead(tmp_path, bucket):
    limit = 8 * MiB
    cache = bounded(tmp_path, bucket, limit, request_size=2 * MiB)
    objects = [put(bucket, f"s{i}.bin", 16 * MiB, seed=50 + i) for i in range(2)]
    outs = [bytearray() for _ in objects]
    for offset in range(0, 16 * MiB, 128 * KiB):  # two readers taking turns
        for (info, _), out in zip(objects, outs):
            out += cache.read(info, offset, 128 * KiB)
            assert cache.usage()["clean_bytes"] <= limit
    assert all(bytes(out) == data for (_, data), out in zip(objects, outs))
    # Each reader's read-ahead landed before it was needed and stayed until it was read:
    # no block of any file was fetched twice.
    assert sum(hi - lo for lo, hi in bucket.ranges) == 2 * 16 * MiB


def test_many_concurrent_readers_share_a_small_cache_without_a_storm_of_refetches(tmp_path, bucket):
    limit = 8 * MiB  # four readers, each wanting its block and up to 2 MiB read ahead: more than fits
    cache = bounded(tmp_path, bucket, limit, request_size=2 * MiB)
    objects = [put(bucket, f"m{i}.bin", 16 * MiB, seed=60 + i) for i in range(4)]
    outs = [bytearray() for _ in objects]
    for offset in range(0, 16 * MiB, 128 * KiB):
        for (info, _), out in zip(objects, outs):
            out += cache.read(info, offset, 128 * KiB)
            assert cache.usage()["clean_bytes"] <= limit
    assert all(bytes(out) == data for (_, data), out in zip(objects, outs))
    # Read-ahead that cannot fit is dropped, and reads take the room of blocks already read, so
    # little is fetched twice (how little depends on timing; without those rules, seven times).
    assert sum(hi - lo for lo, hi in bucket.ranges) <= 1.5 * 4 * 16 * MiB


def test_an_unlimited_cache_keeps_everything(tmp_path, bucket):
    cache = bounded(tmp_path, bucket, None)
    objects = [put(bucket, f"u{i}.bin", 3 * MiB, seed=i) for i in range(4)]
    for info, data in objects:
        assert cache.read(info, 0, info.size) == data
    assert cache.usage()["clean_bytes"] == 12 * MiB
    assert disk_usage(cache)[0] >= 12 * MiB
    assert cache.usage()["evicted_bytes"] == 0


def test_read_ahead_is_capped_to_a_quarter_of_the_limit(tmp_path, bucket):
    assert bounded(tmp_path, bucket, 16 * MiB).read_ahead == 4 * MiB
    assert bounded(tmp_path, bucket, 2 * MiB).read_ahead == MiB  # never less than a block
    assert bounded(tmp_path, bucket, None).read_ahead == 64 * MiB


# --- what is never evicted ---------------------------------------------------------------------------


def test_a_block_a_reader_is_about_to_return_is_never_evicted(tmp_path, bucket, monkeypatch):
    limit = 2 * MiB
    cache = bounded(tmp_path, bucket, limit)
    held, held_data = put(bucket, "held.bin", MiB, seed=1)
    others = [put(bucket, f"o{i}.bin", 2 * MiB, seed=10 + i) for i in range(4)]
    at_pread, go_on = threading.Event(), threading.Event()
    real_pread = cache_module.pread_into  # (read is read_into a buffer of its own)

    def slow_pread(fd, buf, offset):
        if threading.current_thread().name == "holder":
            at_pread.set()
            assert go_on.wait(10)
        return real_pread(fd, buf, offset)

    monkeypatch.setattr(cache_module, "pread_into", slow_pread)
    result = {}
    holder = threading.Thread(target=lambda: result.update(got=cache.read(held, 0, held.size)), name="holder")
    holder.start()
    assert at_pread.wait(5)  # the block is present; the reader has not read it yet
    for info, data in others:  # each needs the whole cache: only the held block's room is missing
        assert cache.read(info, 0, info.size) == data
        assert cache.usage()["clean_bytes"] <= limit + MiB  # past the limit by the held block at most
    go_on.set()
    holder.join(5)
    assert result["got"] == held_data  # not a hole's zeros
    assert_within(cache, limit)  # trimmed once the reader let go


def test_a_block_in_flight_is_not_evicted_and_lands_intact(tmp_path, bucket):
    limit = 2 * MiB
    cache = bounded(tmp_path, bucket, limit)
    slow, slow_data = put(bucket, "slow.bin", 2 * MiB, seed=2)
    gate = bucket.gates[MiB] = threading.Event()  # the GET of slow.bin's second block hangs
    result = {}
    reader = threading.Thread(target=lambda: result.update(got=cache.read(slow, MiB, MiB)))
    reader.start()
    assert wait_until(lambda: (MiB, 2 * MiB) in bucket.ranges)
    for i in range(3):  # others fill the cache meanwhile (blocks at offset 0: not gated)
        info, data = put(bucket, f"fill{i}.bin", MiB, seed=20 + i)
        assert cache.read(info, 0, MiB) == data
    gate.set()
    reader.join(5)
    assert result["got"] == slow_data[MiB:]
    assert bucket.ranges.count((MiB, 2 * MiB)) == 1
    assert_within(cache, limit)


def test_staging_files_are_neither_counted_nor_evicted(tmp_path, bucket):
    limit = 4 * MiB
    cache = bounded(tmp_path, bucket, limit)
    big, big_data = put(bucket, "big.bin", 10 * MiB, seed=5)
    staged = cache.stage(big)  # larger than the whole cache: copied through it a few blocks at a time
    assert cache.usage()["peak_bytes"] <= limit
    for i in range(6):
        info, data = put(bucket, f"r{i}.bin", 2 * MiB, seed=30 + i)
        assert cache.read(info, 0, info.size) == data
    with open(staged, "rb") as f:
        assert f.read() == big_data
    assert cache.staging_bytes() == 10 * MiB
    assert_within(cache, limit)


def test_unsaved_files_are_never_evicted_and_arrive_intact(tmp_path):
    bucket = fake.FakeBucket("unsaved-test")
    config = MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "mnt"), cache_dir=str(tmp_path / "cache"),
                         block_size=MiB, cache_size=4 * MiB)
    fs = build_filesystem(bucket, config)
    try:
        clean = [(f"c{i}.bin", random.Random(i).randbytes(3 * MiB)) for i in range(5)]
        for name, data in clean:
            bucket.upload_bytes(name, data)
        bucket.set_fault_rate(1.0, lambda: TransientError("bucket unreachable"), operations=("upload",))
        unsaved = random.Random(99).randbytes(6 * MiB)  # more than the whole cache
        fh = fs.create("/unsaved.bin", os.O_WRONLY | os.O_CREAT)
        fs.write(fh, unsaved, 0)
        fs.flush(fh)
        fs.release(fh)
        for name, data in clean:  # far more clean data than the limit passes through meanwhile
            fh = fs.open(f"/{name}", os.O_RDONLY)
            assert fs.read(fh, len(data), 0) == data
            fs.release(fh)
        usage = fs.cache_usage()
        assert usage["clean_bytes"] <= 4 * MiB and usage["unsaved_bytes"] == 6 * MiB
        fh = fs.open("/unsaved.bin", os.O_RDONLY)
        assert fs.read(fh, 8 * MiB, 0) == unsaved
        fs.release(fh)
        bucket.set_fault_rate(0.0)
        assert fs.uploader.sync(timeout=30) == 0
        assert bucket.objects()["unsaved.bin"] == unsaved
        assert fs.cache_usage()["unsaved_bytes"] == 0
    finally:
        bucket.set_fault_rate(0.0)
        fs.shutdown()


# --- adopted content ------------------------------------------------------------------------------


def test_content_adopted_after_an_upload_counts_and_pushes_older_data_out(tmp_path, bucket):
    limit = 4 * MiB
    cache = bounded(tmp_path, bucket, limit)
    old, old_data = put(bucket, "old.bin", 3 * MiB, seed=7)
    assert cache.read(old, 0, old.size) == old_data
    new_data = random.Random(8).randbytes(3 * MiB)
    staged = cache.new_staging_path()
    with open(staged, "wb") as f:
        f.write(new_data)
    new = bucket.upload_file("new.bin", staged, {})
    cache.adopt(new, staged)
    assert_within(cache, limit)
    bucket.reset_calls()
    assert cache.read(new, 0, new.size) == new_data and bucket.calls["read"] == 0
    assert cache.read(old, 0, old.size) == old_data and bucket.calls["read"] > 0  # pushed out


def test_content_larger_than_the_cache_is_not_adopted(tmp_path, bucket):
    cache = bounded(tmp_path, bucket, 2 * MiB)
    staged = cache.new_staging_path()
    with open(staged, "wb") as f:
        f.write(b"x" * (3 * MiB))
    info = bucket.upload_file("huge.bin", staged, {})
    cache.adopt(info, staged)
    assert os.path.exists(staged)  # left to its owner (the journal deletes it)
    assert cache.usage()["clean_bytes"] == 0
    assert cache.read(info, 0, 10) == b"x" * 10


# --- without holes ---------------------------------------------------------------------------------


def test_without_hole_punching_whole_idle_files_are_evicted(tmp_path, bucket, monkeypatch):
    def cannot(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(cachespace, "punch_hole", cannot)
    limit = 4 * MiB
    cache = bounded(tmp_path, bucket, limit)
    objects = [put(bucket, f"w{i}.bin", MiB + 500, seed=40 + i) for i in range(8)]
    for info, data in objects * 2:
        assert cache.read(info, 0, info.size) == data
        assert_within(cache, limit)
    assert not cache.space.can_punch
    assert disk_usage(cache)[1] <= 4  # evicted copies were deleted, not left behind


# --- the option -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("500M", 500 * MiB), ("10G", 10 * 1024 * MiB), ("1.5GiB", 1536 * MiB), ("8388608", 8 * MiB),
    ("64m", 64 * MiB), ("2 MiB", 2 * MiB), ("1GB", 10**9), ("unlimited", UNLIMITED), ("auto", None),
])
def test_sizes_are_read_as_people_write_them(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["12Q", "-5M", "1.5iB", "GiB", "", "ten", "1e9", "5MiBB"])
def test_a_bad_size_is_refused(text):
    with pytest.raises(ValueError, match="is not a size like 500M"):
        parse_size(text)


def test_the_command_line_refuses_a_bad_or_tiny_size_in_one_line(tmp_path, capsys):
    from octuefs.cli import main

    (tmp_path / "mnt").mkdir()
    for size, needle in [("12Q", "'12Q' is not a size like 500M"), ("1M", "at least 8.0 MiB")]:
        assert main(["mount", "bucket", str(tmp_path / "mnt"), "--cache-size", size]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("octuefs: error:") and needle in err, err


def test_cache_size_comes_from_the_option_or_from_o_as_fstab_writes_it(tmp_path):
    from octuefs.cli import build_parser, config_from_args

    def config(*extra):
        return config_from_args(build_parser().parse_args(["mount", "b", str(tmp_path), *extra]))

    assert config("--cache-size", "1.5GiB").cache_size == 1536 * MiB
    assert config("-o", "allow_other,cache_size=500M").cache_size == 500 * MiB
    assert config("-o", "cache_size=unlimited").cache_size == UNLIMITED
    assert config().cache_size is None


def test_the_default_is_10g_or_half_the_free_space_of_the_cache_disk(tmp_path, monkeypatch):
    import collections

    from octuefs import config as config_module

    base = dict(bucket="b", mountpoint=str(tmp_path / "mnt"), cache_dir=str(tmp_path / "not" / "made" / "yet"))
    disk = collections.namedtuple("statvfs", "f_bavail f_frsize")
    asked = []

    def free(gib):
        def statvfs(path):
            asked.append(path)
            return disk(int(gib * 1024**3) // 4096, 4096)
        monkeypatch.setattr(config_module.os, "statvfs", statvfs)

    free(100)
    assert effective_cache_size(MountConfig(**base)) == DEFAULT_CACHE_SIZE == 10 * 1024 * MiB
    free(6)
    assert effective_cache_size(MountConfig(**base)) == 3 * 1024 * MiB
    free(0.001)
    assert effective_cache_size(MountConfig(**base)) == 8 * MiB  # two blocks at least
    assert asked[-1] == str(tmp_path)  # the disk the cache directory will be made on
    assert effective_cache_size(MountConfig(**base, cache_size=UNLIMITED)) is None
    assert effective_cache_size(MountConfig(**base, cache_size=64 * MiB)) == 64 * MiB
