"""What the Bucket protocol (:mod:`octuefs.storage.base`) speaks in: an object's facts
(:class:`ObjectInfo`), a page of a listing, a retry policy, and the bucket's names and limits.

Plain values with no behaviour of their own, so every storage module (the protocol, the retry
loop, the transports, the fake) can import them without importing one another.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import mimetypes
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from octuefs.errors import StorageError

DEFAULT_CONTENT_TYPE = "application/octet-stream"


def guess_content_type(name: str) -> str:
    """The content type an upload gets when the caller names none: from the object name's
    extension (``a.csv`` -> ``text/csv``), else ``application/octet-stream``."""
    return mimetypes.guess_type(name, strict=False)[0] or DEFAULT_CONTENT_TYPE


# Where composite uploads (octuefs/writeback/composite.py) keep the parts of a large upload while
# they compose them (in the object's directory); a mount and a Dataset listing hide it.
PARTS_PREFIX = ".octuefs-parts/"
# Every part's name ends so, for a bucket lifecycle rule (matchesSuffix) to delete the parts that
# no mount is left to sweep (README: "Large files").
PART_SUFFIX = ".octuefs-part"
MAX_COMPOSE_SOURCES = 32  # GCS composes at most 32 objects in one request
MAX_OBJECT_SIZE = 5 * 1024**4  # GCS keeps objects of up to 5 TiB


class ChecksumMismatch(StorageError):
    """What the bucket stored is not what was sent (a composed object whose CRC32C is not the
    file's): the upload did not happen as asked, and must not count as done. ``generation`` is
    the object's generation holding the wrong bytes, if one was made."""

    def __init__(self, message: str, generation: int | None = None):
        super().__init__(message)
        self.generation = generation


def check_sources(sources: Sequence[str]) -> list[str]:
    """The sources of a compose as a list, or ``ValueError`` if there are none or too many."""
    if isinstance(sources, str):
        raise ValueError("compose takes a sequence of source names, not one string")
    sources = list(sources)
    if not 1 <= len(sources) <= MAX_COMPOSE_SOURCES:
        raise ValueError(f"a compose takes 1 to {MAX_COMPOSE_SOURCES} sources, not {len(sources)}")
    return sources


NO_METADATA: Mapping[str, str] = MappingProxyType({})  # an object's metadata when it has none


class _ObjectFields(NamedTuple):
    name: str
    size: int
    generation: int
    metageneration: int
    updated: dt.datetime  # timezone-aware UTC
    crc32c: str | None = None  # base64, as GCS reports it
    md5: str | None = None  # base64, as GCS reports it
    content_type: str | None = None
    storage_class: str | None = None
    metadata: Mapping[str, str] = NO_METADATA  # read-only


class ObjectInfo(_ObjectFields):
    """What the bucket says about one object (from a stat, a listing, or a write's response).

    Immutable: every change in the bucket yields a new one, so a memo may be kept on it. A
    named tuple rather than a frozen dataclass because listings make thousands at a time, and
    it is made in a third of the time."""

    def __new__(cls, name: str, size: int, generation: int, metageneration: int, updated: dt.datetime,
                crc32c: str | None = None, md5: str | None = None, content_type: str | None = None,
                storage_class: str | None = None, metadata: Mapping[str, str] | None = NO_METADATA) -> ObjectInfo:
        if type(metadata) is not MappingProxyType:
            metadata = MappingProxyType(dict(metadata or {}))
        return tuple.__new__(cls, (name, size, generation, metageneration, updated, crc32c, md5, content_type,
                                   storage_class, metadata))

    def _replace(self, **changes) -> ObjectInfo:  # through __new__, so metadata stays read-only
        return ObjectInfo(**{**self._asdict(), **changes})

    @classmethod
    def _make(cls, iterable) -> ObjectInfo:
        return cls(*iterable)

    @property
    def is_dir_marker(self) -> bool:
        return self.name.endswith("/")


@dataclasses.dataclass(frozen=True)
class ListPage:
    """One page of a listing: objects in name order, then the common prefixes (``dir/``).

    ``markers``: with a delimiter, each prefix's own marker object (``dir/``, which holds a
    directory's POSIX facts), or None where it has none; the markers are not in ``objects``.
    GCS sends them with the listing when asked (``includeTrailingDelimiter``), so a directory's
    subdirectories cost no request each. None: the implementation does not say."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    next_token: str | None
    markers: dict[str, ObjectInfo | None] | None = None


@dataclasses.dataclass(frozen=True)
class SentPage:
    """A page of the listing of ``prefix`` (delimiter ``/``, no page token) and when its request
    was sent, on ``time.monotonic()``'s clock: the page shows the bucket as it was then or later.
    :meth:`GCSBucket.check <octuefs.storage.gcs.GCSBucket.check>` returns the one it lists, for
    the mount to keep as its root's first page."""

    prefix: str
    page: ListPage
    sent: float


@dataclasses.dataclass(frozen=True)
class FetchedPage:
    """A page of a listing as the server sent it: the token of the next page is known at once,
    the entries are made into a :class:`ListPage` by ``convert`` (which may raise
    ``StorageError`` for a malformed page). Decoding and converting a page of 1,000 objects
    costs about as much CPU as asking for it, so :meth:`Bucket.iter_pages_ahead` sends the next
    request first. ``next_token`` may be read off the undecoded answer, a guess: the converted
    page's ``next_token`` is the truth."""

    next_token: str | None
    convert: Callable[[], ListPage]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient failures, bounded in total time."""

    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    deadline: float = 30.0  # total seconds spent retrying one call before giving up
