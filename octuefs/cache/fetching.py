"""Fetching blocks into the content cache: ranged GETs pinned to a generation, and read-ahead.

:class:`Fetching` is the part of :class:`~octuefs.cache.content.ContentCache` that brings
missing blocks: a read schedules fetches of the blocks it needs (runs of at most
``blocks_per_request``) and of the read-ahead window its stream earned (longer runs), joins
fetches already in flight, and waits only for its own blocks. Each fetch runs on the cache's
:class:`~octuefs.cache.readahead.FetchPool`, reserves room first (a read-ahead with no room is
dropped), streams into the cached copy, and lands its blocks one by one as their last bytes are
written. :meth:`Fetching.prefetch` fetches whole small objects before anyone reads them.

A fetch that found the bucket unreachable is remembered per block for ``RECENT_FAILURE``
seconds: the readers coming meanwhile get its error at once instead of waiting as long again.

Locks: as in :mod:`octuefs.cache.content` (``ContentCache._lock`` before an ``Entry.lock``);
neither is held across a network request.
"""

from __future__ import annotations

import copy
import errno
import logging
import threading
import time
from collections.abc import Callable

from octuefs.cache.readahead import AHEAD, DEMAND, FetchPool, Task
from octuefs.cache.space import Entry
from octuefs.errors import BucketUnreachable, NoSpace, NotFound, StorageError
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)

# A block whose fetch found the bucket unreachable this recently is not asked for again: its
# readers get the same error at once. The kernel retries a failed page read straight away (and a
# read that joined a failed read-ahead tries again): against an unreachable bucket each retry
# would wait --op-timeout more.
RECENT_FAILURE = 2.0  # seconds

class _Fetch:
    """One ranged GET of blocks ``first..last`` of an entry. Its blocks land in order, each as
    soon as its last byte is written (``landed`` of them so far), so a reader of the first
    block of a long read-ahead does not wait for the whole range; a reader of the first bytes
    of a block need not wait for the whole block either (``upto``: bytes from the fetch's start
    up to there are in the copy). ``error`` is set before ``done``; ``landed``, ``upto`` and the
    end are announced under ``cond`` (see :meth:`wait_for`);
    ``wanted`` (a reader waits for it) is guarded by the entry's lock.

    A read's fetch may carry read-ahead after the blocks it needs: blocks ``split..last``.
    Those are read-ahead for the cache's room (reserved within the read-ahead budget, spared
    until read, left out of the GET when there is no room: ``last`` becomes ``split - 1``)
    unless a reader waits for one of them (``carried_wanted``, under the entry's lock);
    ``carried`` is how their room was reserved (as read-ahead or not)."""

    __slots__ = ("first", "last", "generation", "ahead", "wanted", "done", "error", "task", "landed", "cond",
                 "split", "carried_wanted", "carried", "upto")

    def __init__(self, first: int, last: int, generation: int, ahead: bool):
        self.first = first
        self.last = last
        self.generation = generation  # the generation it reads (carry_over may have moved on)
        self.ahead = ahead  # started as read-ahead (nobody was waiting for it)
        self.wanted = not ahead
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.task: Task | None = None
        self.landed = 0  # blocks first..first + landed - 1 are present (guarded by cond)
        self.upto = 0  # the bytes from the first block's start up to here are written (guarded by cond)
        self.cond = threading.Condition(threading.Lock())
        self.split = last + 1  # first block of the read-ahead a read's fetch carries
        self.carried_wanted = False
        self.carried = False

    def brought(self, block: int) -> bool:
        return block < self.first + self.landed

    def wait_for(self, block: int, upto: int) -> bool:
        """Wait until ``block`` has landed, or the bytes before ``upto`` (in that block) are
        written, or the fetch is over; whether the reader has its bytes."""
        with self.cond:
            self.cond.wait_for(lambda: self.brought(block) or self.upto >= upto or self.done.is_set())
            return self.brought(block) or self.upto >= upto

    def announce(self, landed: int | None = None, done: bool = False, upto: int | None = None) -> None:
        with self.cond:
            if upto is not None:
                self.upto = max(self.upto, upto)
            if landed is not None:
                self.landed = landed
            if done:
                self.done.set()
            self.cond.notify_all()


