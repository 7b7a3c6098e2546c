"""Directory fills: one listing per directory, shared by every lookup and readdir that needs it.

A lookup of a name the metadata cache cannot answer lists the name's directory (a *fill*)
instead of asking for the name alone: one request answers every name in the first 1,000
entries, with sizes, generations and metadata, so reading a directory's files by name costs no
request per file beyond its content. At the same time, and only when a fill starts, the first page
of ``name/`` is asked for (a *probe*): if the name is a directory, that page is its listing's
first page, which ``ls`` then reads without a round trip of its own.

The mount root's first page comes from the bucket's check, made before the mount: the names it
shows answer the first lookups at the root (:meth:`DirectoryFills.seed`).

A fill is single-flight per directory: lookups and readdirs that arrive while it runs wait for
its pages instead of sending their own. Its pages are kept as they arrive
(:meth:`MetadataCache.put_page`), so a name is answered once the listing has passed it. A fill
started by lookups lists at most :data:`LOOKUP_PAGES` pages (a directory of a million objects is
not listed to open one file); a lookup waits for at most :data:`LOOKUP_WAIT` pages past the first,
then asks for its name alone (a stat of ``name`` and the probe of ``name/``, in parallel). A
readdir keeps its fill one page ahead of where it reads, to the end.

Threads: each running fill has one (``octuefs-page-fill``); past its first page if one was wanted
(a probe's), over :meth:`Bucket.iter_pages_ahead`.
Lock: ``_cond`` guards every fill's state and ``_fills``; it is taken before the metadata cache's
lock (never the other way round) and never held during a request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from octuefs.cache.metacache import DIR, MISSING, Entry, MetadataCache, parent_prefix
from octuefs.errors import BucketUnreachable, NotFound, PermissionDenied, StorageError
from octuefs.namespace import Namespace
from octuefs.storage.base import Bucket, ListPage, ObjectInfo

log = logging.getLogger(__name__)

LOOKUP_PAGES = 10  # pages a fill lists for lookups alone (10,000 entries)
LOOKUP_WAIT = 2  # pages past the first a lookup waits for before asking for its name alone
STOPPED_KEPT = 32  # fills stopped short kept for a readdir to resume (their pages are in memory)
IDLE = 0.5  # seconds a fill's thread waits for someone to want more pages before it ends
# Entries asked for per page. GCS sends at most 1,000 whatever is asked ("this parameter or 1,000
# items, whichever is smaller"); fake-gcs-server sends what is asked, and the whole listing if
# nothing is (as the google-cloud-storage client asks). A page for lookups alone asks for 1,000,
# GCS's own page, so a lookup's bounds (LOOKUP_PAGES, LOOKUP_WAIT) mean the same everywhere; a
# page that a readdir may read (a probe's, which is the listing's first page, and every page a
# readdir wants) asks for READ_PAGE: on a server that allows it, a directory of that many
# entries is one round trip, as for the client, and a response stays a few MiB.
LOOKUP_PAGE = 1000
READ_PAGE = 5000


def _in_a_page_thread() -> bool:
    """Called (by a test's hook) from a thread fetching pages: waiting for a fill there could
    wait for the very page that thread is fetching."""
    return threading.current_thread().name.startswith("octuefs-page")


class Page:
    """One page of a fill, as entries: ``dirs`` and ``files`` (entry, info), in name order;
    ``horizon`` the last name it reached, None on the last page."""

    __slots__ = ("dirs", "files", "horizon")

    def __init__(self, dirs: list[str], files: list[tuple[str, ObjectInfo]], horizon: str | None):
        self.dirs, self.files, self.horizon = dirs, files, horizon


class _Fill:
    """One listing of ``prefix`` on its way. Guarded by ``DirectoryFills._cond``."""

    def __init__(self, prefix: str, epoch: tuple[int, int], started: float):
        self.prefix, self.epoch, self.started = prefix, epoch, started
        self.pages: list[Page] = []
        self.token: str | None = None  # where the next page starts
        self.done = False  # the last page is in
        self.error: BaseException | None = None
        self.running = False
        self.kept = True  # the metadata cache keeps its pages
        self.exists = False  # an object or prefix came: the directory exists
        self.lookup_want = 0  # pages wanted for lookups (while kept)
        self.reader_want = 0  # pages wanted by readdirs
        self.seen_files: set[str] = set()
        self.probe = False  # started as a probe: its first page may be a readdir's
        self.epoch_of_parent: tuple[int, int] | None = None  # (a probe's: its parent's when it was sent)

    def want(self) -> int:
        return max(self.reader_want, self.lookup_want if self.kept else 0)

    def page_size(self) -> int:
        """Entries to ask for in the next page (see READ_PAGE)."""
        return READ_PAGE if self.reader_want or (self.probe and not self.pages) else LOOKUP_PAGE

    def needs_thread(self) -> bool:
        return not self.running and not self.done and self.error is None and len(self.pages) < self.want()


class DirectoryFills:
    def __init__(self, bucket: Bucket, metacache: MetadataCache, ns: Namespace):
        self.bucket = bucket
        self.metacache = metacache
        self.ns = ns
        self._cond = threading.Condition()
        self._fills: dict[str, _Fill] = {}  # running, or stopped short and resumable
        self._listing_refused = False  # the bucket refused to list (a role without storage.objects.list)
        # Called with (prefix, its marker object or None) from the first page of each listing:
        # a directory's marker comes first in its own listing (posixfs.py keeps its mode there).
        self.on_marker: Callable[[str, ObjectInfo | None], None] | None = None

    # --- lookups --------------------------------------------------------------------------

    def lookup(self, name: str) -> Entry:
        """What ``name`` is, from its directory's listing, or from a stat and a probe."""
        if not self.metacache.keeps_listings or self._listing_refused or _in_a_page_thread():
            return self.ask_alone(name)
        prefix = parent_prefix(name)
        with self._cond:
            fill = self._fills.get(prefix)
            new = fill is None or not self._joinable(fill)
            if new:  # (a fill may have ended since the caller looked)
                known = self.metacache.lookup(name)
                if known is not None:
                    return known
        probe = None
        if new:
            # The probe first: if the name is a directory, its page is the one ``ls`` waits
            # for, and the request sent first takes the connection already open.
            parent_epoch = self.metacache.epoch(prefix)
            probe = self._probe(name + "/")
            if probe is not None:
                probe.epoch_of_parent = parent_epoch
        with self._cond:
            if new:
                fill = self._start(prefix)
            # Its "does not exist" counts as fresh if it began for this lookup or a moment ago
            # (a long readdir's early pages are no fresher than any other listing).
            recent = self.metacache.now() - fill.started < self.metacache.negative_ttl
            fresh_since = fill.started if new or (fill.running and recent) else None
            fill.lookup_want = max(fill.lookup_want, LOOKUP_PAGES)
            self._run_if_needed(fill)
        answer = self._wait_for(name, fill, fresh_since, probe)
        return answer if answer is not None else self.ask_alone(name)

    def _joinable(self, fill: _Fill) -> bool:  # LOCKS_REQUIRED(_cond)
        """Can a lookup wait for ``fill`` rather than start another? While it runs; once stopped
        short (at its bound), names past it are asked for alone, as long as its pages are kept."""
        if fill.error is not None or not fill.kept:
            return False
        return fill.running or self.metacache.now() - fill.started < self.metacache.list_ttl

    def _wait_for(self, name: str, fill: _Fill, fresh_since: float | None, probe: _Fill | None) -> Entry | None:
        """The answer ``fill`` gives for ``name``, waiting for its first page and at most
        LOOKUP_WAIT more; None if it cannot say (past its pages, not kept, refused). DIR at
        once if ``probe`` (of ``name/``) finds something there first."""
        first_seen: int | None = None
        with self._cond:
            while True:
                known = self.metacache.lookup(name, fresh_since=fresh_since)
                if known is not None:
                    return known
                if probe is not None and probe.pages and probe.exists:
                    self.metacache.put_dir(name, probe.epoch_of_parent)
                    return DIR
                if fill.error is not None:
                    if isinstance(fill.error, PermissionDenied):
                        self._listing_refused = True
                        log.warning("the bucket refuses to list %r (%s): names are looked up one by one",
                                    fill.prefix, fill.error)
                        return None
                    raise fill.error
                if not fill.kept or len(fill.pages) >= fill.want() or not self._coming(fill):
                    return None
                if fill.pages and first_seen is None:
                    first_seen = len(fill.pages)
                if first_seen is not None and len(fill.pages) - first_seen >= LOOKUP_WAIT:
                    return None
                self._cond.wait()

    def ask_alone(self, name: str) -> Entry:
        """``name`` asked for by itself: a stat of it and the first page of ``name/``, in
        parallel. A directory hides a file of its name (as in a listing)."""
        epoch = self.metacache.epoch(parent_prefix(name))
        probe = self._probe(name + "/") if not _in_a_page_thread() else None
        try:
            info: ObjectInfo | None = self.bucket.stat(name)
        except NotFound:
            info = None
        try:
            is_dir = self._exists(probe, name + "/")
        except StorageError:
            if info is None:
                raise
            is_dir = False  # (a bucket refusing listings: the file, as a stat alone would say)
        if is_dir:
            self.metacache.put_dir(name, epoch)
            return DIR
        if info is not None:
            self.metacache.put_file(info, epoch)
            return info
        self.metacache.put_missing(name, epoch)
        return MISSING

    def _exists(self, fill: _Fill | None, prefix: str) -> bool:
        """Whether ``prefix`` exists (has an object or a prefix under it): once the first page
        of ``fill`` is in; without one, from a listing kept, or a page of one entry."""
        if fill is None:
            if self.metacache.knows_listing(prefix):
                return True  # (only listings of directories that exist are kept)
            page = self.bucket.list_page(prefix, "/", max_results=1)
            return bool(page.objects or page.prefixes)
        with self._cond:
            while not fill.pages and self._coming(fill):
                self._cond.wait()
            if not fill.pages:
                raise fill.error or BucketUnreachable(f"listing {fill.prefix!r} stopped")
            return fill.exists

    def _probe(self, prefix: str) -> _Fill | None:
        """Start listing ``prefix`` (one page), unless it is being listed: the fill to ask
        whether it exists, or None if a listing of it is kept (it does)."""
        if self.metacache.knows_listing(prefix):
            return None
        with self._cond:
            fill = self._fills.get(prefix)
            if fill is None or fill.error is not None or not (
                    fill.running or self.metacache.now() - fill.started < self.metacache.negative_ttl):
                fill = self._start(prefix)
                fill.probe = True
            fill.lookup_want = max(fill.lookup_want, 1)
            self._run_if_needed(fill)
            return fill

    # --- readdir --------------------------------------------------------------------------

    def pages(self, prefix: str) -> Iterator[Page]:
        """The pages of a listing of ``prefix``, in order, the last with ``horizon`` None: those
        of a fill under way if the mount changed nothing there since it began, else a new one.
        The fill is kept one page ahead of the reader; closing the iterator lets it stop."""
        whole = None
        with self._cond:
            fill = self._fills.get(prefix)
            if fill is None or fill.error is not None or fill.epoch != self.metacache.epoch(prefix) or \
                    self.metacache.now() - fill.started >= self.metacache.list_ttl:
                whole = self.metacache.listing(prefix)  # (a fill may have ended since the caller looked)
                if whole is None:
                    fill = self._start(prefix)
        if whole is not None:
            yield Page(sorted(whole.dirs), sorted(whole.files.items()), None)
            return
        i = 0
        while True:
            with self._cond:
                fill.reader_want = max(fill.reader_want, i + 2)
                self._run_if_needed(fill)
                while len(fill.pages) <= i and self._coming(fill):
                    self._cond.wait()
                if len(fill.pages) <= i:
                    raise fill.error or BucketUnreachable(f"listing {prefix!r} stopped")
                page = fill.pages[i]
            yield page
            if page.horizon is None:
                return
            i += 1

    # --- the mount root's first page, from the bucket's check ---------------------------------

    def seed(self, page: ListPage, sent: float, epoch: tuple[int, int]) -> bool:
        """Keep ``page``, the first page of the mount root's listing, which the bucket's check
        listed (``storage.open_checked``) at ``sent`` (on the metadata cache's clock), from
        ``epoch`` on (the root's, from before the mount could change anything: its changes since
        are laid over it), for the names it shows only (``Listing.absences`` False): they
        answer the first lookups at the root with no request, for list_ttl as any listing's
        (nothing is kept if that has passed since ``sent``), and give the prefetcher the root's
        order; its subdirectories' markers (and a prefix's own) are seen as a listing's are. A
        name it does not show is looked up, and ``ls`` lists, as on a mount without it (an
        object uploaded elsewhere right after mounting shows at once). With more after it, it
        decides the names up to its horizon, as a partial listing does. Whether it was kept."""
        prefix = self.ns.prefix
        if not self.metacache.keeps_listings or self.metacache.now() - sent >= self.metacache.list_ttl:
            return False
        owner = _Fill(prefix, epoch, sent)  # (no fill goes on from it: a fill's first page replaces it)
        converted = self._convert(owner, page)
        return self.metacache.put_page(prefix, owner, True, sent, converted.dirs, converted.files, converted.horizon,
                                       epoch, absences=False)

    # --- the fills themselves ----------------------------------------------------------------

    def settle(self, timeout: float) -> bool:
        """Wait until no fill runs (their requests answered and kept); whether none does."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(f.running for f in self._fills.values()), timeout)

    def _start(self, prefix: str) -> _Fill:  # LOCKS_REQUIRED(_cond)
        fill = _Fill(prefix, self.metacache.epoch(prefix), self.metacache.now())
        self._fills.pop(prefix, None)
        self._fills[prefix] = fill
        stopped = [p for p, f in self._fills.items() if not f.running]
        if len(stopped) > STOPPED_KEPT:  # forget the oldest (their listings may stay in the cache)
            for old in stopped[: len(stopped) - STOPPED_KEPT // 2]:
                del self._fills[old]
        return fill

    def _coming(self, fill: _Fill) -> bool:  # LOCKS_REQUIRED(_cond)
        """Will another page of ``fill`` come (a waiter's condition)? Its thread runs, or is
        started again here if it ended (idle) just as more was wanted."""
        if fill.error is not None or fill.done:
            return False
        if fill.needs_thread():
            self._run_if_needed(fill)
        return fill.running

    def _run_if_needed(self, fill: _Fill) -> None:  # LOCKS_REQUIRED(_cond)
        if fill.needs_thread():
            fill.running = True
            threading.Thread(target=self._run, args=(fill,), name="octuefs-page-fill", daemon=True).start()
        else:
            self._cond.notify_all()  # (a thread waiting for more to be wanted)

    def _pages(self, fill: _Fill) -> Iterator[ListPage]:
        """The pages from where ``fill`` stands. One wanted (a probe's): asked for here, since a
        thread fetching the next one ahead would start for nothing; more: over
        :meth:`Bucket.iter_pages_ahead`, each asked for as soon as the one before answers."""
        token = fill.token
        with self._cond:
            one = fill.want() - len(fill.pages) <= 1
            size = fill.page_size()
        if one:
            page = self.bucket.list_page(fill.prefix, "/", page_token=token, max_results=size)
            yield page
            if not page.next_token:
                return
            token = page.next_token
            with self._cond:
                size = fill.page_size()
        ahead = self.bucket.iter_pages_ahead(fill.prefix, "/", max_results=size, depth=1, page_token=token)
        try:
            yield from ahead
        finally:
            ahead.close()

    def _run(self, fill: _Fill) -> None:
        pages = self._pages(fill)
        try:
            for page in pages:
                converted = self._convert(fill, page)
                with self._cond:
                    self._keep(fill, page, converted)
                    self._cond.notify_all()
                    if fill.done:
                        return
                    if not self._wait_for_want(fill):
                        return
        except BaseException as exc:  # for the waiters
            with self._cond:
                fill.error = exc
                log.debug("listing %r failed: %s", fill.prefix, exc)
        finally:
            pages.close()
            with self._cond:
                fill.running = False
                if (fill.done or fill.error is not None) and self._fills.get(fill.prefix) is fill:
                    del self._fills[fill.prefix]
                self._cond.notify_all()

    def _wait_for_want(self, fill: _Fill) -> bool:  # LOCKS_REQUIRED(_cond)
        """Whether to go on to the next page: at once if it is wanted, else once it is (for a
        while: then the thread ends, and one is started again if more are wanted)."""
        if len(fill.pages) < fill.want():
            return True
        self._cond.wait_for(lambda: len(fill.pages) < fill.want(), timeout=IDLE)
        return len(fill.pages) < fill.want()

    def _keep(self, fill: _Fill, page: ListPage, converted: Page) -> None:  # LOCKS_REQUIRED(_cond)
        first = not fill.pages
        log.debug("listing %r: page %d (%d entries) at %.3fs", fill.prefix, len(fill.pages) + 1,
                  len(converted.dirs) + len(converted.files), self.metacache.now() - fill.started)
        fill.pages.append(converted)
        fill.token = page.next_token
        fill.done = page.next_token is None
        fill.exists = fill.exists or bool(page.objects or page.prefixes)
        # Only listings of directories that exist are kept (the mount's root always does).
        fill.exists = fill.exists or fill.prefix == self.ns.prefix
        if fill.kept:
            fill.kept = fill.exists and self.metacache.put_page(
                fill.prefix, fill, first, fill.started, converted.dirs, converted.files, converted.horizon, fill.epoch)

    def _convert(self, fill: _Fill, page: ListPage) -> Page:
        prefix = fill.prefix
        if not fill.pages and self.on_marker is not None and (page.objects or page.prefixes):
            first = page.objects[0] if page.objects else None
            self.on_marker(prefix, first if first is not None and first.name == prefix else None)
        if page.markers and self.on_marker is not None:  # (its subdirectories' markers, with the listing)
            for sub, marker in page.markers.items():
                self.on_marker(sub, marker)
        dirs = [e for e in (self.ns.entry_name(prefix, d) for d in page.prefixes) if e is not None]
        files = []
        for info in page.objects:
            entry = self.ns.entry_name(prefix, info.name)
            if entry is not None and not info.is_dir_marker:
                files.append((entry, info))
        seen = fill.seen_files  # (only the fill's one thread touches it)
        seen.update(e for e, _ in files)
        for d in dirs:
            if d in seen:
                self.ns.warn_once(prefix + d, "a directory of the same name, which hides it")
        horizon = None
        if page.next_token:
            horizon = max(page.objects[-1].name if page.objects else "", page.prefixes[-1] if page.prefixes else "")
        return Page(dirs, files, horizon)
