"""How much clean data the content cache holds, and what gives way when it must shrink.

*Clean* data is content the bucket already has: the blocks of the sparse copies under
``blocks/``. Unsaved data (``staging/`` files being written, the write-back journal's
``pending/`` files) never passes through here, so it is never counted and never evicted.

:class:`Space` keeps ``held``, the bytes of every present block plus the bytes reserved by
fetches in flight, and an LRU of present blocks (least recently read or fetched first). A
fetch reserves its bytes before its GET: if that would pass ``limit``, the oldest blocks are
given back first, at block granularity, by punching a hole in the sparse file
(``fallocate(PUNCH_HOLE | KEEP_SIZE)``) and marking the block missing, so a later read fetches
it again. Where the filesystem cannot punch holes, whole copies nobody is using are deleted
instead. A copy whose blocks are all gone is deleted too.

A block is never given back while it is in flight or a reader holds it (between making sure
it is present and the ``pread`` that returns it). Read-ahead that has not been read yet
(*fresh* blocks) gives way only to reads that need the space, never to more read-ahead, so a
reader's read-ahead cannot evict the blocks that same reader is about to consume; and all
read-ahead together (in flight or fresh) takes at most half the limit, so reads that need room
find it among blocks already read instead of in someone's read-ahead. A read-ahead that finds
no room is dropped (its blocks are fetched when they are read); a fetch a reader waits for
always goes ahead, even if, for a moment, only blocks in use would be left to give back (the
overshoot is trimmed as soon as the readers let go).

Locks: every method here runs with the cache's table lock (``ContentCache._lock``) held, and
takes an :class:`Entry`'s lock inside it, one entry at a time: the cache's documented order.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

FRESH_SECONDS = 30.0  # read-ahead not read for this long is spared no more

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the disk space of ``[offset, offset + length)`` back; the file keeps its size and
    reads zeros there. OSError(EOPNOTSUPP) where the filesystem (or platform) cannot."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def bytes_in(directory: str) -> int:
    """Bytes of the files in ``directory``, a hard-linked file once (how much unsaved data)."""
    seen: set[int] = set()
    total = 0
    try:
        found = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for item in found:
        try:
            st = item.stat()
        except FileNotFoundError:
            continue
        if st.st_ino not in seen:
            seen.add(st.st_ino)
            total += st.st_size
    return total


class Entry:
    """Cached content of one object generation: a sparse file filled block by block.

    ``lock`` guards every attribute but ``path``, ``size``, ``block_size`` and ``streams``'
    settings; ``key`` is guarded by the cache's table lock.
    """

    def __init__(self, key: tuple[str, int], path: str, size: int, block_size: int, streams, complete: bool = False):
        self.key = key  # (name, generation) it is filed under in the cache's table
        self.path = path
        self.size = size
        self.block_size = block_size
        nblocks = (size + block_size - 1) // block_size
        self.present = bytearray(b"\x01" * nblocks if complete else nblocks)
        self.missing = 0 if complete else nblocks
        self.inflight: dict = {}  # block -> the fetch bringing it
        self.reading: dict[int, int] = {}  # block -> readers about to pread it (no zero counts)
        self.failed: dict = {}  # block -> (when, the fetch that found the bucket unreachable)
        self.streams = streams
        self.fd: int | None = None
        self.pins = 0  # reads and fetches using fd right now
        self.dropped = False  # no longer in the table: close fd once unpinned
        self.lock = threading.Lock()

    def block_bytes(self, block: int) -> int:
        return min(self.block_size, self.size - block * self.block_size)


class Space:
    """Clean bytes held, their LRU, read-ahead not read yet, and eviction (see the module
    docstring). Every method is called with the cache's table lock held; ``forget`` is the
    cache's own (same lock) way of taking an entry out of its table and deleting its file."""

    def __init__(self, limit: int | None, forget: Callable[[Entry], None], clock: Callable[[], float] = time.monotonic):
        self.limit = limit  # bytes, or None for no bound
        self.held = 0  # present blocks in the LRU + reservations of fetches in flight
        self.peak = 0  # the most ``held`` has been
        self.evicted = 0  # bytes given back so far
        self.can_punch = True
        self._forget = forget
        self._clock = clock
        self._lru: collections.OrderedDict[tuple[Entry, int], int] = collections.OrderedDict()  # -> bytes
        self._fresh: collections.OrderedDict[tuple[Entry, int], tuple[int, float]] = collections.OrderedDict()
        self._fresh_bytes = 0  # of _fresh (landed when, oldest first)
        self._ahead_reserved = 0  # reservations of read-ahead in flight

    # --- accounting ---------------------------------------------------------------------------

    def reserve(self, nbytes: int, ahead: bool) -> bool:
        """Count ``nbytes`` a fetch is about to write, making room first. A read-ahead (``ahead``)
        spares fresh blocks, stays within the read-ahead budget (half the limit) and gets False
        when there is no room; any other fetch goes ahead even if only blocks in use are left."""
        if self.limit is not None:
            if ahead and self._ahead_bytes() + nbytes > self.limit // 2:
                return False
            if self.held + nbytes > self.limit:
                self._evict(self.held + nbytes - self.limit, spare_fresh=True)
            if self.held + nbytes > self.limit:
                if ahead:
                    return False
                self._evict(self.held + nbytes - self.limit, spare_fresh=False)
        self.held += nbytes
        self.peak = max(self.peak, self.held)
        if ahead:
            self._ahead_reserved += nbytes
        return True

    def settle(self, entry: Entry, reserved: int, ahead: bool, landed: list[int], fresh: bool) -> None:
        """A fetch that reserved ``reserved`` bytes is over: ``landed`` blocks are present (the
        newest in the LRU; ``fresh`` if read ahead for nobody yet), the rest is given back."""
        self.held -= reserved - sum(entry.block_bytes(b) for b in landed)
        if ahead:
            self._ahead_reserved -= reserved
        now = self._clock()
        for block in landed:
            size = self._lru[(entry, block)] = entry.block_bytes(block)
            if fresh:
                self._fresh[(entry, block)] = (size, now)
                self._fresh_bytes += size

    def add_complete(self, entry: Entry) -> None:
        """A whole copy (content adopted after an upload): count every block, then trim."""
        for block in range(len(entry.present)):
            size = entry.block_bytes(block)
            self._lru[(entry, block)] = size
            self.held += size
        self.peak = max(self.peak, self.held)
        self.trim()

    def used(self, entry: Entry, blocks: Iterable[int]) -> None:
        """A reader used these blocks: the most recently used now, and no longer fresh."""
        for block in blocks:
            key = (entry, block)
            if key in self._lru:
                self._lru.move_to_end(key)
            self._unfresh(key)

    def forget(self, entry: Entry) -> None:
        """The entry left the table: its blocks no longer count."""
        for block in range(len(entry.present)):
            key = (entry, block)
            size = self._lru.pop(key, None)
            if size is not None:
                self.held -= size
            self._unfresh(key)

    def trim(self) -> None:
        """Back under the limit, if a fetch a reader needed went past it."""
        if self.limit is not None and self.held > self.limit:
            self._evict(self.held - self.limit, spare_fresh=False)

    def _unfresh(self, key: tuple[Entry, int]) -> None:
        found = self._fresh.pop(key, None)
        if found is not None:
            self._fresh_bytes -= found[0]

    def _ahead_bytes(self) -> int:
        """Read-ahead in flight or not read yet. Blocks read ahead FRESH_SECONDS ago and still
        not read (a reader that stopped) no longer count, and no longer are spared."""
        stale = self._clock() - FRESH_SECONDS
        while self._fresh:
            key, (_, landed) = next(iter(self._fresh.items()))
            if landed > stale:
                break
            self._unfresh(key)
        return self._ahead_reserved + self._fresh_bytes

    # --- eviction -------------------------------------------------------------------------------

    def _evict(self, want: int, spare_fresh: bool) -> int:
        """Give back at least ``want`` bytes, oldest first, skipping blocks in use."""
        freed = skipped = 0
        while freed < want:
            batch = list(itertools.islice(self._lru, skipped, skipped + 64))
            if not batch:
                break
            for key in batch:
                if freed >= want:
                    break
                n = 0
                if key in self._lru and not (spare_fresh and key in self._fresh):
                    n = self._evict_one(key)
                if n:
                    freed += n
                elif key in self._lru:
                    skipped += 1
        self.evicted += freed
        return freed

    def _evict_one(self, key: tuple[Entry, int]) -> int:
        entry, block = key
        with entry.lock:
            if block in entry.inflight or block in entry.reading:
                return 0
            if not (self.can_punch and self._punch_locked(entry, block)):
                # Only whole copies can go: one nobody is using.
                if entry.pins or entry.inflight or entry.reading:
                    return 0
                whole, freed = True, 0
            else:
                entry.present[block] = 0
                entry.missing += 1
                freed = self._lru.pop(key)
                self.held -= freed
                whole = entry.missing == len(entry.present) and not entry.pins and not entry.inflight
        self._unfresh(key)
        if whole:  # nothing left worth a file (or no holes here): delete the copy
            before = self.held
            self._forget(entry)
            freed += before - self.held
        return freed

    def _punch_locked(self, entry: Entry, block: int) -> bool:
        """Punch the block's hole. Holds entry.lock (so no reader starts on it meanwhile)."""
        offset = block * entry.block_size
        fd, own = entry.fd, None
        try:
            if fd is None:
                fd = own = os.open(entry.path, os.O_RDWR)
            punch_hole(fd, offset, entry.block_bytes(block))
            return True
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                self.can_punch = False
                log.info("the cache filesystem cannot punch holes (%s): evicting whole cached files instead", exc)
            else:
                log.warning("could not free block %d of cached copy %s: %s", block, entry.path, exc)
            return False
        finally:
            if own is not None:
                os.close(own)
