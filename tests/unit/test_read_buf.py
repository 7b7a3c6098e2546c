"""Reads answered in memory libfuse owns (octuefs.fuse.bufreads, FileSystem.read_into): the same
bytes as a plain read, from the bucket, from the cache and from a file being written, with the
same requests; and the vector libfuse is handed is one it can send and free."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import tracemalloc

import pytest

from octuefs.fuse.bufreads import FuseBufvec, answer_read

from . import corekit
from .corekit import MiB, close_write

bucket, fs = corekit.bucket, corekit.fs  # fixtures: a FileSystem on a fake bucket

_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]


def _read_into(fs, fh: int, offset: int, size: int) -> bytes:
    buf = bytearray(size)
    n = fs.read_into(fh, offset, memoryview(buf))
    return bytes(buf[:n])


def test_read_into_gives_the_bytes_a_read_gives_from_the_bucket_and_the_cache(fs, bucket):
    data = random.Random(1).randbytes(5 * MiB + 123)  # blocks of 1 MiB, the last one short
    bucket.upload_bytes("d/big.bin", data)
    fh = fs.open("/d/big.bin", os.O_RDONLY)
    try:
        bucket.reset_calls()
        got = b"".join(_read_into(fs, fh, off, MiB) for off in range(0, len(data), MiB))
        assert got == data
        cold = bucket.calls["read"]
        assert 1 <= cold <= 5  # each block fetched once at most (with read-ahead, fewer GETs)
        # From the cache now: the same bytes again, unaligned and across blocks, no request.
        for off, size in ((0, 1), (MiB - 7, 4096), (3 * MiB + 5, 2 * MiB), (len(data) - 10, 4096)):
            assert _read_into(fs, fh, off, size) == data[off:off + size]
            assert _read_into(fs, fh, off, size) == fs.read(fh, size, off)
        assert _read_into(fs, fh, len(data), 4096) == b""  # at and past the end: nothing
        assert _read_into(fs, fh, len(data) + MiB, 4096) == b""
        assert bucket.calls["read"] == cold
    finally:
        fs.release(fh)


def test_read_into_of_a_file_being_written_gives_its_new_bytes_not_the_buckets(fs, bucket):
    bucket.upload_bytes("w.bin", b"o" * 10000)
    fh = fs.open("/w.bin", os.O_RDWR)
    try:
        assert _read_into(fs, fh, 0, 100) == b"o" * 100
        fs.write(fh, b"NEW", 50)
        want = b"o" * 50 + b"NEW" + b"o" * 9947
        assert _read_into(fs, fh, 0, 20000) == want == fs.read(fh, 20000, 0)
        assert _read_into(fs, fh, 49, 5) == b"oNEWo"
    finally:
        fs.flush(fh)
        fs.release(fh)
    close_write(fs, "/w.bin", b"short")
    fh = fs.open("/w.bin", os.O_RDONLY)
    try:
        assert _read_into(fs, fh, 0, 4096) == b"short"
    finally:
        fs.release(fh)


def _vector_at(bufpp) -> FuseBufvec:
    return FuseBufvec.from_address(bufpp.value)


def _free_vector(bufpp) -> None:
    """What libfuse's fuse_free_buf does with the vector once it has sent it."""
    vec = _vector_at(bufpp)
    for i in range(vec.count):
        if not vec.buf[i].flags & 2:  # FUSE_BUF_IS_FD
            _libc.free(vec.buf[i].mem)
    _libc.free(bufpp.value)


def test_answer_read_hands_libfuse_one_memory_buffer_holding_what_was_read():
    bufpp = ctypes.c_void_p()
    seen = []

    def fill(buf: memoryview) -> int:
        seen.append(len(buf))
        buf[:5] = b"hello"
        return 5

    assert answer_read(ctypes.pointer(bufpp), 4096, fill) == 0
    vec = _vector_at(bufpp)
    try:
        assert seen == [4096]
        assert (vec.count, vec.idx, vec.off) == (1, 0, 0)
        assert vec.buf[0].flags == 0 and vec.buf[0].size == 5
        assert ctypes.string_at(vec.buf[0].mem, 5) == b"hello"
    finally:
        _free_vector(bufpp)


def test_answer_read_leaves_libfuse_a_vector_it_can_free_when_the_read_fails():
    bufpp = ctypes.c_void_p()

    def fail(buf: memoryview) -> int:
        raise OSError(errno.EIO, "bucket said no")

    with pytest.raises(OSError):
        answer_read(ctypes.pointer(bufpp), MiB, fail)
    vec = _vector_at(bufpp)  # set before the read, so libfuse frees it with its memory
    assert vec.count == 1 and vec.buf[0].size == 0
    _free_vector(bufpp)
    empty = ctypes.c_void_p()
    assert answer_read(ctypes.pointer(empty), 0, fail) == 0  # nothing asked: nothing read
    assert _vector_at(empty).buf[0].size == 0
    _free_vector(empty)


def test_the_vector_has_libfuse_3s_layout():
    # include/fuse_common.h (libfuse 3): the buffers are an array inside the vector, after
    # three size_t; struct fuse_buf is size, flags, mem, fd, pos.
    assert FuseBufvec.buf.offset == 3 * ctypes.sizeof(ctypes.c_size_t)
    assert ctypes.sizeof(FuseBufvec) == 3 * 8 + 40


def test_read_buf_is_used_only_on_a_libfuse_whose_layout_was_checked():
    # A libfuse whose struct fuse_buf differs (or one not checked) gets plain read: a wrong-sized
    # vector could corrupt the daemon's memory, a plain read costs one copy more.
    import mfusepy

    from octuefs.fuse.bufreads import layout_known
    from octuefs.fuse.ops import OctueOperations

    assert layout_known(3, 14) and layout_known(3, 16)
    assert not layout_known(3, 17) and not layout_known(2, 9) and not layout_known(4, 0)
    here = layout_known(mfusepy.fuse_version_major, mfusepy.fuse_version_minor)
    assert OctueOperations.read_buf.libfuse_ignore is (not here)


def test_a_read_asking_for_far_more_than_there_is_allocates_only_what_there_is(fs, bucket):
    # read() is read_into() a buffer of its own (one path, so the two cannot drift); that buffer
    # is as long as the bytes there are, not as the size asked (the folder metadata asks 1 GiB).
    bucket.upload_bytes("c.bin", b"c" * 3000)
    fh = fs.open("/c.bin", os.O_RDWR)
    try:
        tracemalloc.start()
        try:
            assert fs.read(fh, 1 << 30, 0) == b"c" * 3000  # from the cache
            assert fs.read(fh, 1 << 30, 2990) == b"c" * 10
            assert fs.read(fh, 1 << 30, 5000) == b""
            fs.write(fh, b"NEW", 2999)
            assert fs.read(fh, 1 << 30, 2998) == b"cNEW"  # from the staging copy
            assert fs.read(fh, 1 << 30, 9000) == b""
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * MiB
    finally:
        fs.flush(fh)
        fs.release(fh)
