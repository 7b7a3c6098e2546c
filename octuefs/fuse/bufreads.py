"""Answering FUSE reads in memory libfuse owns: its ``read_buf`` callback.

With a plain ``read``, mfusepy hands libfuse's buffer to Python code that returns a bytes
object, and copies that into the buffer (``ctypes.memmove``): per 1 MiB read a new bytes object
and one more copy of every byte, on the path of a streaming reader. libfuse 3's high-level API
asks ``read_buf`` instead for a ``struct fuse_bufvec`` of its own, which it sends to the kernel
and then frees with ``free()``: the vector, and each buffer's memory unless the buffer is a file
descriptor (``fuse_free_buf`` in lib/fuse.c, after ``fuse_reply_data``). So the vector and
its memory come from the C library's ``malloc`` here, and the filesystem reads straight into
that memory (``os.preadv``, which lets go of the GIL); libfuse writes it to the kernel as it
is, with no copy of its own.

mfusepy's ``fuse_bufvec`` declares ``buf`` as a pointer; in libfuse 3 it is an array of one
``struct fuse_buf`` inside the vector (include/fuse_common.h), as declared here. That layout was
checked against libfuse 3.0 to 3.16 (:func:`layout_known`); on any other libfuse the adapter
leaves ``read_buf`` out and libfuse asks plain ``read``: a vector of the wrong size handed to
libfuse could corrupt the daemon's memory, a plain read only costs one more copy.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable


class FuseBuf(ctypes.Structure):
    """struct fuse_buf (libfuse 3)."""

    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),  # enum fuse_buf_flags; 0: memory
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),  # off_t: libfuse 3 is built with 64-bit offsets
    ]


class FuseBufvec(ctypes.Structure):
    """struct fuse_bufvec (libfuse 3) with its one buffer."""

    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", FuseBuf * 1),
    ]


def layout_known(major: int, minor: int) -> bool:
    """Whether libfuse ``major.minor`` has the ``struct fuse_buf`` declared here."""
    return major == 3 and minor <= 16


_libc = ctypes.CDLL(None)
_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]


def answer_read(bufpp, size: int, read_into: Callable[[memoryview], int]) -> int:
    """Fill ``*bufpp`` with a new vector of one memory buffer of up to ``size`` bytes, which
    ``read_into(buffer)`` fills (returning how many bytes it put there); 0, or ``-ENOMEM``.

    The vector is libfuse's from the moment ``*bufpp`` points at it: it is freed (memory too)
    whether the read succeeds, fails here, or ``read_into`` raises."""
    vec = _malloc(ctypes.sizeof(FuseBufvec))
    if not vec:
        return -errno.ENOMEM
    ctypes.memset(vec, 0, ctypes.sizeof(FuseBufvec))  # size 0, flags 0, mem NULL: free(NULL) is nothing
    ctypes.cast(bufpp, ctypes.POINTER(ctypes.c_void_p))[0] = vec
    one = FuseBufvec.from_address(vec)
    one.count = 1
    buf = one.buf[0]
    buf.fd = -1
    if size == 0:
        return 0
    mem = _malloc(size)
    if not mem:
        return -errno.ENOMEM
    buf.mem = mem
    buf.size = read_into(memoryview((ctypes.c_char * size).from_address(mem)).cast("B"))
    return 0
