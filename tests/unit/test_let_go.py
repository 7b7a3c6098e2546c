"""A reader streaming through a large file leaves the cached copy's pages behind it out of memory
(the kernel's cache of the mounted file holds what it read), and loses nothing by it: the bytes
read again come from the copy on disk. A random reader's copy stays in memory. Residency is read
with mincore(2) on the copy itself."""

from __future__ import annotations

import ctypes
import os
import random
import time

import pytest

from octuefs.cache.content import LET_GO_LAG, LET_GO_MIN, LET_GO_STEP

from .test_cache import fast_checksums, make_cache, put  # noqa: F401 - an autouse fixture, used here too
from .test_cache_streaming import StreamingBucket

MiB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
SIZE = LET_GO_MIN + 32 * MiB


@pytest.fixture
def bucket():
    return StreamingBucket()


def resident(path: str, lo: int, hi: int) -> float:
    """The fraction of the pages of ``path``'s bytes ``[lo, hi)`` in the page cache."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, hi - lo, 1, 1, fd, lo)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer((hi - lo + PAGE - 1) // PAGE)
            assert libc.mincore(addr, hi - lo, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw) / len(vec.raw)
        finally:
            libc.munmap(addr, hi - lo)
    finally:
        os.close(fd)


def copy_path(cache, info) -> str:
    return cache._path_for(info.name, info.generation)


def on_tmpfs(path) -> bool:
    best, fstype = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _dev, where, kind, *_ = line.split()
            if str(path).startswith(where) and len(where) > len(best):
                best, fstype = where, kind
    return fstype == "tmpfs"


def need_disk(path) -> None:
    if on_tmpfs(path):
        pytest.skip("a tmpfs file's pages are its only copy: they cannot be let go")


def test_a_streaming_reader_leaves_the_copy_behind_it_out_of_memory_and_loses_no_byte(tmp_path, bucket):
    need_disk(tmp_path)
    info, data = put(bucket, "big.bin", SIZE)
    cache = make_cache(tmp_path, bucket)
    got = bytearray()
    for offset in range(0, SIZE, MiB):
        got += cache.read(info, offset, MiB)
        time.sleep(0.002)  # a reader that does something with what it reads: writeback goes on meanwhile
    assert bytes(got) == data
    path = copy_path(cache, info)
    behind = SIZE - 2 * LET_GO_LAG - LET_GO_STEP
    assert resident(path, 0, behind) < 0.25, "the pages a streaming reader went past are still in memory"
    assert resident(path, SIZE - LET_GO_LAG + LET_GO_STEP, SIZE) == 1.0, "the lag behind the reader was let go too"
    # Nothing left the cache: read again, the bytes come from the copy on disk, not the bucket.
    asked = len(bucket.ranges)
    assert cache.read(info, 0, 8 * MiB) == data[: 8 * MiB]
    assert cache.read(info, SIZE // 2, 3 * MiB) == data[SIZE // 2 : SIZE // 2 + 3 * MiB]
    assert len(bucket.ranges) == asked


def test_a_random_reader_keeps_the_copy_in_memory(tmp_path, bucket):
    info, data = put(bucket, "big.bin", SIZE)
    cache = make_cache(tmp_path, bucket)
    offsets = list(range(MiB, SIZE - MiB, 3 * MiB))  # never offset 0, which starts a stream at once
    random.Random(5).shuffle(offsets)
    for offset in offsets:
        assert cache.read(info, offset, 64 * 1024) == data[offset : offset + 64 * 1024]
        time.sleep(0.001)
    path = copy_path(cache, info)
    held = [o for o in offsets if resident(path, o, o + 64 * 1024) == 1.0]
    assert len(held) == len(offsets), f"{len(offsets) - len(held)} randomly read blocks left memory"


def test_a_file_below_the_size_keeps_its_copy_in_memory(tmp_path, bucket):
    size = LET_GO_MIN - MiB
    info, data = put(bucket, "mid.bin", size)
    cache = make_cache(tmp_path, bucket)
    got = b"".join(cache.read(info, offset, MiB) for offset in range(0, size, MiB))
    assert got == data
    assert resident(copy_path(cache, info), 0, size - LET_GO_LAG) > 0.9


def test_two_readers_of_one_file_at_different_places_each_leave_the_copy_behind_them_out_of_memory(tmp_path, bucket):
    need_disk(tmp_path)
    size = 2 * LET_GO_MIN + 32 * MiB
    info, data = put(bucket, "big.bin", size)
    cache = make_cache(tmp_path, bucket)
    half = size // 2
    for offset in range(0, half, MiB):  # one reads the first half, the other the second, in turns
        for at in (offset, half + offset):
            assert cache.read(info, at, MiB) == data[at : at + MiB]
        time.sleep(0.002)
    path = copy_path(cache, info)
    behind = half - 2 * LET_GO_LAG - LET_GO_STEP
    assert resident(path, half, half + behind) < 0.25, "the pages the reader ahead went past are still in memory"
    assert resident(path, 0, behind) < 0.25, "the pages the reader behind went past are still in memory"


def test_a_second_pass_through_a_file_leaves_the_copy_behind_it_out_of_memory_too(tmp_path, bucket):
    # As when the kernel's cache of the mounted file lost the first pass's pages: the second
    # reads them from the copy on disk, onto new pages, which it must hand back as well.
    need_disk(tmp_path)
    info, data = put(bucket, "big.bin", SIZE)
    cache = make_cache(tmp_path, bucket)
    for _ in range(2):
        got = bytearray()
        for offset in range(0, SIZE, MiB):
            got += cache.read(info, offset, MiB)
            time.sleep(0.002)
        assert bytes(got) == data
    assert resident(copy_path(cache, info), 0, SIZE - 2 * LET_GO_LAG - LET_GO_STEP) < 0.25
