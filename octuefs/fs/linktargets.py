"""The targets of symbolic links, read from the bucket once per generation, and ahead when a
program reads the links of a directory one after another.

A link in Google's layout is an object whose content is its target (``posixfs``): ``stat``
needs only the listing (its size is the target's length), but ``readlink`` needs one GET. ``ls
-l``, ``ls --color``, ``cp -a``, ``rsync -l`` and ``tar`` read every link of a directory, one
after another: one round trip each, 40 links 0.8 s at 20 ms. So a directory's listing notes the
links whose target it does not carry (:meth:`LinkTargets.listed`), and once one of them is
read, the next ones in listing order are read ahead, WORKERS at once: the program's next
``readlink`` finds its target read or on its way. The window (targets read ahead and not yet
asked for) starts at INITIAL and doubles each time the reader has used half of it, up to AHEAD:
a directory whose links nobody reads costs nothing more, one whose single link is read (a
``current`` link in each of many directories) at most INITIAL more small GETs.

Every read is pinned to the generation listed: a link replaced since is not found at that
generation and its reader looks it up again (``PosixSurface.readlink``).

A reader never waits longer than reading its link itself would: a read ahead still queued
(behind others that stall, when the bucket stops answering) is taken back and read by its
reader at once; one under way is joined (it began first, with the same deadline), and if it
found the bucket unreachable or the generation gone, its reader is told so rather than kept
waiting as long again. Any other failure of a read ahead is no reader's error: it reads it
itself. The workers are daemon threads (a :class:`~octuefs.cache.readahead.FetchPool` of
their own, ending when idle): a read ahead stalled at unmount does not keep the process from
exiting.

Locks: ``_lock`` guards every dict here and each read's ``started`` and ``taken``; it is never
held during a request or a wait, and is taken before the pool's (a read is queued under it).
"""

from __future__ import annotations

import logging
import threading

import cachetools

from octuefs.cache.readahead import DEMAND, FetchPool
from octuefs.errors import BucketUnreachable, NotFound
from octuefs.storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)

TARGETS_KEPT = 65536  # targets remembered, by (name, generation)
# The most of a link's content read and kept: the kernel takes at most PATH_MAX bytes of a target
# (less one for its NUL), so a "link" object of 10 MiB written elsewhere costs 4 KiB, not 10 MiB
# per generation in the cache.
TARGET_READ_MAX = 4096
DIRS_NOTED = 256  # directories with reads ahead not yet asked for
LINKS_NOTED = 10_000  # links remembered per directory
NOTED_KEPT = 65536  # listed links remembered, all directories (each keeps its ObjectInfo alive)
INITIAL = 8  # targets read ahead and not yet asked for, per directory, at first ...
AHEAD = 64  # ... and at most (read more once fewer than half the window are left unasked)
WORKERS = 16  # reads ahead at once
IDLE = 5.0  # seconds a worker with nothing to read waits for more before it ends

Key = tuple[str, int]


def _directory(name: str) -> str:
    return name[: name.rfind("/") + 1]


class _Read:
    """One link's read ahead: queued until a worker starts it (``started``), unless its reader
    took it back first (``taken``); ``done`` is set once it ended, with ``target`` or ``error``."""

    __slots__ = ("info", "started", "taken", "done", "target", "error")

    def __init__(self, info: ObjectInfo):
        self.info = info
        self.started = self.taken = False
        self.done = threading.Event()
        self.target: str | None = None
        self.error: Exception | None = None


