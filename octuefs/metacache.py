"""Metadata caches: what each path is (file, directory, nothing) and what each directory holds.

Filled by stats and, above all, by listings: one list request answers ``ls -l`` and
``getfattr -d`` for a whole directory, because a listing carries every object's size, times and
custom metadata. Entries expire after configurable TTLs (cachetools containers, injectable
timer); "does not exist" has its own, shorter TTL. The mount's own writes update the caches at
once, so a change made through the mount shows through it immediately.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

import cachetools

from .storage.base import ObjectInfo


class _Sentinel:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


DIR = _Sentinel("DIR")  # the path is a directory (marker object or implicit prefix)
MISSING = _Sentinel("MISSING")  # neither a file nor a directory, as of the last look

Entry = ObjectInfo | _Sentinel


@dataclasses.dataclass
class Listing:
    """One directory's entries: files by entry name, and subdirectory names."""

    files: dict[str, ObjectInfo]
    dirs: set[str]


def parent_prefix(name: str) -> str:
    """``"a/b/c"`` -> ``"a/b/"``; ``"a/b/"`` -> ``"a/"``; ``"c"`` -> ``""``."""
    stripped = name[:-1] if name.endswith("/") else name
    cut = stripped.rfind("/")
    return stripped[: cut + 1] if cut >= 0 else ""


