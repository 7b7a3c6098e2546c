"""An open directory's listing for READDIRPLUS, taken as the bucket's pages arrive.

:class:`DirStream` holds one open directory's entries with their attributes packed once (by a
function the FUSE adapter gives it), and says which of them may be out of date by the time a
request pages through them. Nothing here speaks FUSE: :mod:`octuefs.fuse.ops` answers the
kernel's READDIRPLUS requests from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from octuefs.fs.core import FileSystem
from octuefs.fs.posixfs import Attr


class DirStream:
    """One open directory's entries for READDIRPLUS as its listing arrives.

    The first batch (a cached listing whole, or the bucket's first page) is taken in the
    caller's thread; the rest, if any, by a thread of its own, so the next page is on its way
    while the kernel and the program listing work on this one. Entries are ``(name, packed
    struct stat)``, ``.`` and ``..`` first (no attributes): each entry's attributes are packed
    once, however many requests page through them. ``close`` stops the thread after the page
    it is on (the listing is then not cached: it is not whole).
    """

    def __init__(self, fs: FileSystem, path: str, st: Callable[[Attr], bytes]):
        self._fs, self._path, self._st = fs, path, st
        self._epoch = fs.dir_epoch(path)  # before the listing is taken: what it is current as of
        self._batches = fs.readdir_batches(path)
        self._cond = threading.Condition()
        self.entries: list[tuple[str, bytes | None]] = [(".", None), ("..", None)]  # appended to only
        self._done = self._closed = False
        self._error: BaseException | None = None

    def start(self) -> None:
        self._pull()
        if not self._done:
            threading.Thread(target=self._pull_rest, name="octuefs-list", daemon=True).start()

    def _pull(self) -> None:
        batch, more = next(self._batches, ([], False))
        converted = [(name, self._st(attr)) for name, attr in batch]
        with self._cond:
            self.entries.extend(converted)
            self._done = not more
            self._cond.notify_all()

    def _pull_rest(self) -> None:
        try:
            while not self._done and not self._closed:
                self._pull()
        except BaseException as exc:  # for the reader that asks for what did not come
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()

    def upto(self, offset: int) -> list[tuple[str, bytes | None]]:
        """The entries, once there is one at ``offset`` or the listing has ended."""
        with self._cond:
            while len(self.entries) <= offset and not self._done:
                self._cond.wait()
            if len(self.entries) <= offset and self._error is not None:
                raise self._error
            return self.entries

    def stale(self, offset: int) -> frozenset[str] | Everything:
        """The names whose listed attributes may be out of date by now, for a request at
        ``offset``: every name if the mount changed anything under the directory since the
        listing began (a file deleted meanwhile must not come back as the kernel's); else none
        for the first request (it is as fresh as it gets), and for later ones those of files the
        mount has open or pending (a local write moves a size, not the directory)."""
        if self._fs.dir_epoch(self._path) != self._epoch:
            return EVERYTHING
        if offset == 0:
            return frozenset()
        return self._fs.live_names(self._path)

    def close(self) -> None:
        with self._cond:
            self._closed = True  # the thread, if still listing, stops after its page


class Everything:
    """Every name (what :meth:`DirStream.stale` says when the whole listing may be out of date)."""

    def __contains__(self, name: object) -> bool:
        return True


EVERYTHING = Everything()