class LinkTargets:
    def __init__(self, bucket: Bucket, workers: int = WORKERS, ahead: int = AHEAD, initial: int = INITIAL):
        self.bucket = bucket
        self.workers, self.ahead, self.initial = workers, ahead, min(initial, ahead)
        self._lock = threading.Lock()
        self._known: cachetools.LRUCache[Key, str] = cachetools.LRUCache(TARGETS_KEPT)
        self._reading: dict[Key, _Read] = {}  # reads ahead queued or under way
        # directory -> its listed links not yet read nor asked for, in listing order; weighed by
        # how many (set again after each change, so the cache sees its size)
        self._noted: cachetools.LRUCache[str, dict[Key, ObjectInfo]] = cachetools.LRUCache(NOTED_KEPT, getsizeof=len)
        self._unasked: dict[str, set[Key]] = {}  # directory -> targets read ahead, not yet asked for
        self._window: dict[str, int] = {}  # directory -> its window (see the module's docstring)
        self._pool: FetchPool | None = None
        self._closed = False
        self.stats = {"read": 0, "ahead": 0, "ahead_used": 0, "taken_back": 0}

    def remember(self, info: ObjectInfo, target: str) -> None:
        """``info`` (a link just made here) has ``target``."""
        with self._lock:
            self._known[(info.name, info.generation)] = target

    def listed(self, infos: list[ObjectInfo]) -> None:
        """A listing shows these links (of one directory), whose content is their target."""
        with self._lock:
            for info in infos:
                key, directory = (info.name, info.generation), _directory(info.name)
                if key in self._known or key in self._reading:
                    continue
                noted = self._noted.get(directory, {})
                if len(noted) < LINKS_NOTED:
                    noted[key] = info
                    self._noted[directory] = noted

    def target(self, info: ObjectInfo) -> str:
        """The target of link ``info`` (at its generation): known, read ahead, or read now."""
        key, directory = (info.name, info.generation), _directory(info.name)
        with self._lock:
            known = self._known.get(key)
            read = self._reading.get(key)
            if read is not None and not read.started:  # (queued, perhaps behind reads that stall)
                read.taken = True
                del self._reading[key]
                read = None
                self.stats["taken_back"] += 1
            noted = self._noted.get(directory)
            if noted is not None and noted.pop(key, None) is not None:
                self._renoted_locked(directory, noted)
            unasked = self._unasked.get(directory)
            if unasked is not None and key in unasked:
                unasked.discard(key)
                self.stats["ahead_used"] += read is not None or known is not None
            self._read_ahead_locked(directory)
        if known is not None:
            return known
        if read is not None:
            read.done.wait()
            if read.target is not None:
                return read.target
            if isinstance(read.error, (BucketUnreachable, NotFound)):
                raise read.error  # (reading it again would wait as long for the same answer)
            log.debug("the read ahead of link %r failed (%s): reading it again", info.name, read.error)
        target = self._read(info)
        with self._lock:
            self.stats["read"] += 1
        return target

    def close(self) -> None:
        """Nothing more is read ahead: reads not begun are dropped (their readers, if any, read
        for themselves); reads under way end on their own, in daemon threads."""
        with self._lock:
            self._closed = True
            for key in [k for k, read in self._reading.items() if not read.started]:
                self._reading.pop(key).taken = True
            self._noted.clear()
            self._unasked.clear()
            self._window.clear()

    def _read(self, info: ObjectInfo) -> str:
        size = min(info.size, TARGET_READ_MAX)
        data = self.bucket.read_range(info.name, 0, size, generation=info.generation) if size else b""
        target = data.decode("utf-8", "surrogateescape")
        with self._lock:
            self._known[(info.name, info.generation)] = target
        return target

    def _renoted_locked(self, directory: str, noted: dict[Key, ObjectInfo]) -> None:
        if noted:
            self._noted[directory] = noted  # (its new size)
        else:
            self._noted.pop(directory, None)

    def _read_ahead_locked(self, directory: str) -> None:
        """Once fewer than half of ``directory``'s window are read (or on their way) and not yet
        asked for, double the window (from the second time on) and read the next of its listed
        links, in listing order, until that many are."""
        noted = self._noted.get(directory)
        if not noted or self._closed:
            return
        unasked = self._unasked.setdefault(directory, set())
        window = self._window.get(directory)
        if window is not None and len(unasked) >= max(window // 2, 1):
            return
        window = self._window[directory] = self.initial if window is None else min(window * 2, self.ahead)
        if self._pool is None:
            self._pool = FetchPool(self.workers, idle=IDLE, name="octuefs-link")
        while noted and len(unasked) < window:
            key, info = next(iter(noted.items()))
            del noted[key]
            if key in self._known or key in self._reading:
                continue
            read = self._reading[key] = _Read(info)  # (its worker takes it out, under this lock)
            self._pool.submit(lambda key=key, read=read: self._run_ahead(key, read), DEMAND)
            unasked.add(key)
            self.stats["ahead"] += 1
        self._renoted_locked(directory, noted)
        if len(self._unasked) > DIRS_NOTED:  # (the oldest directory left half read)
            oldest = next(iter(self._unasked))
            del self._unasked[oldest]
            self._window.pop(oldest, None)

    def _run_ahead(self, key: Key, read: _Read) -> None:
        with self._lock:
            if read.taken:  # (its reader read it, or the mount is closing)
                return
            read.started = True
        try:
            read.target = self._read(read.info)
        except Exception as exc:  # (its reader, if one waits, decides: see target)
            read.error = exc
        finally:
            with self._lock:
                if self._reading.get(key) is read:
                    del self._reading[key]
            read.done.set()
