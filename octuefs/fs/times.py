"""The mtime and ctime ``stat`` shows, as POSIX moves them, on a bucket that keeps neither.

A GCS object has one time of its own, ``updated``: when its content or its metadata last
changed, which is what a ctime is. Its mtime is the mtime key of :mod:`posixmeta` when a
touch set one (:func:`octuefs.fs.files.mtime_of`), else ``updated`` too. Write-back makes both land
late: a file closed at 12:00:00 is uploaded at 12:00:02, and a rename is a copy, so the times
``stat`` showed would jump when the upload lands or the file is renamed. POSIX says:

* a write or a truncate moves the file's mtime and ctime, and nothing else does (an upload
  landing is not a change of the file);
* a rename moves the ctime of the file renamed, never its mtime;
* creating or removing an entry (create, mkdir, unlink, rmdir, rename) moves the mtime and ctime
  of the directory holding it.

:class:`Times` keeps what the bucket cannot: the times of the versions this mount wrote or
renamed (by name and generation, so a version made elsewhere shows its own), and of the
directories whose entries this mount changed. It is memory only: after a remount a file shows
the bucket's times (its upload's, a second or two later than its last write, unless a touch
set one) and a directory the mount's start time. ``_lock`` guards both tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import cachetools

from octuefs.octue import posixmeta
from octuefs.storage.base import ObjectInfo

VERSIONS_KEPT = 65536  # versions whose times this mount remembers, least recently used dropped first
DIRS_KEPT = 65536  # directories likewise


def stored_mtime(info: ObjectInfo) -> float | None:
    """The mtime kept on the object (a touch's, or another tool's), if any: the POSIX codec reads it."""
    return posixmeta.decoded(info).mtime


class Times:
    """Times of versions and directories this mount changed (see the module docstring)."""

    def __init__(self, started: float, clock: Callable[[], float] = time.time):
        self.started = started
        self.clock = clock
        # (name, generation) -> (metageneration, mtime, ctime) as this mount made that version
        self._versions: cachetools.LRUCache[tuple[str, int], tuple[int, float, float]] = \
            cachetools.LRUCache(VERSIONS_KEPT)
        self._dirs: cachetools.LRUCache[str, float] = cachetools.LRUCache(DIRS_KEPT)  # prefix -> time
        self._lock = threading.Lock()

    # --- files ----------------------------------------------------------------------------

    def of(self, info: ObjectInfo) -> tuple[float, float]:
        """``(mtime, ctime)`` of a version in the bucket: as this mount made it if it did (a
        metadata change since moves only the ctime, to when it landed), else the bucket's."""
        updated = info.updated.timestamp()
        stored = stored_mtime(info)
        kept = None
        if self._versions:  # (none on a mount that has written nothing: no lock, no lookup)
            with self._lock:
                kept = self._versions.get((info.name, info.generation))
        if kept is None:
            return (updated if stored is None else stored), updated
        metageneration, mtime, ctime = kept
        if metageneration != info.metageneration:
            ctime = max(ctime, updated)
        return (mtime if stored is None else stored), ctime

    def made(self, info: ObjectInfo, mtime: float, ctime: float) -> None:
        """This mount's upload (or rename) made ``info``, whose times are these."""
        with self._lock:
            self._versions[(info.name, info.generation)] = (info.metageneration, mtime, ctime)

    def renamed(self, src_name: str, dst_name: str, moved: ObjectInfo | None = None, mtime: float = 0.0) -> float:
        """A rename of ``src_name`` to ``dst_name`` (made ``moved``, a file whose mtime is ``mtime``):
        the file keeps its mtime, its ctime and both directories' times move. Returns the time."""
        now = self.clock()
        if moved is not None:
            self.made(moved, mtime, now)
        self.entry_changed(src_name)
        self.entry_changed(dst_name)
        return now

    # --- directories ----------------------------------------------------------------------

    def of_dir(self, prefix: str) -> float:
        """mtime (and ctime) of the directory listed as ``prefix`` (``""`` the bucket's root)."""
        with self._lock:
            return self._dirs.get(prefix, self.started)

    def dir_moved(self, src_prefix: str, dst_prefix: str) -> None:
        """A directory renamed: the times of the directories under it (and its own) go with it."""
        with self._lock:
            under = [(p, t) for p, t in self._dirs.items() if p.startswith(src_prefix)]
            for prefix in [p for p in self._dirs if p.startswith(dst_prefix)] + [p for p, _ in under]:
                self._dirs.pop(prefix, None)  # (an empty directory renamed over: its times go with it)
            for prefix, when in under:
                self._dirs[dst_prefix + prefix[len(src_prefix):]] = when

    def dir_changed_at(self, prefix: str) -> float | None:
        """When this mount last made or removed an entry of ``prefix``, if it remembers."""
        with self._lock:
            return self._dirs.get(prefix)

    def dir_changed(self, prefix: str) -> None:
        """An entry was made or removed in the directory ``prefix`` (``""``, or ends with ``/``)."""
        now = self.clock()
        with self._lock:
            self._dirs[prefix] = now

    def entry_changed(self, name: str) -> None:
        """The entry ``name`` (an object name, ``a/b``) was made or removed: its directory changed."""
        self.dir_changed(name.rstrip("/").rpartition("/")[0] + "/" if "/" in name.rstrip("/") else "")
