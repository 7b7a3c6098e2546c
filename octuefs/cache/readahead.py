"""Read-ahead for the block cache: sequential-access detection, and the pool that fetches.

:class:`Streams` watches the reads of one cached object and says which bytes to fetch before
they are asked for. A read that starts where an earlier one ended (give or take ``tolerance``,
since the kernel sends neighbouring requests concurrently and they may arrive out of order)
continues a *stream*. A stream is sequential once it has run ``min_run`` bytes, or at once
if it started at offset 0 (like the kernel's own read-ahead). A sequential stream gets a window
of read-ahead that doubles, up to ``maximum`` bytes, each time the reader has eaten half of it.
It starts at ``initial`` bytes; one that starts at offset 0 may start larger (``first``: the
cache asks for what one request brings in a round trip, so that at a distance the next request
goes out before the first one's bytes are all in, and near the bucket nothing changes); such a
stream's window also doubles as soon as it has run past ``min_run``, not only once the reader
has eaten half of it.
Several streams per object are tracked at once (two readers of one file, or one reader jumping
between two places); a read that matches none starts a new one. Random reads, even of a MiB or
two (which the kernel sends as several neighbouring requests), fetch only what they touch.

:class:`FetchPool` runs fetches on at most ``workers`` threads: a bounded number of ranged
GETs in flight, each streamed to disk a piece at a time, so a bounded amount of memory. Fetches a
reader is waiting for (``DEMAND``) run before read-ahead (``AHEAD``); a read-ahead fetch a
reader starts waiting for can be moved up (:meth:`FetchPool.boost`). Read-ahead never takes the
last ``spare`` workers, so a reader's fetch starts at once even while long read-ahead requests
of several files are streaming. A reader may also run its fetch in its own thread, in one of
the pool's places (:meth:`FetchPool.claim`): no hand-off to a worker and back, which cost a
small file's read about 0.5 ms of the daemon's CPU (two thread switches under the interpreter's
lock). Threads start when there is work and end after ``idle`` seconds without any, so an idle
mount holds none.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

DEMAND, AHEAD = 0, 1  # fetch priorities: lower runs first


@dataclasses.dataclass
class _Stream:
    start: int  # where the stream began
    pos: int  # where the last read of this stream ended
    ahead: int  # read-ahead has been requested up to here (exclusive)
    window: int  # current read-ahead size, bytes
    sequential: bool
    early: bool = False  # its window grows as soon as it runs past min_run (see Streams.first)
    let_go: int = 0  # the copy's pages behind this stream were handed back up to here (ContentCache._let_go)


class Streams:
    """Sequential-read detection for one object. Not thread-safe: the caller's lock guards it."""

    MAX_STREAMS = 4

    def __init__(self, initial: int, maximum: int, tolerance: int, min_run: int,
                 first: Callable[[], int] | None = None, first_read: int = 0):
        self.initial = initial
        self.maximum = max(initial, maximum)
        self.tolerance = tolerance
        self.min_run = min_run
        # The window of a stream that starts at offset 0 (asked when one does): ``initial``
        # unless the caller says more (the cache: what arrives in a round trip, when far).
        self.first = first
        # ... for a first read of at least ``first_read`` bytes: the kernel asks that much for a
        # reader that streams (cat, cp, dd: 256 KiB to 1 MiB), 16-32 KiB for one that reads a
        # file's first bytes and leaves (head -c, a header), which gets ``initial``.
        self.first_read = first_read
        self._streams: list[_Stream] = []  # most recently used last

    def observe(self, start: int, end: int) -> tuple[int, int] | None:
        """Note a read of ``[start, end)``; return the byte range to read ahead, if any."""
        stream = self._match(start)
        if stream is None:
            window = self.initial
            if start == 0 and self.first is not None and end - start >= self.first_read:
                window = min(self.maximum, max(self.initial, self.first()))
            stream = _Stream(start=start, pos=end, ahead=end, window=window, sequential=start == 0,
                             early=window > self.initial)
            self._streams.append(stream)
            if len(self._streams) > self.MAX_STREAMS:
                del self._streams[0]
            if not stream.sequential:
                return None
        else:
            self._streams.remove(stream)
            self._streams.append(stream)
            stream.pos = max(stream.pos, end)
            if not stream.sequential:
                if stream.pos - stream.start < self.min_run:
                    return None
                stream.sequential = True
            elif stream.early and stream.pos - stream.start > self.min_run:
                # Far from the bucket, a stream from offset 0 that has gone on past the kernel's
                # own read-ahead grows now, while its first request is still arriving: waiting
                # for the reader to eat half of it would leave the pipe empty for a round trip.
                stream.early = False
                stream.window = min(self.maximum, stream.window * 2)
            elif stream.ahead - stream.pos > stream.window // 2:
                return None  # still well ahead of the reader
            else:
                stream.window = min(self.maximum, stream.window * 2)
        lo = max(stream.ahead, stream.pos)
        stream.ahead = stream.pos + stream.window
        return (lo, stream.ahead) if stream.ahead > lo else None

    def sequential_at(self, start: int) -> _Stream | None:
        """The sequential stream a read at ``start`` (already observed) belongs to; None if the
        read is not part of one. Each stream keeps its own marks: two readers of one file, or a
        second pass through it, are followed apart."""
        for stream in reversed(self._streams):
            if stream.sequential and stream.start <= start <= stream.pos:
                return stream
        return None

    def _match(self, start: int) -> _Stream | None:
        for stream in reversed(self._streams):
            if stream.pos - self.tolerance <= start <= stream.pos + self.tolerance:
                return stream
        return None


