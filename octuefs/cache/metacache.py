"""Metadata caches: what each path is (file, directory, nothing) and what each directory holds.

Filled by stats and, above all, by listings: one list request answers ``ls -l``, ``getfattr -d``
and every lookup in a directory, because a listing carries every object's size, times and custom
metadata. A listing is kept whole (:meth:`MetadataCache.listing`) or, while its pages are on
their way or when it was cut short, partial: a partial listing decides the names up to the last
one its pages reached (its *horizon*).

Freshness: what a listing shows is believed for ``list_ttl``; what it does *not* show ("does not
exist") only for ``negative_ttl`` after it was asked for. Past that, an absent name is unknown and
the bucket is asked again (see :mod:`octuefs.cache.listings`).

The mount's own changes update every cache at once, so a change made through the mount shows
through it immediately, and are logged by name: a listing read while the mount changed its
directory is kept with those changes laid over it, unless they can no longer be told name by name
(then it is dropped, as one read before a change the mount made elsewhere must be).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

import cachetools

from octuefs.storage.base import ObjectInfo


class _Sentinel:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


DIR = _Sentinel("DIR")  # the path is a directory (marker object or implicit prefix)
MISSING = _Sentinel("MISSING")  # neither a file nor a directory, as of the last look
_RMDIR = _Sentinel("RMDIR")  # (in the change log) the mount removed this directory

Entry = ObjectInfo | _Sentinel

# Changes kept by name per directory; past this the oldest half is forgotten, and a listing
# begun before them can no longer be laid over (it is dropped).
_CHANGE_LOG = 4096


@dataclasses.dataclass
class Listing:
    """One directory's entries: files by entry name, and subdirectory names.

    ``fetched``: when it was asked for (the timer's clock): absence is as of then. ``horizon``:
    None for a whole listing; for a partial one, the last object name or prefix its pages reached.
    ``absences``: False for a page kept for the names it shows only (the bucket's check's, of the
    mount's root): a name it does not show is not known to be absent, and no readdir shows it."""

    files: dict[str, ObjectInfo]
    dirs: set[str]
    fetched: float = 0.0
    horizon: str | None = None
    owner: object = None  # the fill adding pages to a partial listing
    absences: bool = True

    def decides(self, prefix: str, entry: str) -> bool:
        """Does this listing say what ``entry`` is? A partial one only once it has passed
        ``entry/``: a directory of that name, which hides a file, may come up to there."""
        return self.horizon is None or prefix + entry + "/" <= self.horizon

    def copy(self) -> Listing:
        return Listing(dict(self.files), set(self.dirs), self.fetched, self.horizon, absences=self.absences)


def parent_prefix(name: str) -> str:
    """``"a/b/c"`` -> ``"a/b/"``; ``"a/b/"`` -> ``"a/"``; ``"c"`` -> ``""``."""
    stripped = name[:-1] if name.endswith("/") else name
    cut = stripped.rfind("/")
    return stripped[: cut + 1] if cut >= 0 else ""


def _entry(name: str) -> str:
    return name[len(parent_prefix(name)) :]


def _apply(listing: Listing, entry: str, state: Entry) -> None:
    """Lay one of the mount's own changes over a listing."""
    if isinstance(state, ObjectInfo):
        listing.files[entry] = state
    elif state is DIR:
        listing.dirs.add(entry)
    else:
        listing.files.pop(entry, None)
        if state is _RMDIR:
            listing.dirs.discard(entry)


class MetadataCache:
    """TTL caches keyed by object name (files), ``name/`` (directories) and listing prefix.

    Lock: ``_lock`` guards the cachetools containers (they are not thread-safe) and the change
    log. No network call is ever made while it is held, and no other lock is taken under it.
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
        self._timer = timer
        self._enabled = stat_ttl > 0
        self._stats: cachetools.TTLCache = cachetools.TTLCache(maxsize, max(stat_ttl, 1e-9), timer)
        self._missing: cachetools.TTLCache = cachetools.TTLCache(maxsize, max(negative_ttl, 1e-9), timer)
        self._listings: cachetools.TTLCache = cachetools.TTLCache(10_000, max(list_ttl, 1e-9), timer)
        self._partials: cachetools.TTLCache = cachetools.TTLCache(1_000, max(list_ttl, 1e-9), timer)
        self.negative_ttl = negative_ttl
        self.list_ttl = list_ttl
        self._negative_enabled = negative_ttl > 0
        self._listing_enabled = list_ttl > 0
        # How many changes the mount has made in each directory (by listing prefix), and in all
        # of them: a listing or lookup read while one happened may already be out of date.
        self._epochs: dict[str, int] = {}
        self._epoch_all = 0
        # The changes themselves, by prefix: entry -> (its epoch count, what the mount made it).
        self._changes: dict[str, dict[str, tuple[int, Entry]]] = {}
        # By prefix: the epoch count up to which changes can no longer be told by name.
        self._untold: dict[str, int] = {}

    @property
    def keeps_listings(self) -> bool:
        return self._listing_enabled

    def now(self) -> float:
        return self._timer()

    # --- change counters ----------------------------------------------------------------

    def epoch(self, prefix: str) -> tuple[int, int]:
        """A token that changes whenever the mount changes something listed under ``prefix``."""
        with self._lock:
            return self._epoch_all, self._epochs.get(prefix, 0)

    def _bump(self, prefix: str) -> int:  # LOCKS_REQUIRED(_lock)
        count = self._epochs[prefix] = self._epochs.get(prefix, 0) + 1
        return count

    def _log(self, name: str, state: Entry) -> None:  # LOCKS_REQUIRED(_lock)
        """The mount made ``name`` what ``state`` says."""
        prefix, entry = parent_prefix(name), _entry(name)
        count = self._bump(prefix)
        log = self._changes.setdefault(prefix, {})
        log.pop(entry, None)
        log[entry] = (count, state)
        if len(log) > _CHANGE_LOG:
            for old in list(log)[: _CHANGE_LOG // 2]:
                self._untold[prefix] = max(self._untold.get(prefix, 0), log.pop(old)[0])

    def _untell(self, prefix: str) -> None:  # LOCKS_REQUIRED(_lock)
        """Something changed under ``prefix`` that cannot be told by name."""
        self._untold[prefix] = self._bump(prefix)
        self._changes.pop(prefix, None)

    def _changes_since(self, prefix: str, epoch: tuple[int, int] | None) -> dict[str, Entry] | None:
        """The mount's changes under ``prefix`` since ``epoch``, by entry; None if they cannot be
        told by name (then whatever was read before them must be dropped)."""  # LOCKS_REQUIRED(_lock)
        if epoch is None:
            return {}
        if epoch[0] != self._epoch_all or self._untold.get(prefix, 0) > epoch[1]:
            return None
        if self._epochs.get(prefix, 0) == epoch[1]:
            return {}
        return {e: state for e, (count, state) in self._changes.get(prefix, {}).items() if count > epoch[1]}

    def _unchanged(self, name: str, epoch: tuple[int, int] | None) -> bool:  # LOCKS_REQUIRED(_lock)
        changes = self._changes_since(parent_prefix(name), epoch)
        return changes is not None and _entry(name) not in changes

    # --- lookups ----------------------------------------------------------------------

    def lookup(self, name: str, fresh_since: float | None = None) -> Entry | None:
        """What ``name`` is, if known and fresh: an ObjectInfo, DIR, MISSING, or None (unknown).

        A listing that decides the name answers first; its "does not exist" only within
        ``negative_ttl`` of when it was asked for, or when it was asked for at or after
        ``fresh_since`` (the listing a caller waited for)."""
        with self._lock:
            if name:
                prefix, entry = parent_prefix(name), _entry(name)
                for listing in (self._partials.get(prefix), self._listings.get(prefix)):
                    if listing is None or not listing.decides(prefix, entry) or self._too_old(listing):
                        continue
                    if entry in listing.dirs:
                        return DIR
                    found = listing.files.get(entry)
                    if found is not None:
                        return found
                    if self._fresh(listing, fresh_since):
                        return MISSING
                    break  # absent, but too long ago to say so: what else is known, or ask
            info = self._stats.get(name)
            if info is not None:
                return info
            if self._stats.get(name + "/") is DIR:
                return DIR
            if self._missing.get(name) is MISSING:
                return MISSING
        return None

    def _too_old(self, listing: Listing) -> bool:  # LOCKS_REQUIRED(_lock)
        """A page kept for the names it shows only is used for list_ttl from when it was asked
        for (a fill's pages, from when they are kept)."""
        return not listing.absences and self._timer() - listing.fetched >= self.list_ttl

    def _fresh(self, listing: Listing, fresh_since: float | None) -> bool:
        if not listing.absences:
            return False
        if fresh_since is not None and listing.fetched >= fresh_since:
            return True
        return self._negative_enabled and self._timer() - listing.fetched < self.negative_ttl

    def listing(self, prefix: str, names_shown: bool = False) -> Listing | None:
        """A copy of the cached whole listing of ``prefix`` (the cached one changes in place).
        ``names_shown``: one kept for the names it shows only will do (see Listing.absences)."""
        with self._lock:
            listing = self._listings.get(prefix)
            if listing is None or not (listing.absences or names_shown) or self._too_old(listing):
                return None
            return listing.copy()

    def knows_listing(self, prefix: str) -> bool:
        """Is any listing of ``prefix`` kept, whole or partial?"""
        with self._lock:
            return self._listings.get(prefix) is not None or self._partials.get(prefix) is not None

    # --- fills ------------------------------------------------------------------------

    def put_file(self, info: ObjectInfo, epoch: tuple[int, int] | None = None) -> None:
        if not self._enabled:
            return
        with self._lock:
            if self._unchanged(info.name, epoch):
                self._stats[info.name] = info
                self._missing.pop(info.name, None)

    def put_dir(self, name: str, epoch: tuple[int, int] | None = None) -> None:
        if not self._enabled:
            return
        name = name.rstrip("/")
        with self._lock:
            if self._unchanged(name, epoch):
                self._stats[name + "/"] = DIR
                self._missing.pop(name, None)

    def put_missing(self, name: str, epoch: tuple[int, int] | None = None) -> None:
        """``epoch``: :meth:`epoch` of the parent from before the bucket was asked; if the mount
        changed ``name`` since, the answer may be stale and is not kept."""
        if not self._negative_enabled:
            return
        with self._lock:
            if self._unchanged(name, epoch):
                self._missing[name] = MISSING

    def put_page(self, prefix: str, owner: object, first: bool, fetched: float, dirs: Iterable[str],
                 files: Iterable[tuple[str, ObjectInfo]], horizon: str | None,
                 epoch: tuple[int, int], absences: bool = True) -> bool:
        """Keep one page of a listing of ``prefix`` asked for by ``owner`` (a fill) at ``fetched``,
        from ``epoch`` on: the first page starts a partial listing, the last (``horizon`` None)
        makes it whole, replacing the one kept before. The mount's changes since ``epoch`` are
        laid over it (``absences``: see Listing). Returns False if the page is not kept, nor will
        the fill's later ones be: a change that cannot be told by name, or another fill's
        listing took its place."""
        with self._lock:
            changes = self._changes_since(prefix, epoch)
            if changes is None:
                if self._partials.get(prefix) is not None and self._partials[prefix].owner is owner:
                    del self._partials[prefix]
                return False
            if not self._listing_enabled:  # only the stats, for getattr right after readdir
                if self._enabled:
                    for entry, info in files:
                        if entry not in changes:
                            self._stats[info.name] = info
                return True
            partial = self._partials.get(prefix)
            if first:
                partial = self._partials[prefix] = Listing({}, set(), fetched, "", owner, absences)
            elif partial is None or partial.owner is not owner:
                return False
            partial.files.update(files)
            for d in dirs:
                partial.dirs.add(d)
            for d in partial.dirs & partial.files.keys():  # a directory hides a file of its name
                del partial.files[d]
            if horizon is not None:
                partial.horizon = max(partial.horizon or "", horizon)
            for entry, state in changes.items():
                _apply(partial, entry, state)
            if horizon is None:
                del self._partials[prefix]
                partial.horizon, partial.owner = None, None
                self._listings[prefix] = partial
                for d in partial.dirs:  # (no stats of the files: the listing answers for them)
                    self._missing.pop(prefix + d, None)
            return True

    # --- the mount's own changes --------------------------------------------------------

    def _each_listing(self, prefix: str) -> list[Listing]:  # LOCKS_REQUIRED(_lock)
        return [lst for lst in (self._listings.get(prefix), self._partials.get(prefix)) if lst is not None]

    def wrote(self, info: ObjectInfo) -> None:
        """The mount created or changed ``info.name``: update every cache that holds it."""
        self.put_file(info)
        entry = _entry(info.name)
        with self._lock:
            self._log(info.name, info)
            self._missing.pop(info.name, None)
            for listing in self._each_listing(parent_prefix(info.name)):
                listing.files[entry] = info

    def made_dir(self, name: str) -> None:
        """The mount created directory ``name``: it is known to exist, and to be empty."""
        name = name.rstrip("/")
        self.put_dir(name)
        with self._lock:
            self._log(name, DIR)
            if self._listing_enabled:  # so creating files in it asks the bucket nothing
                self._listings[name + "/"] = Listing({}, set(), self._timer())
            for listing in self._each_listing(parent_prefix(name)):
                listing.dirs.add(_entry(name))

    def removed(self, name: str, is_dir: bool = False) -> None:
        """The mount deleted ``name`` (a file, or a directory when ``is_dir``)."""
        name = name.rstrip("/")
        entry = _entry(name)
        with self._lock:
            self._log(name, _RMDIR if is_dir else MISSING)
            if is_dir:
                self._untell(name + "/")
                self._listings.pop(name + "/", None)
                self._partials.pop(name + "/", None)
            self._stats.pop(name, None)
            self._stats.pop(name + "/", None)
            for listing in self._each_listing(parent_prefix(name)):
                _apply(listing, entry, _RMDIR if is_dir else MISSING)
        self.put_missing(name)

    def forget(self, name: str) -> None:
        """Drop what is known of ``name`` (after a surprise such as a failed precondition)."""
        name = name.rstrip("/")
        prefix = parent_prefix(name)
        with self._lock:
            self._untell(prefix)
            self._stats.pop(name, None)
            self._stats.pop(name + "/", None)
            self._missing.pop(name, None)
            self._listings.pop(prefix, None)
            self._partials.pop(prefix, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch_all += 1
            self._stats.clear()
            self._missing.clear()
            self._listings.clear()
            self._partials.clear()
            self._changes.clear()
            self._untold.clear()