class MetadataCache:
    """TTL caches keyed by object name (files), ``name/`` (directories) and listing prefix.

    Lock: ``_lock`` guards the three cachetools containers (they are not thread-safe). No
    network call is ever made while it is held.
    """

    def __init__(
        self,
        stat_ttl: float,
        list_ttl: float,
        negative_ttl: float,
        timer: Callable[[], float] = time.monotonic,
        maxsize: int = 500_000,
    ):
        self._lock = threading.Lock()
        self._enabled = stat_ttl > 0
        self._stats: cachetools.TTLCache = cachetools.TTLCache(maxsize, max(stat_ttl, 1e-9), timer)
        self._missing: cachetools.TTLCache = cachetools.TTLCache(maxsize, max(negative_ttl, 1e-9), timer)
        self._listings: cachetools.TTLCache = cachetools.TTLCache(10_000, max(list_ttl, 1e-9), timer)
        self._negative_enabled = negative_ttl > 0
        self._listing_enabled = list_ttl > 0
        # How many changes the mount has made in each directory (by listing prefix), and in all
        # of them: a listing or lookup read while one happened may already be out of date.
        self._epochs: dict[str, int] = {}
        self._epoch_all = 0

    # --- change counters ----------------------------------------------------------------

    def epoch(self, prefix: str) -> tuple[int, int]:
        """A token that changes whenever the mount changes something listed under ``prefix``."""
        with self._lock:
            return self._epoch_all, self._epochs.get(prefix, 0)

    def _bump(self, name: str) -> None:  # LOCKS_REQUIRED(_lock)
        prefix = parent_prefix(name)
        self._epochs[prefix] = self._epochs.get(prefix, 0) + 1

    def _current(self, prefix: str, epoch: tuple[int, int] | None) -> bool:  # LOCKS_REQUIRED(_lock)
        return epoch is None or epoch == (self._epoch_all, self._epochs.get(prefix, 0))

    # --- lookups ----------------------------------------------------------------------

    def lookup(self, name: str) -> Entry | None:
        """What ``name`` is, if known and fresh: an ObjectInfo, DIR, MISSING, or None (unknown)."""
        with self._lock:
            info = self._stats.get(name)
            if info is not None:
                return info
            if self._stats.get(name + "/") is DIR:
                return DIR
            if self._missing.get(name) is MISSING:
                return MISSING
            listing = self._listings.get(parent_prefix(name))
        if listing is None or not name:
            return None
        entry = name[len(parent_prefix(name)) :]
        if entry in listing.dirs:
            return DIR
        if entry in listing.files:
            return listing.files[entry]
        return MISSING

    def listing(self, prefix: str) -> Listing | None:
        """A copy of the cached listing of ``prefix`` (the cached one changes in place)."""
        with self._lock:
            listing = self._listings.get(prefix)
            return Listing(dict(listing.files), set(listing.dirs)) if listing is not None else None

    # --- fills ------------------------------------------------------------------------

    def put_file(self, info: ObjectInfo, epoch: tuple[int, int] | None = None) -> None:
        if not self._enabled:
            return
        with self._lock:
            if self._current(parent_prefix(info.name), epoch):
                self._stats[info.name] = info
                self._missing.pop(info.name, None)

    def put_dir(self, name: str, epoch: tuple[int, int] | None = None) -> None:
        if not self._enabled:
            return
        with self._lock:
            if self._current(parent_prefix(name.rstrip("/")), epoch):
                self._stats[name.rstrip("/") + "/"] = DIR
                self._missing.pop(name.rstrip("/"), None)

    def put_missing(self, name: str, epoch: tuple[int, int] | None = None) -> None:
        """``epoch``: :meth:`epoch` of the parent from before the bucket was asked; if the mount
        changed something there since, the answer may be stale and is not kept."""
        if not self._negative_enabled:
            return
        with self._lock:
            if self._current(parent_prefix(name), epoch):
                self._missing[name] = MISSING

    def put_page(self, prefix: str, files: list[ObjectInfo], epoch: tuple[int, int] | None = None) -> None:
        """Keep the files of one page of a listing of ``prefix`` (while the rest is coming)."""
        if not self._enabled:
            return
        with self._lock:
            if self._current(prefix, epoch):
                for info in files:
                    self._stats[info.name] = info

    def put_listing(self, prefix: str, listing: Listing, epoch: tuple[int, int] | None = None,
                    unkept: Iterable[ObjectInfo] | None = None) -> bool:
        """Keep a listing read from the bucket, unless the mount changed the directory since
        ``epoch`` (taken before the listing was asked for). Returns whether it was current.
        ``unkept``: the files :meth:`put_page` has not kept (by default, all of them)."""
        with self._lock:
            if not self._current(prefix, epoch):
                return False
            if self._listing_enabled:
                self._listings[prefix] = Listing(dict(listing.files), set(listing.dirs))
            if self._enabled:
                for info in listing.files.values() if unkept is None else unkept:
                    self._stats[info.name] = info
                for d in listing.dirs:
                    self._stats[prefix + d + "/"] = DIR
            return True

    # --- the mount's own changes --------------------------------------------------------

    def wrote(self, info: ObjectInfo) -> None:
        """The mount created or changed ``info.name``: update every cache that holds it."""
        self.put_file(info)
        entry = info.name[len(parent_prefix(info.name)) :]
        with self._lock:
            self._bump(info.name)
            self._missing.pop(info.name, None)
            listing = self._listings.get(parent_prefix(info.name))
            if listing is not None:
                listing.files[entry] = info

    def made_dir(self, name: str) -> None:
        """The mount created directory ``name``: it is known to exist, and to be empty."""
        name = name.rstrip("/")
        self.put_dir(name)
        with self._lock:
            self._bump(name)
            if self._listing_enabled:  # so creating files in it asks the bucket nothing
                self._listings[name + "/"] = Listing({}, set())
            listing = self._listings.get(parent_prefix(name))
            if listing is not None:
                listing.dirs.add(name[len(parent_prefix(name)) :])

    def removed(self, name: str, is_dir: bool = False) -> None:
        """The mount deleted ``name`` (a file, or a directory when ``is_dir``)."""
        name = name.rstrip("/")
        entry = name[len(parent_prefix(name)) :]
        with self._lock:
            self._bump(name)
            if is_dir:
                self._bump(name + "/x")
            self._stats.pop(name, None)
            self._stats.pop(name + "/", None)
            if is_dir:
                self._listings.pop(name + "/", None)
            listing = self._listings.get(parent_prefix(name))
            if listing is not None:
                listing.files.pop(entry, None)
                if is_dir:
                    listing.dirs.discard(entry)
        self.put_missing(name)

    def forget(self, name: str) -> None:
        """Drop what is known of ``name`` (after a surprise such as a failed precondition)."""
        name = name.rstrip("/")
        with self._lock:
            self._bump(name)
            self._stats.pop(name, None)
            self._stats.pop(name + "/", None)
            self._missing.pop(name, None)
            self._listings.pop(parent_prefix(name), None)

    def clear(self) -> None:
        with self._lock:
            self._epoch_all += 1
            self._stats.clear()
            self._missing.clear()
            self._listings.clear()
