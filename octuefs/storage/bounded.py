"""A bucket for calls someone is waiting on: each call ends within a deadline, retries included.

:class:`BoundedBucket` wraps any :class:`~octuefs.storage.base.Bucket`. Every call on it runs
under :func:`octuefs.storage.retry.bounded`: its retry loops stop once ``deadline`` seconds have
passed since the call began (counting the requests it makes itself, such as the stat after a
range of an empty object), and each attempt waits for an answer at most a third of the deadline,
cut to the time left. When the time is up the call raises
:class:`~octuefs.errors.BucketUnreachable`, whose message says what failed and what was being done.

Once a call has found the bucket unreachable, the calls after it make one attempt each (still
waiting a third of the deadline for it) until one gets an answer, of any kind: during an outage
each call fails sooner, so callers queued behind one another (the kernel serialises creates in
one directory) are not each kept for the whole deadline.

The filesystem core serves FUSE requests through such a view (``--op-timeout``); background
uploads use the bucket itself, whose retries are the uploader's to bound (never).

Everything else (attributes, test hooks such as ``calls`` or ``fail_next``) is the wrapped
bucket's, looked up on it at each use, so the two share objects, connections and counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from octuefs.errors import BucketUnreachable
from octuefs.storage.base import Bucket, FetchedPage, ListPage, ObjectInfo
from octuefs.storage.retry import attempt_timeout, bounded, current_bound

T = TypeVar("T")


class BoundedBucket(Bucket):
    """``_down_since`` (monotonic seconds, or None) is written whole by any thread; a stale
    read only changes how many attempts one call makes."""

    def __init__(self, bucket: Bucket, deadline: float):
        if deadline <= 0:
            raise ValueError("a bounded bucket needs a deadline > 0")
        self.inner = bucket
        self.deadline = deadline
        self.name = bucket.name
        self._down_since: float | None = None  # when the call that found the bucket unreachable began

    def __repr__(self) -> str:
        return f"BoundedBucket({self.inner!r}, {self.deadline}s)"

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def _run(self, fn: Callable[[], T]) -> T:
        if current_bound() is not None:  # inside another bounded call: its budget holds
            return fn()
        down = self._down_since
        started = time.monotonic()
        per_attempt = attempt_timeout(self.deadline)
        try:
            with bounded(per_attempt if down is not None else self.deadline, per_attempt):
                result = fn()
        except BucketUnreachable as exc:
            if down is None:
                self._down_since = started
                raise
            raise BucketUnreachable(f"{exc}; unreachable for {time.monotonic() - down:.0f}s, so one attempt "
                                    "per call until it answers") from exc
        except BaseException:
            self._down_since = None  # an answer, if not the one hoped for
            raise
        self._down_since = None
        return result

    def list_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                  max_results: int = 1000) -> ListPage:
        return self._run(lambda: self.inner.list_page(prefix, delimiter, page_token, max_results))

    def fetch_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                   max_results: int = 1000) -> FetchedPage:
        return self._run(lambda: self.inner.fetch_page(prefix, delimiter, page_token, max_results))

    def stat(self, name: str) -> ObjectInfo:
        return self._run(lambda: self.inner.stat(name))

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        return self._run(lambda: self.inner.read_range(name, start, end, generation))

    def read_range_into(self, name: str, start: int, end: int, fd: int, generation: int | None = None,
                        progress: Callable[[int], None] | None = None) -> int:
        return self._run(lambda: self.inner.read_range_into(name, start, end, fd, generation, progress))

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        return self._run(lambda: self.inner.download_to_file(name, path, generation))

    def upload_file(self, name: str, path: str, metadata: Mapping[str, str], if_generation_match: int | None = None,
                    content_type: str | None = None, **kwargs) -> ObjectInfo:
        return self._run(lambda: self.inner.upload_file(name, path, metadata, if_generation_match, content_type,
                                                        **kwargs))

    def upload_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None,
                     if_generation_match: int | None = None, content_type: str | None = None, *,
                     if_metageneration_match: int | None = None) -> ObjectInfo:
        return self._run(lambda: self.inner.upload_bytes(name, data, metadata, if_generation_match, content_type,
                                                         if_metageneration_match=if_metageneration_match))

    def patch_metadata(self, name: str, changes: Mapping[str, str | None], if_metageneration_match: int | None = None,
                       if_generation_match: int | None = None, content_type: str | None = None) -> ObjectInfo:
        return self._run(lambda: self.inner.patch_metadata(name, changes, if_metageneration_match,
                                                           if_generation_match, content_type))

    def copy(self, source: str, destination: str, if_source_generation_match: int | None = None,
             if_generation_match: int | None = None, *, if_metageneration_match: int | None = None,
             if_source_metageneration_match: int | None = None) -> ObjectInfo:
        return self._run(lambda: self.inner.copy(source, destination, if_source_generation_match, if_generation_match,
                                                 if_metageneration_match=if_metageneration_match,
                                                 if_source_metageneration_match=if_source_metageneration_match))

    def compose(self, sources: Sequence[str], destination: str, metadata: Mapping[str, str] | None = None,
                content_type: str | None = None, if_generation_match: int | None = None,
                if_metageneration_match: int | None = None) -> ObjectInfo:
        return self._run(lambda: self.inner.compose(sources, destination, metadata, content_type, if_generation_match,
                                                    if_metageneration_match))

    def delete(self, name: str, if_generation_match: int | None = None, *,
               if_metageneration_match: int | None = None) -> None:
        self._run(lambda: self.inner.delete(name, if_generation_match, if_metageneration_match=if_metageneration_match))