class Task:
    """One unit of work in a :class:`FetchPool`. ``priority`` and ``started`` are guarded by
    the pool's lock."""

    __slots__ = ("fn", "priority", "started", "key", "ahead")

    def __init__(self, fn: Callable[[], None], priority: int, key: object = None):
        self.fn = fn
        self.priority = priority
        self.started = False
        self.key = key  # read-ahead of one key (one cached file) runs at most ``ahead_per_key`` at once
        self.ahead = False  # started as read-ahead: counted in the pool's limits until it ends


class FetchPool:
    """At most ``workers`` threads running :class:`Task` s, lowest priority value first.

    Read-ahead of one key runs at most ``ahead_per_key`` tasks at once (a task a reader waits
    for is never held back): one sequential reader is served best by two ranged GETs in
    flight, not by every worker (measured, 256 MiB cold on 2 cores: 0.5x the client's
    download with eight in flight, 0.85-0.95x with two, also behind 30 ms of latency), while
    several files read at once still use every worker but ``spare``, kept for readers.

    At most ``workers`` tasks run at once, counting those a caller runs in its own thread
    (:meth:`claim`): the pool's threads take no task while every place is taken.

    ``_cond`` (and its lock) guards ``_heap``, ``_threads``, ``_waiting``, ``_running``,
    ``_ahead``, ``_busy`` and ``_claimed``, and each task's ``ahead``. The tasks themselves run without it; a task must
    not raise (an exception is logged as a bug).
    """

    def __init__(self, workers: int, idle: float = 30.0, name: str = "octuefs-fetch", ahead_per_key: int = 2,
                 spare: int = 1):
        if workers < 1:
            raise ValueError("a fetch pool needs at least one worker")
        self.workers = workers
        self.idle = idle
        self.name = name
        self.ahead_per_key = ahead_per_key
        self.ahead_limit = max(1, workers - spare)  # read-ahead tasks running at once, all keys
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[int, int, Task]] = []
        self._seq = itertools.count()
        self._threads = 0
        self._waiting = 0
        self._running: dict[object, int] = {}  # key -> its read-ahead tasks running
        self._ahead = 0  # read-ahead tasks running
        self._busy = 0  # tasks running in the pool's threads
        self._claimed = 0  # places taken by callers running a task in their own thread (claim)

    def submit(self, fn: Callable[[], None], priority: int, key: object = None, counted: bool = False) -> Task:
        """Queue ``fn``; ``counted``: it already holds a read-ahead slot (:meth:`take_ahead`),
        given back when it ends."""
        task = Task(fn, priority, key)
        task.ahead = counted
        with self._cond:
            heapq.heappush(self._heap, (priority, next(self._seq), task))
            self._wake_locked()
        return task

    def take_ahead(self, key: object) -> bool:
        """A read-ahead slot of ``key`` for a task a reader waits for that carries read-ahead
        too (a read's GET that goes on past the read): True if one was free, and it is taken
        (pass ``counted`` to :meth:`submit`). Such a task runs at once, as DEMAND, but while it
        runs it counts as read-ahead, so the worker kept for readers stays free."""
        with self._cond:
            if self._ahead >= self.ahead_limit or self._running.get(key, 0) >= self.ahead_per_key:
                return False
            self._ahead += 1
            self._running[key] = self._running.get(key, 0) + 1
            return True

    def resize(self, workers: int) -> None:
        """Run at most ``workers`` tasks at once from now on (those running go on)."""
        with self._cond:
            if workers == self.workers or workers < 1:
                return
            self.ahead_limit = max(1, min(workers, self.ahead_limit + workers - self.workers))
            self.workers = workers
            for _ in range(min(len(self._heap) - self._waiting, workers - self._threads)):
                self._threads += 1  # queued tasks may run in the new places
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
            self._cond.notify_all()

    def claim(self) -> bool:
        """Take one of the pool's places to run a fetch in the calling thread, if one is free
        and no queued fetch a reader waits for is owed it (then :meth:`unclaim` when done);
        False: submit it instead."""
        with self._cond:
            if self._busy + self._claimed >= self.workers:
                return False
            if self._heap and self._heap[0][0] <= DEMAND and not self._heap[0][2].started:
                return False  # a queued fetch a reader waits for goes first (its thread may not have woken yet)
            self._claimed += 1
            return True

    def unclaim(self) -> None:
        with self._cond:
            self._claimed -= 1
            if self._heap:
                self._cond.notify()  # a queued task may run in that place now

    def boost(self, task: Task) -> None:
        """Run ``task`` as a DEMAND task if it has not started yet (a reader now waits on it)."""
        with self._cond:
            if task.started or task.priority <= DEMAND:
                return
            task.priority = DEMAND
            heapq.heappush(self._heap, (DEMAND, next(self._seq), task))  # the old entry is skipped
            self._wake_locked()

    def _wake_locked(self) -> None:
        # A woken thread leaves the waiting count only once it runs: more queued tasks than
        # waiting threads means the waiting ones cannot take them all, so start another.
        self._cond.notify()
        if len(self._heap) > self._waiting and self._threads < self.workers:
            self._threads += 1
            threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()

    def _next(self) -> Task | None:
        """The next task to run, or None when this thread should end (idle too long)."""
        with self._cond:
            while True:
                held: list[tuple[int, int, Task]] = []  # read-ahead of keys at their limit
                found = None
                while self._heap and self._busy + self._claimed < self.workers:
                    item = heapq.heappop(self._heap)
                    task = item[2]
                    if task.started:
                        continue
                    if self._held_back_locked(task):
                        held.append(item)
                        continue
                    found = task
                    break
                for item in held:
                    heapq.heappush(self._heap, item)
                if found is not None:
                    found.started = True
                    self._busy += 1
                    if found.priority > DEMAND:
                        found.ahead = True
                        self._ahead += 1
                        if found.key is not None:
                            self._running[found.key] = self._running.get(found.key, 0) + 1
                    return found
                self._waiting += 1
                woken = self._cond.wait(self.idle)
                self._waiting -= 1
                if not woken and not self._heap:
                    self._threads -= 1
                    return None

    def _held_back_locked(self, task: Task) -> bool:
        if task.priority <= DEMAND:
            return False
        return self._ahead >= self.ahead_limit or (
            task.key is not None and self._running.get(task.key, 0) >= self.ahead_per_key)

    def _done(self, task: Task) -> None:
        with self._cond:
            self._busy -= 1
            if not task.ahead:
                if self._heap:
                    self._cond.notify()
                return
            self._ahead -= 1
            if task.key is not None:
                left = self._running[task.key] - 1
                if left:
                    self._running[task.key] = left
                else:
                    del self._running[task.key]
            self._cond.notify_all()  # a held-back task may run now

    def _work(self) -> None:
        while (task := self._next()) is not None:
            try:
                task.fn()
            except BaseException:  # a bug in the task: log it, keep the worker
                log.exception("fetch task failed unexpectedly")
            finally:
                self._done(task)
