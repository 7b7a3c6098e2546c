"""The targets of symbolic links, read from the bucket once per generation, and ahead when a
program reads the links of a directory one after another.

A link in Google's layout is an object whose content is its target (``posixfs``): ``stat``
needs only the listing (its size is the target's length), but ``readlink`` needs one GET. ``ls
-l``, ``ls --color``, ``cp -a``, ``rsync -l`` and ``tar`` read every link of a directory, one
after another: one round trip each, 40 links 0.8 s at 20 ms. So a directory's listing notes the
links whose target it does not carry (:meth:`LinkTargets.listed`), and once one of them is
read, the next ones in listing order are read ahead, AHEAD at most not yet asked for at a time
and WORKERS at once: the program's next ``readlink`` finds its target read or on its way.
A directory whose links nobody reads costs nothing more; one whose single link is read costs at
most AHEAD more small GETs.

Every read is pinned to the generation listed: a link replaced since is not found at that
generation and its reader looks it up again (``PosixSurface.readlink``); a read ahead that
fails is no reader's error (its reader reads it itself).

Locks: ``_lock`` guards every dict here; it is never held during a request or a wait.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import cachetools

from octuefs.storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)

TARGETS_KEPT = 65536  # targets remembered, by (name, generation)
# The most of a link's content read and kept: the kernel takes at most PATH_MAX bytes of a target
# (less one for its NUL), so a "link" object of 10 MiB written elsewhere costs 4 KiB, not 10 MiB
# per generation in the cache.
TARGET_READ_MAX = 4096
DIRS_NOTED = 256  # directories whose listed links are remembered
LINKS_NOTED = 10_000  # links remembered per directory
AHEAD = 64  # targets read ahead and not yet asked for, per directory
REFILL = AHEAD // 2  # read more ahead once fewer than this are left unasked
WORKERS = 16  # reads ahead at once

Key = tuple[str, int]


def _directory(name: str) -> str:
    return name[: name.rfind("/") + 1]


class LinkTargets:
    def __init__(self, bucket: Bucket, workers: int = WORKERS, ahead: int = AHEAD):
        self.bucket = bucket
        self.workers, self.ahead, self.refill = workers, ahead, max(ahead // 2, 1)
        self._lock = threading.Lock()
        self._known: cachetools.LRUCache[Key, str] = cachetools.LRUCache(TARGETS_KEPT)
        self._reading: dict[Key, Future] = {}
        # directory -> its listed links not yet read nor asked for, in listing order
        self._noted: cachetools.LRUCache[str, dict[Key, ObjectInfo]] = cachetools.LRUCache(DIRS_NOTED)
        self._unasked: dict[str, set[Key]] = {}  # directory -> targets read ahead, not yet asked for
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats = {"read": 0, "ahead": 0, "ahead_used": 0}

    def remember(self, info: ObjectInfo, target: str) -> None:
        """``info`` (a link just made here) has ``target``."""
        with self._lock:
            self._known[(info.name, info.generation)] = target

    def listed(self, infos: list[ObjectInfo]) -> None:
        """A listing shows these links (of one directory), whose content is their target."""
        with self._lock:
            for info in infos:
                key = (info.name, info.generation)
                if key in self._known or key in self._reading:
                    continue
                noted = self._noted.get(_directory(info.name))
                if noted is None:
                    noted = self._noted[_directory(info.name)] = {}
                if len(noted) < LINKS_NOTED:
                    noted[key] = info

    def target(self, info: ObjectInfo) -> str:
        """The target of link ``info`` (at its generation): known, read ahead, or read now."""
        key, directory = (info.name, info.generation), _directory(info.name)
        with self._lock:
            known = self._known.get(key)
            reading = self._reading.get(key)
            noted = self._noted.get(directory)
            if noted is not None:
                noted.pop(key, None)
            unasked = self._unasked.get(directory)
            if unasked is not None and key in unasked:
                unasked.discard(key)
                self.stats["ahead_used"] += 1
            self._read_ahead_locked(directory)
        if known is not None:
            return known
        if reading is not None:
            try:
                return reading.result()
            except Exception as exc:  # (read again below: its own error is the reader's)
                log.debug("the read ahead of link %r failed (%s): reading it again", info.name, exc)
        target = self._read(info)
        with self._lock:
            self.stats["read"] += 1
        return target

    def close(self) -> None:
        """Nothing more is read ahead: reads not begun are cancelled (their readers, if any, read
        for themselves); reads under way end on their own."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            self._noted.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, info: ObjectInfo) -> str:
        size = min(info.size, TARGET_READ_MAX)
        data = self.bucket.read_range(info.name, 0, size, generation=info.generation) if size else b""
        target = data.decode("utf-8", "surrogateescape")
        with self._lock:
            self._known[(info.name, info.generation)] = target
        return target

    def _read_ahead_locked(self, directory: str) -> None:
        """Keep up to ``ahead`` targets of ``directory`` read (or on their way) and not yet asked
        for, the next of its listed links in listing order, once fewer than ``refill`` are left."""
        noted = self._noted.get(directory)
        if not noted or self._closed:
            return
        unasked = self._unasked.setdefault(directory, set())
        if len(unasked) >= self.refill:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="octuefs-link")
        while noted and len(unasked) < self.ahead:
            key, info = next(iter(noted.items()))
            del noted[key]
            if key in self._known or key in self._reading:
                continue
            # (its worker takes it out of _reading under this lock: never before it is in)
            self._reading[key] = self._pool.submit(self._run_ahead, key, info)
            unasked.add(key)
            self.stats["ahead"] += 1
        if not noted:
            self._noted.pop(directory, None)
        if len(self._unasked) > DIRS_NOTED:  # (directories left half read)
            self._unasked.pop(next(iter(self._unasked)))

    def _run_ahead(self, key: Key, info: ObjectInfo) -> str:
        try:
            return self._read(info)
        finally:
            with self._lock:
                self._reading.pop(key, None)
