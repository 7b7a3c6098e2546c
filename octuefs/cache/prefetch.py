"""Reading ahead across files: the next small files of a directory read in name order.

``cat *``, ``cp -r``, ``tar c``, ``rsync`` and a data loader walking a sorted list open a
directory's files one after another in name order, and each read of a small file is a round
trip. The mount knows the directory's listing (:meth:`MetadataCache.listing`), so once the
last :attr:`Prefetcher.min_run` opens in a directory were consecutive files of its sorted
listing, it fetches the next files' whole content into the block cache before they are
opened, several at once (:meth:`ContentCache.prefetch`), on a pool of its own: at most
``requests`` GETs in flight, so the cache's own workers stay free for reads someone waits
for. The window starts at ``initial`` files and doubles with each open that keeps the order,
up to ``files``; it holds at most ``max_bytes`` not yet opened (across all directories), and
only files of at most ``file_size`` bytes. An open elsewhere in the directory breaks the
pattern: the queued prefetches are cancelled and the window starts again. A few steps back
(parallel readers of one list finish out of order) or a few forward (files skipped) do not.

Never stale: each file is fetched as the generation the listing names, into the cache under
``(name, generation)``. An open reads the generation its own lookup gives: one that differs
(the file changed since) misses the prefetched copy. A file the mount has open or pending
upload is never prefetched (it reads the local version anyway). Prefetched bytes nobody has
opened yet are clean read-ahead in the cache: counted, and evictable (see
:mod:`octuefs.cache.space`).

Without a cached listing there is nothing to go by. A lookup that misses lists its directory
(:mod:`octuefs.cache.listings`, up to a bound), so a directory read by name has one after its first
open; a directory too large for that is not prefetched.

Locks: ``Prefetcher._lock`` guards the directories' state; it is taken before the cache's locks
(prefetches start and are cancelled while it is held) and the open-file table's (``is_live``).
No network call is made while it is held.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from octuefs.cache.content import ContentCache
from octuefs.cache.metacache import MetadataCache, parent_prefix
from octuefs.cache.readahead import FetchPool
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_DIRS = 16  # directories followed at once (the least recently opened in goes first)
IDLE = 10.0  # seconds: a directory with no open for this long is dropped (its budget freed)
REFRESH = 1.0  # seconds a copy of a listing is used before it is taken again
SKIP = 2  # an open this many files further on keeps the order (a file skipped)
BACK = 4  # ... and one this many back is ignored (parallel readers, reopens)


@dataclasses.dataclass
class _Dir:
    """One directory being read: a copy of its listing and where the reader is in it."""

    prefix: str
    used: float
    names: list[str] | None = None  # the listing's file entries, sorted; None: no listing
    infos: dict[str, ObjectInfo] = dataclasses.field(default_factory=dict)
    taken: float = 0.0  # when the copy was taken
    epoch: tuple[int, int] | None = None  # the metadata cache's epoch of the directory then
    pos: str | None = None  # the furthest entry opened in order
    run: int = 0  # opens in order so far, this one included
    window: int = 0  # files to keep fetched ahead of pos
    ahead: str | None = None  # every entry up to this one (included) was considered
    outstanding: dict[str, tuple[int, Callable[[], bool]]] = dataclasses.field(default_factory=dict)


class Prefetcher:
    """Watches opens for reading and fetches the next files of a directory read in order.

    ``is_live(name)``: the mount has ``name`` open or pending (never prefetched)."""

    def __init__(self, cache: ContentCache, metacache: MetadataCache, is_live: Callable[[str], bool], *,
                 files: int = 32, initial: int = 4, max_bytes: int = 16 * MiB, requests: int = 8,
                 file_size: int | None = None, min_run: int = 2, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.metacache = metacache
        self.is_live = is_live
        self.files = max(1, files)
        self.initial = max(1, min(initial, self.files))
        limit = cache.space.limit
        self.max_bytes = max_bytes if limit is None else min(max_bytes, limit // 8)  # a fraction of the cache
        self.file_size = min(file_size or cache.block_size, self.max_bytes)
        self.min_run = max(2, min_run)
        self.clock = clock
        self.pool = FetchPool(requests, name="octuefs-prefetch", spare=0)  # readers use the cache's own pool
        self._lock = threading.Lock()
        self._dirs: collections.OrderedDict[str, _Dir] = collections.OrderedDict()  # guarded by _lock
        self._bytes = 0  # of every directory's outstanding prefetches; guarded by _lock
        self.counts = collections.Counter()  # started, cancelled, opened (hits); guarded by _lock

    # --- the hook -----------------------------------------------------------------------

    def opened(self, name: str, info: ObjectInfo) -> None:
        """``name`` (as ``info``) was just opened for reading. Never raises: a prefetch that
        cannot be made is only a read that will not be faster."""
        try:
            self._opened(name, info)
        except Exception:
            log.warning("prefetching after the open of %r failed; reads go on without it", name, exc_info=True)

    def _opened(self, name: str, info: ObjectInfo) -> None:
        prefix = parent_prefix(name)
        entry = name[len(prefix) :]
        now = self.clock()
        with self._lock:
            self._expire_locked(now)
            d = self._dirs.get(prefix)
            if d is None:
                d = self._dirs[prefix] = _Dir(prefix, now, window=self.initial)
                if len(self._dirs) > MAX_DIRS:
                    self._drop_locked(self._dirs.popitem(last=False)[1])
            self._dirs.move_to_end(prefix)
            d.used = now
            if self._take_listing_locked(d, now, entry, info):
                self._step_locked(d, entry)
            else:
                d.run = d.run + 1 if d.pos is not None and entry > d.pos else 1
                d.pos = entry

    # --- the pattern --------------------------------------------------------------------

    def _step_locked(self, d: _Dir, entry: str) -> None:
        """Follow one open of ``entry`` in a directory with a listing."""
        opened = d.outstanding.pop(entry, None)
        if opened is not None:
            self.counts["opened"] += 1
            self._bytes -= opened[0]
        if entry not in d.infos:
            return  # not in the listing (made through the mount since, say): no place in the order
        i = bisect.bisect_left(d.names, entry)
        if d.pos is None:
            d.pos, d.run, d.window, d.ahead = entry, 1, self.initial, entry
            return
        p = bisect.bisect_left(d.names, d.pos)
        within = d.run >= self.min_run and d.ahead is not None and entry <= d.ahead
        if p < i <= p + SKIP or (i > p and within):
            d.run += 1
            d.pos = entry
            self._passed_locked(d, entry)
            if d.run >= self.min_run:
                if d.run > self.min_run:
                    d.window = min(self.files, d.window * 2)
                self._top_up_locked(d, i)
        elif p - BACK <= i <= p:
            return  # a step back (out of order among parallel readers) or a reopen
        else:
            log.debug("reading %r in order stopped at %r: dropping what was queued ahead", d.prefix, entry)
            self._drop_locked(d)
            d.pos, d.run, d.window, d.ahead = entry, 1, self.initial, entry

    def _top_up_locked(self, d: _Dir, i: int) -> None:
        """Fetch files ahead of entry ``i`` until the window or the byte budget is full."""
        start = max(i + 1, bisect.bisect_right(d.names, d.ahead) if d.ahead is not None else 0)
        end = min(len(d.names), i + 1 + d.window)
        j = start
        while j < end:
            info = d.infos[d.names[j]]
            if 0 < info.size <= self.file_size:
                if self._bytes + info.size > self.max_bytes:
                    break  # again once the reader has opened some of them
                if not self.is_live(info.name):
                    try:
                        cancel = self.cache.prefetch(info, self.pool)
                    except OSError as exc:  # the cache disk is full, say: reads will say so
                        log.debug("no prefetch of %r: %s", info.name, exc)
                        break
                    if cancel is not None:
                        d.outstanding[d.names[j]] = (info.size, cancel)
                        self._bytes += info.size
                        self.counts["started"] += 1
            j += 1
        if j > start:
            d.ahead = d.names[j - 1]

    def _passed_locked(self, d: _Dir, entry: str) -> None:
        """Prefetches of entries before ``entry`` the reader went past: out of the budget (a
        parallel reader may still open them; the cache keeps what landed)."""
        for passed in [e for e in d.outstanding if e < entry]:
            size, _cancel = d.outstanding.pop(passed)
            self._bytes -= size

    def _drop_locked(self, d: _Dir) -> None:
        """Cancel a directory's queued prefetches and give its budget back."""
        for size, cancel in d.outstanding.values():
            if cancel():
                self.counts["cancelled"] += 1
            self._bytes -= size
        d.outstanding.clear()

    def _expire_locked(self, now: float) -> None:
        while self._dirs:
            d = next(iter(self._dirs.values()))
            if now - d.used <= IDLE:
                return
            self._drop_locked(self._dirs.popitem(last=False)[1])

    # --- the listing --------------------------------------------------------------------

    def _take_listing_locked(self, d: _Dir, now: float, entry: str | None = None, info: ObjectInfo | None = None) -> bool:
        """Make sure ``d`` has a recent copy of its listing; False if none is cached. The copy is
        taken again once it is REFRESH old, and sooner (but at most every REFRESH / 4: a copy
        costs a sort of the directory) when the mount changed the directory or the copy does not
        know the opened file ``entry`` as ``info``; without ``info``, at once. An old copy costs
        at most a wasted prefetch, never a stale byte (the cache is by generation)."""
        epoch = self.metacache.epoch(d.prefix)
        if d.names is not None and info is not None:
            age = now - d.taken
            known = d.infos.get(entry)
            current = d.epoch == epoch and known is not None and known.generation == info.generation
            if age < REFRESH / 4 or (age < REFRESH and current):
                return True
        listing = self.metacache.listing(d.prefix)
        if listing is None:
            if d.names is not None:
                self._drop_locked(d)
                d.names, d.infos = None, {}
            return False
        d.infos, d.names, d.taken, d.epoch = listing.files, sorted(listing.files), now, epoch
        return True

    def close(self) -> None:
        """Cancel every queued prefetch and forget every directory (at unmount)."""
        with self._lock:
            while self._dirs:
                self._drop_locked(self._dirs.popitem()[1])

    def stats(self) -> dict:
        with self._lock:
            return {**self.counts, "outstanding_bytes": self._bytes,
                    "outstanding_files": sum(len(d.outstanding) for d in self._dirs.values())}