class _NoRoom(Exception):
    """A read-ahead dropped because the cache was full of blocks in use (no reader sees it)."""


def no_space(exc: OSError) -> OSError | NoSpace:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the cache disk is full: {exc}")
    return exc


def _reraise(error: BaseException) -> None:
    """Raise a fetch's error in a reader's thread (a copy: several readers may share it)."""
    try:
        fresh = copy.copy(error)
    except Exception:
        fresh = error
    raise fresh from error


def _recent_failure_locked(entry: Entry, block: int, generation: int, now: float) -> _Fetch | None:
    """The fetch of ``block`` that found the bucket unreachable less than RECENT_FAILURE seconds
    ago, if the block is still missing and not being fetched again. Holds entry.lock."""
    failed = entry.failed.get(block)
    if failed is None:
        return None
    when, fetch = failed
    if now - when >= RECENT_FAILURE or fetch.generation != generation:
        del entry.failed[block]
        return None
    if entry.present[block] or block in entry.inflight:
        return None
    return fetch


class Fetching:
    """Bringing missing blocks of cached copies (a mixin of :class:`~octuefs.cache.content.ContentCache`,
    whose table, pins, space and pool it uses)."""

    # Streams in a copy this large are followed to its end, also once it is complete (for
    # ContentCache._let_go); in a smaller one only while blocks are missing.
    follow_streams_from: int

    def _fill(self, info: ObjectInfo, entry: Entry, start: int, end: int, read_ahead: bool = False) -> None:
        """Make bytes ``[start, end)`` present, waiting for their fetches. Entry pinned, and
        those blocks held."""
        bs = self.block_size
        last = (end - 1) // bs
        for attempt in (1, 2):
            here: list[_Fetch] = []  # a fetch this thread runs itself (see _start_locked)
            with entry.lock:
                window = None  # the read-ahead this read earned, [lo, hi)
                if read_ahead and attempt == 1 and (entry.missing or entry.size >= self.follow_streams_from):
                    ahead = entry.streams.observe(start, end)
                    if ahead is not None and ahead[0] < entry.size:
                        # From the end of this read, not just the new part of the window:
                        # blocks of the window that were evicted or had no room are asked again.
                        window = min(ahead[0], end), min(ahead[1], entry.size)
                if entry.missing == 0:
                    waits = []
                else:
                    # A read that must fetch its own last block takes the read-ahead right
                    # after it into the same request (one round trip, one connection: the
                    # first read of a stream, where a second GET beside it would wait for a
                    # connection of its own as well).
                    merge = (window[1] - 1) // bs if window is not None else None
                    waits = self._schedule_locked(info, entry, start // bs, last, DEMAND, merge, here)
                if attempt == 1:
                    self._count_read(hit=not waits)
                if not waits and entry.missing == 0:
                    return
                if window is not None:
                    lo, hi = window
                    self._schedule_locked(info, entry, lo // bs, (hi - 1) // bs, AHEAD)
            for fetch in here:  # (after the read-ahead was queued: it goes on meanwhile)
                try:
                    self._run_fetch(info, entry, fetch, DEMAND)
                finally:
                    self._pool.unclaim()
            # Each fetch up to the last byte this read needs from it, not to its own end.
            failed = [f for f in waits if not f.wait_for(min(f.last, last), min(end, (min(f.last, last) + 1) * bs))]
            if not failed:
                return
            # A failed fetch this read merely joined (a read-ahead, the read-ahead a read's fetch
            # carries, or a read of the generation the content had before carry_over) is not
            # this read's failure: the blocks are missing again, so fetch them once more, for
            # this read.
            own = [f for f in failed if attempt == 2 or not (
                f.ahead or f.generation != info.generation or min(f.last, last) >= f.split)]
            if own:
                _reraise(own[0].error or StorageError(f"blocks of {info.name!r} were not fetched"))

    def _schedule_locked(self, info: ObjectInfo, entry: Entry, first: int, last: int, priority: int,
                         merge: int | None = None, here: list[_Fetch] | None = None) -> list[_Fetch]:
        """Fetches bringing blocks ``first..last``: new ones for blocks neither present nor in
        flight (runs of at most ``blocks_per_request``), and those already in flight. With
        ``merge``, a new fetch of block ``last`` goes on through the blocks after it up to
        ``merge`` (read-ahead) while they are missing and not in flight, up to
        ``ahead_blocks_per_request`` in all. With ``here``, the first new one may be left for
        the calling thread to run (see :meth:`_start_locked`). Holds entry.lock."""
        fetches: list[_Fetch] = []
        run: int | None = None  # first block of the run of blocks to fetch being gathered
        longest = self.blocks_per_request if priority == DEMAND else self.ahead_blocks_per_request
        now = time.monotonic()
        for block in range(first, last + 1):
            failed = _recent_failure_locked(entry, block, info.generation, now)
            if failed is not None:
                if run is not None:
                    fetches.append(self._start_locked(info, entry, run, block - 1, priority, here))
                    run = None
                if priority == DEMAND and failed not in fetches:
                    fetches.append(failed)  # done, with its error: no new request
                continue
            if entry.present[block] or block in entry.inflight:
                if run is not None:
                    fetches.append(self._start_locked(info, entry, run, block - 1, priority, here))
                    run = None
                fetch = entry.inflight.get(block)
                if fetch is not None and priority == DEMAND and block >= fetch.split:
                    fetch.carried_wanted = True  # its read-ahead part is a read's now: it stays
                if fetch is not None and (not fetches or fetches[-1] is not fetch):
                    fetches.append(fetch)
                    if priority == DEMAND:
                        fetch.wanted = True  # a reader waits: it must not be dropped for room
                        if fetch.task is not None:
                            self._pool.boost(fetch.task)
                continue
            if run is None:
                run = block
            if block - run + 1 == longest:
                fetches.append(self._start_locked(info, entry, run, block, priority, here))
                run = None
        if run is not None:
            end = last
            if merge is not None:
                limit = min(merge, len(entry.present) - 1, run + self.ahead_blocks_per_request - 1)
                while end < limit and not (entry.present[end + 1] or end + 1 in entry.inflight
                                           or end + 1 in entry.failed):
                    end += 1
                # The read-ahead part takes a read-ahead slot of the pool: a read's GET that goes
                # on arriving after its read returned must not take the worker kept for readers.
                if end > last and not self._pool.take_ahead(entry):
                    end = last
            fetches.append(self._start_locked(info, entry, run, end, priority, here, split=last + 1))
        return fetches

    def _start_locked(self, info: ObjectInfo, entry: Entry, first: int, last: int, priority: int,
                      here: list[_Fetch] | None = None, split: int | None = None) -> _Fetch:
        """A new fetch of blocks ``first..last`` (read-ahead from block ``split`` on), queued on
        the pool; or, given an empty ``here`` and a free place in the pool
        (:meth:`FetchPool.claim`), put in ``here`` for the reader's own thread to run: a small
        file's read then costs no hand-off to a worker and back. A fetch that carries read-ahead
        is always queued: the reader returns when its own blocks land, not when the GET ends.
        Holds entry.lock."""
        fetch = _Fetch(first, last, info.generation, ahead=priority == AHEAD)
        if split is not None and split <= last:
            fetch.split = split
        for block in range(first, last + 1):
            entry.inflight[block] = fetch
        entry.pins += 1  # the fetch writes through entry.fd; _run_fetch unpins
        if here is not None and not here and fetch.split > last and self._pool.claim():
            here.append(fetch)  # (fetch.task stays None: nothing to boost)
            return fetch
        fetch.task = self._pool.submit(lambda: self._run_fetch(info, entry, fetch, priority), priority, key=entry,
                                       counted=fetch.split <= last)
        return fetch

    def _reserve(self, entry: Entry, fetch: _Fetch, nbytes: int) -> bool | None:
        """Room for a fetch's bytes before its GET: True if reserved as read-ahead, False as a
        fetch a reader waits for, None if it was a read-ahead nobody waits for and there was no
        room (it is dropped, its blocks left missing)."""
        if fetch.split <= fetch.last:
            return self._reserve_carrying(entry, fetch, nbytes)
        with self._lock:
            with entry.lock:
                wanted = fetch.wanted
            if self.space.reserve(nbytes, ahead=not wanted):
                return not wanted
            with entry.lock:
                if fetch.wanted:  # a reader joined it meanwhile: it goes ahead
                    self.space.reserve(nbytes, ahead=False)
                    return False
                for block in range(fetch.first, fetch.last + 1):
                    if entry.inflight.get(block) is fetch:
                        del entry.inflight[block]
                fetch.error = _NoRoom()
        fetch.announce(done=True)
        self._unpin(entry)
        log.debug("read-ahead of blocks %d-%d of %s dropped: no room in the cache", fetch.first, fetch.last, entry.path)
        return None

    def _reserve_carrying(self, entry: Entry, fetch: _Fetch, nbytes: int) -> bool:
        """:meth:`_reserve` of a read's fetch carrying read-ahead: its own blocks as a fetch a
        reader waits for, the rest as read-ahead, or (no room) left out of the GET."""
        own = min(fetch.split * self.block_size, entry.size) - fetch.first * self.block_size
        with self._lock:
            self.space.reserve(own, ahead=False)
            with entry.lock:
                wanted = fetch.carried_wanted
            if not wanted and self.space.reserve(nbytes - own, ahead=True):
                fetch.carried = True
                return False
            with entry.lock:
                if fetch.carried_wanted:
                    self.space.reserve(nbytes - own, ahead=False)
                    return False
                for block in range(fetch.split, fetch.last + 1):
                    if entry.inflight.get(block) is fetch:
                        del entry.inflight[block]
                fetch.last = fetch.split - 1
        log.debug("read-ahead after blocks %d-%d of %s left out: no room in the cache", fetch.first, fetch.last,
                  entry.path)
        return False

    def _settle_locked(self, entry: Entry, fetch: _Fetch, blocks: range, ahead: bool, landed: list[int],
                       fresh: bool) -> None:
        """Space.settle for ``blocks`` of ``fetch``, its own and the read-ahead it carries each
        as their room was reserved. Holds the cache's lock."""
        split = min(max(fetch.split, blocks.start), blocks.stop)
        for part, part_ahead, part_fresh in ((range(blocks.start, split), ahead, fresh),
                                             (range(split, blocks.stop), fetch.carried,
                                              fetch.carried and not fetch.carried_wanted)):
            if part:
                self.space.settle(entry, sum(entry.block_bytes(b) for b in part), part_ahead,
                                  [b for b in landed if b in part], part_fresh)

    def _run_fetch(self, info: ObjectInfo, entry: Entry, fetch: _Fetch, priority: int) -> None:
        """In a pool thread: one ranged GET pinned to the generation, written into the copy;
        each block lands (present, counted, its readers woken) once its last byte is written."""
        bs = self.block_size
        lo, hi = fetch.first * bs, min((fetch.last + 1) * bs, entry.size)
        ahead = self._reserve(entry, fetch, hi - lo)
        if ahead is None:
            return
        hi = min((fetch.last + 1) * bs, entry.size)  # (read-ahead it carried may be left out)
        count = fetch.last - fetch.first + 1

        def progress(upto: int) -> None:  # bytes [lo, upto) are in the copy
            whole = count if upto >= hi else upto // bs - fetch.first
            if whole > fetch.landed:  # (only this thread changes it)
                self._land(entry, fetch, whole, ahead)
            if upto < hi:  # a reader of this block's first bytes need not wait for all of it
                fetch.announce(upto=upto)

        error: BaseException | None = None
        try:
            try:  # straight into the copy, as the bytes arrive
                got = self.bucket.read_range_into(info.name, lo, hi, entry.fd, generation=info.generation,
                                                  progress=progress)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise no_space(exc) from exc
                raise
            if got != hi - lo:
                raise StorageError(f"short read of {info.name!r}: wanted {hi - lo} bytes at {lo}, got {got}")
            progress(hi)
        except BaseException as exc:  # handed to the readers waiting for the blocks not landed
            error = exc
        with entry.lock:
            failed_at = time.monotonic()
            for block in range(fetch.first + fetch.landed, fetch.last + 1):
                if entry.inflight.get(block) is fetch:
                    del entry.inflight[block]
                if isinstance(error, BucketUnreachable):  # asking again at once would wait as long
                    entry.failed[block] = (failed_at, fetch)
                else:
                    entry.failed.pop(block, None)
            fetch.error = error
        with self._lock:  # give back the reservation of the blocks that did not land
            self._settle_locked(entry, fetch, range(fetch.first + fetch.landed, fetch.last + 1), ahead, [], False)
        fetch.announce(done=True)
        self._unpin(entry)
        if error is not None:
            level = logging.DEBUG if isinstance(error, NotFound) or priority == DEMAND else logging.INFO
            log.log(level, "fetch of %r bytes %d-%d failed, left missing: %s", info.name, lo, hi, error)

    def _land(self, entry: Entry, fetch: _Fetch, whole: int, ahead: bool) -> None:
        """The first ``whole`` blocks of ``fetch`` are written: the new ones are present now,
        counted as clean data (their reservation settled) and their readers woken."""
        blocks = range(fetch.first + fetch.landed, fetch.first + whole)
        landed = []
        with entry.lock:
            for block in blocks:
                if entry.inflight.get(block) is fetch:
                    del entry.inflight[block]
                if not entry.present[block]:
                    entry.present[block] = 1
                    entry.missing -= 1
                    landed.append(block)
                entry.failed.pop(block, None)
            fresh = fetch.ahead and not fetch.wanted  # nobody has read these yet
        with self._lock:
            if entry.dropped:  # (set under _lock) its blocks no longer count
                landed = []
            self._settle_locked(entry, fetch, blocks, ahead, landed, fresh)
        fetch.announce(landed=whole)

    # --- whole small objects ahead (see octuefs.cache.prefetch) ---------------------------------

    def prefetch(self, info: ObjectInfo, pool: FetchPool,
                 done: Callable[[], None] | None = None) -> Callable[[], bool] | None:
        """Start fetching the whole of ``info``'s generation, in one request, on ``pool`` (the
        caller's: its fetches never take the workers readers need) before anyone reads it.

        Returns a function that cancels it while it is queued and no reader waits for it (True
        if it did), or None if nothing was started (empty, larger than one request, present or
        in flight). Its bytes are read-ahead: counted, spared only while not read yet, dropped
        when there is no room. A reader that comes meanwhile joins it, and moves it into this
        cache's own pool at once if it is still queued; whichever pool runs it first does.
        ``done()`` is called once it has run (in that pool's thread, with no lock held); not if
        it was cancelled.
        """
        bs = self.block_size
        if not 0 < info.size <= self.blocks_per_request * bs:
            return None
        entry = self._pin(info)
        try:
            with entry.lock:
                if entry.missing < len(entry.present) or entry.inflight:
                    return None
                fetch = _Fetch(0, (info.size - 1) // bs, info.generation, ahead=True)
                for block in range(fetch.last + 1):
                    entry.inflight[block] = fetch
                entry.pins += 1  # the fetch's, given back when it ends or is cancelled
                claim = threading.Lock()  # taken by whoever runs or cancels it first
                fetch.task = pool.submit(lambda: self._run_prefetch(info, entry, fetch, claim, done), AHEAD)
        finally:
            self._unpin(entry)
        return lambda: self._cancel_prefetch(entry, fetch, claim)

    def _run_prefetch(self, info: ObjectInfo, entry: Entry, fetch: _Fetch, claim: threading.Lock,
                      done: Callable[[], None] | None = None) -> None:
        if claim.acquire(blocking=False):  # else cancelled, or run by the other pool already
            self._run_fetch(info, entry, fetch, AHEAD)
            self._drop_if_empty(entry)
            if done is not None:
                done()

    def _cancel_prefetch(self, entry: Entry, fetch: _Fetch, claim: threading.Lock) -> bool:
        with entry.lock:
            if fetch.wanted or not claim.acquire(blocking=False):
                return False
            for block in range(fetch.first, fetch.last + 1):
                if entry.inflight.get(block) is fetch:
                    del entry.inflight[block]
            fetch.error = _NoRoom()  # (nobody waits for it: a reader that joins later fetches again)
        fetch.announce(done=True)  # wakes readers waiting in wait_for
        self._unpin(entry)
        self._drop_if_empty(entry)
        return True

    def _drop_if_empty(self, entry: Entry) -> None:
        """Delete a copy left with nothing in it and nobody using it (a prefetch that was
        cancelled, failed or had no room), rather than keep an empty file per such name."""
        with self._lock:  # (no new pin meanwhile: pins are taken under it)
            with entry.lock:
                empty = entry.missing == len(entry.present) and not entry.pins and not entry.inflight
            if empty:
                self._evict_entry_locked(entry)
