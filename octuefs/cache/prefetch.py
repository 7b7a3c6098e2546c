"""Reading ahead across files: the next small files of a directory read in name order.

``cat *``, ``cp -r``, ``tar c``, ``rsync`` and a data loader walking a sorted list open a
directory's files one after another in name order, and each read of a small file is a round
trip. The mount knows the directory's listing (:meth:`MetadataCache.listing`), so once the
last :attr:`Prefetcher.min_run` opens in a directory were consecutive files of its sorted
listing, it fetches the next files' whole content into the block cache before they are
opened, several at once (:meth:`ContentCache.prefetch`), on a pool of its own: at most
``requests`` GETs in flight (``far_requests`` while the bucket is far away, see
:func:`octuefs.storage.base.far_away`), so the cache's own workers stay free for reads someone
waits for. The window starts at ``initial`` files and doubles with each open that keeps the
order, up to ``files``; it holds at most ``max_bytes`` not yet opened (across all
directories), and only files of at most ``file_size`` bytes. An open elsewhere in the
directory breaks the pattern: the queued prefetches are cancelled and the window starts again.
A few steps back (parallel readers of one list finish out of order) or a few forward (files
skipped) do not.

A directory read whole in an order nobody can predict (a data loader with ``shuffle=True``, a
``grep -r``): once :attr:`Prefetcher.wholesale_after` distinct small files of the directory
were each read whole from offset 0, none of them opened again and none closed half read (told
at each reader's close, :meth:`Prefetcher.released`, which the kernel sends after the close
returned: nothing of this is on a reader's path), the directory's other small files are fetched
too, in listing order, those of the kinds (name suffixes) the reader read. Bounded: at most
``lead`` files fetched and not yet opened for each file the reader read whole (a program that
stops after N files cost at most ``lead * N`` fetched for nothing), at most as many started and
not finished as the pool runs at once (nothing waits in its queue, so nothing delays a reader
that takes one over), within the same byte budget as the reading in order. A run stops when the
reader breaks the pattern (opens again a file it read, other than the last few; closes a small
file it did not read whole), and gives up for as long as the directory is followed when the
files it fetched are opened far less often than they would be by a reader of the whole
directory (fewer than ``MIN_HIT_SHARE`` of the hits expected, once ``HITS_TO_JUDGE`` were
expected: a reader of some of the files only). A directory is followed while it is among the
``MAX_DIRS`` last opened in and an open comes every ``IDLE`` seconds.

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
from octuefs.storage.base import ObjectInfo, far_away

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_DIRS = 16  # directories followed at once (the least recently opened in goes first)
IDLE = 10.0  # seconds: a directory with no open for this long is dropped (its budget freed)
REFRESH = 1.0  # seconds a copy of a listing is used before it is taken again
SKIP = 2  # an open this many files further on keeps the order (a file skipped)
BACK = 4  # ... and one this many back is ignored (parallel readers, reopens)
# A directory read whole in no order (see the module docstring):
FAR_RECHECK = 0.5  # seconds between looks at how far the bucket is (the pool's size follows)
HITS_TO_JUDGE = 8.0  # hits a reader of the whole directory would have had, before judging
MIN_HIT_SHARE = 0.25  # fewer hits than this share of those: the reader reads some files only


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
    small: int = 0  # small files in the listing copy
    # Read whole in no order (wholesale): what the reader did, and the fetches it earned.
    read: set[str] = dataclasses.field(default_factory=set)  # small entries read whole from 0
    recent: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=BACK))
    opening: set[str] = dataclasses.field(default_factory=set)  # opened for the first time, not yet read whole
    kinds: set[str] = dataclasses.field(default_factory=set)  # name suffixes of the entries read
    streak: int = 0  # entries read whole since the pattern last broke
    bulk: dict[str, tuple[int, Callable[[], bool]]] = dataclasses.field(default_factory=dict)  # fetched, not opened
    bulk_on: bool = False
    bulk_off: bool = False  # given up for this directory (hit rate) while it is followed
    bulk_cursor: str | None = None  # every entry up to this one (included) was considered
    flying: int = 0  # wholesale fetches started and not finished
    hits: int = 0  # opens of files fetched wholesale, this run
    expected: float = 0.0  # ... and how many a reader of the whole directory would have made


class Prefetcher:
    """Watches opens for reading and fetches the next files of a directory read in order.

    ``is_live(name)``: the mount has ``name`` open or pending (never prefetched)."""

    def __init__(self, cache: ContentCache, metacache: MetadataCache, is_live: Callable[[str], bool], *,
                 files: int = 32, initial: int = 4, max_bytes: int = 16 * MiB, requests: int = 8,
                 file_size: int | None = None, min_run: int = 2, wholesale_after: int = 32, lead: int = 8,
                 far_requests: int = 16, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.metacache = metacache
        self.is_live = is_live
        self.files = max(1, files)
        self.initial = max(1, min(initial, self.files))
        limit = cache.space.limit
        self.max_bytes = max_bytes if limit is None else min(max_bytes, limit // 8)  # a fraction of the cache
        self.file_size = min(file_size or cache.block_size, self.max_bytes)
        self.min_run = max(2, min_run)
        self.wholesale_after = wholesale_after  # 0: never
        self.lead = max(1, lead)
        self.requests = max(1, requests)  # GETs in flight while the bucket is near ...
        self.far_requests = max(self.requests, far_requests)  # ... and far away (storage.base.far_away)
        self.clock = clock
        self.pool = FetchPool(requests, name="octuefs-prefetch", spare=0)  # readers use the cache's own pool
        self._far_checked = -FAR_RECHECK  # (clock) when the bucket's distance was last looked at; _lock
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
                    self._retire_locked(self._dirs.popitem(last=False)[1])
            self._dirs.move_to_end(prefix)
            d.used = now
            if now - self._far_checked >= FAR_RECHECK:
                self._far_checked = now
                self.pool.resize(self.far_requests if far_away(self.cache.bucket)[0] else self.requests)
            listed = self._take_listing_locked(d, now, entry, info)
            if self.wholesale_after:
                self._seen_open_locked(d, entry, info)
            if listed:
                self._step_locked(d, entry)
            else:
                d.run = d.run + 1 if d.pos is not None and entry > d.pos else 1
                d.pos = entry

    def released(self, name: str, info: ObjectInfo, whole: bool) -> None:
        """A handle opened for reading ``name`` (as ``info``) was closed (the kernel says so
        after the close returned: nothing here delays a reader), having read the file whole
        from offset 0 or not. Never raises."""
        if not self.wholesale_after or not self._small(info):
            return
        try:
            self._released(name, whole)
        except Exception:
            log.warning("prefetching after the close of %r failed; reads go on without it", name, exc_info=True)

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
            self._retire_locked(self._dirs.popitem(last=False)[1])

    def _retire_locked(self, d: _Dir) -> None:
        """A directory no longer followed: nothing more fetched for it, its budget given back."""
        self._drop_locked(d)
        self._stop_bulk_locked(d)

    # --- a directory read whole, in no order ----------------------------------------------

    def _small(self, info: ObjectInfo) -> bool:
        return 0 < info.size <= self.file_size

    def _seen_open_locked(self, d: _Dir, entry: str, info: ObjectInfo) -> None:
        """An open for reading of ``entry``: a first one, or one of a file read already."""
        if not self._small(info):
            return  # neither counts nor breaks the pattern
        if entry in d.read:
            if entry not in d.recent:  # (the last few: a program that opens each file twice)
                self._break_locked(d, f"{entry!r} was opened again")
            return
        if entry in d.opening:
            return  # a second handle on a file being read
        d.opening.add(entry)
        if d.bulk_on:
            unread = max(1, d.small - len(d.read))
            d.expected += len(d.bulk) / unread  # a reader of the whole directory's chance of a hit
            fetched = d.bulk.pop(entry, None)
            if fetched is not None:
                d.hits += 1
                self._bytes -= fetched[0]
                self.counts["bulk_opened"] += 1
            if d.expected >= HITS_TO_JUDGE and d.hits < d.expected * MIN_HIT_SHARE:
                log.debug("%r: %d of the files fetched ahead opened where %.1f were expected: no more "
                          "fetched while it is read", d.prefix, d.hits, d.expected)
                self._stop_bulk_locked(d)
                d.bulk_off = True
                self.counts["bulk_given_up"] += 1

    def _released(self, name: str, whole: bool) -> None:
        prefix = parent_prefix(name)
        entry = name[len(prefix):]
        with self._lock:
            d = self._dirs.get(prefix)
            if d is None or entry not in d.opening:
                return  # not a first open of it (or the directory is no longer followed)
            d.opening.discard(entry)
            if not whole:
                self._break_locked(d, f"{entry!r} was closed without being read whole")
                return
            d.read.add(entry)
            d.recent.append(entry)
            d.kinds.add(_kind(entry))
            d.streak += 1
            if d.streak >= self.wholesale_after and not d.bulk_on and not d.bulk_off:
                log.debug("%r: %d files read whole in no order: fetching the others ahead", d.prefix, d.streak)
                d.bulk_on, d.hits, d.expected, d.bulk_cursor = True, 0, 0.0, None
                self.counts["bulk_runs"] += 1
            if d.bulk_on:
                self._top_up_bulk_locked(d)  # (the reader earned ``lead`` more, and took one if a hit)

    def _break_locked(self, d: _Dir, why: str) -> None:
        d.streak = 0
        if d.bulk_on:
            log.debug("%r: reading the directory whole stopped (%s): no more fetched ahead", d.prefix, why)
            self._stop_bulk_locked(d)

    def _top_up_bulk_locked(self, d: _Dir) -> None:
        """Start fetches of the directory's next small files not read yet, of the kinds read,
        until ``lead`` per file read are fetched and not opened, as many are started and not
        finished as the pool runs at once, or the byte budget is full."""
        if d.names is None:
            return
        allowed = self.lead * len(d.read)
        start = bisect.bisect_right(d.names, d.bulk_cursor) if d.bulk_cursor is not None else 0
        j = start
        while j < len(d.names) and len(d.bulk) < allowed and d.flying < self.pool.workers:
            entry = d.names[j]
            info = d.infos[entry]
            if (self._small(info) and entry not in d.read and entry not in d.opening and entry not in d.bulk
                    and entry not in d.outstanding and _kind(entry) in d.kinds):
                if self._bytes + info.size > self.max_bytes:
                    break  # again once the reader has opened some of them
                if not self.is_live(info.name):
                    try:
                        cancel = self.cache.prefetch(info, self.pool, done=lambda d=d: self._bulk_done(d))
                    except OSError as exc:  # the cache disk is full, say: reads will say so
                        log.debug("no prefetch of %r: %s", info.name, exc)
                        break
                    if cancel is not None:
                        d.bulk[entry] = (info.size, cancel)
                        d.flying += 1
                        self._bytes += info.size
                        self.counts["bulk_started"] += 1
            j += 1
        if j > start:
            d.bulk_cursor = d.names[j - 1]

    def _bulk_done(self, d: _Dir) -> None:
        """A wholesale fetch of ``d`` ended (in a pool's thread): start the next."""
        try:
            with self._lock:
                d.flying -= 1
                if d.bulk_on and self._dirs.get(d.prefix) is d:
                    self._top_up_bulk_locked(d)
        except Exception:
            log.warning("prefetching in %r failed; reads go on without it", d.prefix, exc_info=True)

    def _stop_bulk_locked(self, d: _Dir) -> None:
        """Cancel a directory's queued wholesale fetches and give their budget back (those that
        landed stay in the cache: a reader may still open them)."""
        for size, cancel in d.bulk.values():
            if cancel():
                d.flying -= 1
                self.counts["cancelled"] += 1
            self._bytes -= size
        d.bulk.clear()
        d.bulk_on = False

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
        listing = self.metacache.listing(d.prefix, names_shown=True)  # (the order of the names it shows)
        if listing is None:
            if d.names is not None:
                self._drop_locked(d)
                d.names, d.infos = None, {}
            return False
        d.infos, d.names, d.taken, d.epoch = listing.files, sorted(listing.files), now, epoch
        d.small = sum(1 for info in d.infos.values() if self._small(info))
        return True

    def close(self) -> None:
        """Cancel every queued prefetch and forget every directory (at unmount)."""
        with self._lock:
            while self._dirs:
                self._retire_locked(self._dirs.popitem()[1])

    def stats(self) -> dict:
        with self._lock:
            return {**self.counts, "outstanding_bytes": self._bytes,
                    "outstanding_files": sum(len(d.outstanding) + len(d.bulk) for d in self._dirs.values()),
                    "bulk_in_flight": sum(d.flying for d in self._dirs.values())}


def _kind(entry: str) -> str:
    """A file's kind, as far as a name tells: its suffix (``.jpg``), or '' for none."""
    dot = entry.rfind(".")
    return entry[dot:] if dot > 0 else ""
