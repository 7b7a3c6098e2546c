"""A bucket for calls someone is waiting on: each call ends within a deadline, retries included.

:class:`BoundedBucket` wraps any :class:`~octuefs.storage.base.Bucket`. Every call on it runs
under :func:`octuefs.storage.retry.bounded`: its retry loops stop once ``deadline`` seconds have
passed since the call began (counting the requests it makes itself, such as the stat after a
range of an empty object), and each attempt waits for an answer at most a third of the deadline,
cut to the time left. When the time is up the call raises
:class:`~octuefs.errors.BucketUnreachable`, whose message says what failed and what was being done.

The filesystem core serves FUSE requests through such a view (``--op-timeout``); background
uploads use the bucket itself, whose retries are the uploader's to bound (never).

Everything else (attributes, test hooks such as ``calls`` or ``fail_next``) is the wrapped
bucket's, looked up on it at each use, so the two share objects, connections and counters.
"""

from __future__ import annotations

from collections.abc import Mapping

from octuefs.storage.base import Bucket, ListPage, ObjectInfo
from octuefs.storage.retry import bounded


class BoundedBucket(Bucket):
    def __init__(self, bucket: Bucket, deadline: float):
        if deadline <= 0:
            raise ValueError("a bounded bucket needs a deadline > 0")
        self.inner = bucket
        self.deadline = deadline
        self.name = bucket.name

    def __repr__(self) -> str:
        return f"BoundedBucket({self.inner!r}, {self.deadline}s)"

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def list_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                  max_results: int = 1000) -> ListPage:
        with bounded(self.deadline):
            return self.inner.list_page(prefix, delimiter, page_token, max_results)

    def stat(self, name: str) -> ObjectInfo:
        with bounded(self.deadline):
            return self.inner.stat(name)

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        with bounded(self.deadline):
            return self.inner.read_range(name, start, end, generation)

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        with bounded(self.deadline):
            return self.inner.download_to_file(name, path, generation)

    def upload_file(self, name: str, path: str, metadata: Mapping[str, str], if_generation_match: int | None = None,
                    content_type: str | None = None, **kwargs) -> ObjectInfo:
        with bounded(self.deadline):
            return self.inner.upload_file(name, path, metadata, if_generation_match, content_type, **kwargs)

    def upload_bytes(self, name: str, data: bytes, metadata: Mapping[str, str] | None = None,
                     if_generation_match: int | None = None, content_type: str | None = None) -> ObjectInfo:
        with bounded(self.deadline):
            return self.inner.upload_bytes(name, data, metadata, if_generation_match, content_type)

    def patch_metadata(self, name: str, changes: Mapping[str, str | None], if_metageneration_match: int | None = None,
                       if_generation_match: int | None = None, content_type: str | None = None) -> ObjectInfo:
        with bounded(self.deadline):
            return self.inner.patch_metadata(name, changes, if_metageneration_match, if_generation_match, content_type)

    def copy(self, source: str, destination: str, if_source_generation_match: int | None = None,
             if_generation_match: int | None = None) -> ObjectInfo:
        with bounded(self.deadline):
            return self.inner.copy(source, destination, if_source_generation_match, if_generation_match)

    def delete(self, name: str, if_generation_match: int | None = None) -> None:
        with bounded(self.deadline):
            self.inner.delete(name, if_generation_match)
