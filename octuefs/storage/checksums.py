"""CRC32C (Castagnoli) and MD5 as GCS reports them, and CRC32C of a concatenation.

Pure Python, so the storage package loads without ``google_crc32c``; where that is installed
(it comes with google-cloud-storage), :func:`crc32c` uses its C code, else a table (slow on
large data: the fake bucket computes it lazily). :func:`crc32c_combine`
gives the CRC32C of ``a + b`` from those of ``a`` and ``b`` and ``len(b)`` alone (zlib's
``crc32_combine``, in GF(2), for this polynomial), which is what a composed object's CRC32C is
made of: octuefs checks a compose against the file it came from with it.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable

_POLY = 0x82F63B78  # Castagnoli, reflected


def _table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


_fast = None  # google_crc32c, once a CRC32C is first asked for (the package loads without Google's code)


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC32C of ``data`` (continuing from ``crc``, the CRC32C of what came before)."""
    global _fast
    if _fast is None:
        try:
            import google_crc32c as fast
        except ImportError:  # pragma: no cover - it comes with google-cloud-storage
            fast = False
        _fast = fast
    if _fast:
        return _fast.extend(crc, bytes(data))
    return _crc32c_table(data, crc)


def _crc32c_table(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def to_b64(crc: int) -> str:
    """A CRC32C as GCS reports it: base64 of the big-endian 4 bytes."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def from_b64(text: str) -> int:
    raw = base64.b64decode(text)
    if len(raw) != 4:
        raise ValueError(f"{text!r} is no CRC32C")
    return int.from_bytes(raw, "big")


def crc32c_b64(data: bytes) -> str:
    return to_b64(crc32c(data))


def file_crc32c_b64(path: str) -> str:
    """The CRC32C of a local file's content, as GCS reports it (read 1 MiB at a time)."""
    crc = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = crc32c(chunk, crc)
    return to_b64(crc)


def range_crc32c_b64(path: str, start: int, length: int) -> str:
    """The CRC32C of bytes [start, start + length) of a local file, as GCS reports it (read 1 MiB
    at a time); ``OSError`` if the file ends first."""
    crc = 0
    with open(path, "rb") as f:
        at, end = start, start + length
        while at < end:
            chunk = os.pread(f.fileno(), min(1 << 20, end - at), at)
            if not chunk:
                raise OSError(f"{path} ended {end - at} bytes early while being uploaded")
            crc = crc32c(chunk, crc)
            at += len(chunk)
    return to_b64(crc)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, row) for row in matrix]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32C of ``a + b``, given ``crc32c(a)``, ``crc32c(b)`` and ``len(b)``."""
    if len2 <= 0:
        return crc1
    odd = [_POLY] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _square(odd)  # two zero bits
    odd = _square(even)  # four
    while True:  # apply len2 zero bytes to crc1, squaring the operator as len2 halves
        even = _square(odd)
        if len2 & 1:
            crc1 = _times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _square(even)
        if len2 & 1:
            crc1 = _times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def combine_b64(pieces: Iterable[tuple[str, int]]) -> str:
    """The base64 CRC32C of a concatenation, from its pieces' ``(base64 CRC32C, size)``."""
    crc = 0
    for text, size in pieces:
        crc = crc32c_combine(crc, from_b64(text), size)
    return to_b64(crc)
