"""The metadata caches told of the mount's own writes in one place: a bucket wrapper.

:class:`CachingBucket` wraps the mount's bucket (as gcsfuse's fast-stat bucket wraps its own) and
passes every call through. What a call that changes an object answers is laid over the
:class:`~octuefs.cache.metacache.MetadataCache` at once, so a change made through the mount shows
through it immediately, whoever made it (a close's upload, a setfattr's patch, a rename's copy
and delete, a dataset record, a link, a conflict copy, a give-back):

- an upload, a compose, a copy or a metadata patch that answers: the object is now that version
  (:meth:`~octuefs.cache.metacache.MetadataCache.wrote`);
- a delete that answers: the object is gone (:meth:`~octuefs.cache.metacache.MetadataCache.removed`);
- a precondition failure (412) or a missing object (404) on any of them: the caches believed
  something the bucket does not hold, so what they know of the name (and its directory's
  listing) is forgotten and asked again (:meth:`~octuefs.cache.metacache.MetadataCache.forget`);
- a read of a generation the bucket no longer holds (404): the same, so a reopen finds the new version;
- no answer (a timeout, an outage): nothing changes. The request may or may not have been
  carried out; the caller knows what it tried and decides (forgetting here would make every
  lookup during an outage fail instead of being answered from what is known).

Whoever else must know that the mount changed an object registers in ``on_change`` (called with
the object's name, markers included, once the change answered): write-back keeps GCS's pace of
one change per object per second from it (``Uploader.mutated``).

Two kinds of object are not the caches' business and pass untouched: directory markers (names
ending in ``/``; posixfs.py keeps them, and a marker is not its directory: mkdir and rmdir say
that themselves with ``made_dir`` and ``removed(is_dir=True)``), and parts of composite uploads
(``upload_range``; the composing wrapper sits below this one, so they never reach it anyway).

Only writes teach the caches here; what reads find (stats, listings) is laid in by
:mod:`octuefs.cache.listings`, which knows when it asked and so whether the answer is still news.
The mount's content cache is not told: a patch keeps the content, and where a bucket gives it a
new generation (fake-gcs-server does) the caller carries the cached blocks over, knowing the
version they were cached under.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from octuefs.cache.metacache import MetadataCache
from octuefs.errors import NotFound, PreconditionFailed
from octuefs.storage.base import Bucket, FetchedPage, ListPage
from octuefs.storage.objects import ObjectInfo, RetryPolicy

T = TypeVar("T")


class CachingBucket(Bucket):
    """``inner``, keeping ``metacache`` right after every change made through it (module docstring).

    Attributes it does not define (test hooks such as ``calls`` or ``fail_next``) are the wrapped
    bucket's. Lock: none of its own; the cache's lock is a leaf, taken after the request answered."""

    def __init__(self, inner: Bucket, metacache: MetadataCache,
                 on_change: list[Callable[[str], None]] | None = None):
        self.inner = inner
        self.metacache = metacache
        self.on_change = on_change if on_change is not None else []  # (shared with its views)

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"CachingBucket({self.inner!r})"

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def with_retry(self, retry: RetryPolicy) -> Bucket:
        return CachingBucket(self.inner.with_retry(retry), self.metacache, self.on_change)

    # --- what a change teaches the caches --------------------------------------------------------

    def _changing(self, names: Sequence[str], call: Callable[[], T]) -> T:
        """Run ``call``, a change of ``names``; on a 412 or 404 forget what is known of them."""
        try:
            return call()
        except (PreconditionFailed, NotFound):
            for name in names:
                if not name.endswith("/"):
                    self.metacache.forget(name)
            raise

    def _wrote(self, info: ObjectInfo) -> ObjectInfo:
        if not info.name.endswith("/"):
            self.metacache.wrote(info)
        self._changed(info.name)
        return info

    def _changed(self, name: str) -> None:
        for call in self.on_change:
            call(name)

    # --- writes --------------------------------------------------------------------------------

    def upload_file(self, name: str, path: str, *args, **kwargs) -> ObjectInfo:
        return self._wrote(self._changing([name], lambda: self.inner.upload_file(name, path, *args, **kwargs)))

    def upload_bytes(self, name: str, data: bytes, *args, **kwargs) -> ObjectInfo:
        return self._wrote(self._changing([name], lambda: self.inner.upload_bytes(name, data, *args, **kwargs)))

    def upload_range(self, name: str, path: str, start: int, length: int, **kwargs) -> ObjectInfo:
        return self.inner.upload_range(name, path, start, length, **kwargs)  # a part: no file of the mount

    def patch_metadata(self, name: str, changes: Mapping[str, str | None], *args, **kwargs) -> ObjectInfo:
        return self._wrote(self._changing([name], lambda: self.inner.patch_metadata(name, changes, *args, **kwargs)))

    def copy(self, source: str, destination: str, *args, **kwargs) -> ObjectInfo:
        return self._wrote(self._changing([source, destination],
                                          lambda: self.inner.copy(source, destination, *args, **kwargs)))

    def compose(self, sources: Sequence[str], destination: str, *args, **kwargs) -> ObjectInfo:
        return self._wrote(self._changing([destination], lambda: self.inner.compose(sources, destination, *args,
                                                                                       **kwargs)))

    def delete(self, name: str, *args, **kwargs) -> None:
        self._changing([name], lambda: self.inner.delete(name, *args, **kwargs))
        if not name.endswith("/"):
            self.metacache.removed(name)
        self._changed(name)

    # --- reads: passed through -----------------------------------------------------------------

    def list_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                  max_results: int = 1000) -> ListPage:
        return self.inner.list_page(prefix, delimiter, page_token, max_results)

    def fetch_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                   max_results: int = 1000) -> FetchedPage:
        return self.inner.fetch_page(prefix, delimiter, page_token, max_results)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        return self._reading(name, generation, lambda: self.inner.read_range(name, start, end, generation))

    def read_range_into(self, name: str, start: int, end: int, fd: int, generation: int | None = None,
                        progress: Callable[[int], None] | None = None) -> int:
        return self._reading(name, generation,
                             lambda: self.inner.read_range_into(name, start, end, fd, generation, progress))

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        return self._reading(name, generation, lambda: self.inner.download_to_file(name, path, generation))

    def _reading(self, name: str, generation: int | None, call: Callable[[], T]) -> T:
        """A read of the ``generation`` a listing or stat named: a 404 says the caches believe a
        version the bucket no longer holds (replaced or deleted elsewhere), so what they know of
        the name is forgotten and the next open looks it up (the read itself fails: ESTALE)."""
        try:
            return call()
        except NotFound:
            if generation is not None and not name.endswith("/"):
                self.metacache.forget(name)
            raise
