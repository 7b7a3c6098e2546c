"""What the mount asks of the kernel's caches: page-cache keeping across opens, and read-ahead.

* The kernel page cache is kept across opens while the object is unchanged: the FUSE adapter
  runs mfusepy with ``raw_fi=True`` so that its ``open`` can set ``keep_cache`` when the
  generation the new handle reads is the one the previous open of that path read
  (:class:`OpenedGenerations`). A new generation (the object was replaced, in the bucket or
  through the mount) opens without it, and the kernel drops the old pages.
  ``FUSE_CAP_AUTO_INVAL_DATA`` also drops them when a refreshed mtime or size differs. The core
  never sees any of this: it deals in handle numbers.
* Reads through the page cache are as large as the kernel's read-ahead window, 128 KiB by
  default, which INIT can only lower; once the mount is up, a daemon allowed to (root) raises it
  to 1 MiB for this mount alone (:func:`raise_read_ahead`), so sequential reads come in 1 MiB
  requests. The block cache reads ahead much further than that anyway.

Nothing here speaks FUSE: :mod:`octuefs.fuse.ops` calls these.
"""

from __future__ import annotations

import logging
import os
import threading

import cachetools

from octuefs.errors import OctuefsError
from octuefs.fs.core import FileSystem

log = logging.getLogger(__name__)

KEEP_CACHE_PATHS = 65536  # paths whose last opened generation is remembered
READ_AHEAD_KB = 1024  # the kernel's read-ahead for this mount, if the daemon may set it


class OpenedGenerations:
    """path -> the generation the last open of that path read (guarded by ``_lock``): whether
    the kernel's cached pages of a path are still right for a handle just opened."""

    def __init__(self, fs: FileSystem):
        self.fs = fs
        self._opened: cachetools.LRUCache[str, int] = cachetools.LRUCache(KEEP_CACHE_PATHS)
        self._lock = threading.Lock()

    def same_as_last_open(self, path: str) -> bool:
        """Does the handle just opened read the generation the previous open of ``path`` read?

        Then the kernel's cached pages of that path are still right (every change made through
        the mount went through the kernel too). Asked after the open, when the core answers
        with the open file's own version, without a request to the bucket.
        """
        try:
            _name, info, _node = self.fs.file_info(path)
        except OctuefsError:
            info = None
        with self._lock:
            last = self._opened.pop(path, None)
            if info is None:
                return False
            self._opened[path] = info.generation
        log.debug("open %s: generation %s, last opened %s: %s the kernel's cached pages", path, info.generation,
                  last, "keeping" if last == info.generation else "dropping")
        return last == info.generation

    def forget(self, *paths: str) -> None:
        with self._lock:
            for path in paths:
                self._opened.pop(path, None)


def raise_read_ahead(mountpoint: str) -> None:
    """Raise the kernel's read-ahead window of this mount to READ_AHEAD_KB, if allowed.

    Runs in its own thread, started during INIT: the stat of the mountpoint gets through only
    once INIT is answered, after which the kernel no longer caps the window to INIT's value.
    """
    try:
        dev = os.stat(mountpoint).st_dev
        knob = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(knob) as f:
            current = int(f.read())
        if current < READ_AHEAD_KB:
            with open(knob, "w") as f:
                f.write(str(READ_AHEAD_KB))
            log.info("kernel read-ahead for this mount raised from %d to %d KiB", current, READ_AHEAD_KB)
    except (OSError, ValueError) as exc:
        log.debug("kernel read-ahead for this mount left as it is: %s", exc)
