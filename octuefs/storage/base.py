"""The Bucket protocol: what octuefs needs from an object store, and what each call promises.

Every implementation (``gcs.GCSBucket`` for real GCS or an emulator, ``fake.FakeBucket`` in
memory) honours the same contract, checked by ``tests/contract``:

* Object names are plain ``str`` (GCS names are UTF-8). A "directory marker" is an object
  whose name ends in ``/``.
* Every object has a ``generation`` (changes whenever the content is replaced) and a
  ``metageneration`` (counts metadata changes of one generation). Code must not assume which
  of the two moves on a metadata patch: fake-gcs-server moves the generation, GCS the
  metageneration. Use the :class:`ObjectInfo` a call returns as the new truth.
* Preconditions: ``if_generation_match=0`` means "only if the object does not exist";
  ``if_metageneration_match=m`` means "only if the live object's metageneration is ``m``" (so
  an absent object fails it); a mismatch raises :class:`~octuefs.errors.PreconditionFailed`
  and changes nothing. Preconditions are judged when the request takes effect, as GCS does.
* Errors are only octuefs's own (:mod:`octuefs.errors`): ``NotFound``, ``BucketNotFound``,
  ``PreconditionFailed``, ``PermissionDenied``, ``TransientError``, ``RangeNotSatisfiable``.
  Transient failures are retried inside the implementation (exponential backoff, bounded
  total time, see :class:`RetryPolicy`) before ``TransientError`` reaches the caller, as a
  ``BucketUnreachable`` saying what failed and for how long. :meth:`Bucket.bounded` gives a view
  whose every call ends within a short deadline, for callers someone is waiting on.
* All methods are safe to call from many threads at once.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from octuefs.errors import StorageError

def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``os.pwrite`` until all of ``data`` is written."""
    written = os.pwrite(fd, data, offset)
    if written < len(data):
        view = memoryview(data)
        while written < len(data):
            written += os.pwrite(fd, view[written:], offset + written)


# Where an implementation may keep the parts of a large upload while it composes them (in the
# object's directory); a mount hides it.
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


_NO_METADATA: Mapping[str, str] = MappingProxyType({})


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
    metadata: Mapping[str, str] = _NO_METADATA  # read-only


class ObjectInfo(_ObjectFields):
    """What the bucket says about one object (from a stat, a listing, or a write's response).

    Immutable: every change in the bucket yields a new one, so a memo may be kept on it. A
    named tuple rather than a frozen dataclass because listings make thousands at a time, and
    it is made in a third of the time."""

    def __new__(cls, name: str, size: int, generation: int, metageneration: int, updated: dt.datetime,
                crc32c: str | None = None, md5: str | None = None, content_type: str | None = None,
                storage_class: str | None = None, metadata: Mapping[str, str] | None = _NO_METADATA) -> ObjectInfo:
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


class Bucket(abc.ABC):
    """An object store bucket. See the module docstring for the contract."""

    name: str

    def bounded(self, deadline: float) -> Bucket:
        """This bucket for calls someone is waiting on: each call, retries included, ends within
        about ``deadline`` seconds or raises BucketUnreachable (see :mod:`octuefs.storage.bounded`)."""
        from octuefs.storage.bounded import BoundedBucket

        return BoundedBucket(self, deadline)

    @abc.abstractmethod
    def list_page(
        self,
        prefix: str = "",
        delimiter: str | None = "/",
        page_token: str | None = None,
        max_results: int = 1000,
    ) -> ListPage:
        """One page of the objects whose names start with ``prefix``, in lexicographic order.

        With a delimiter, names that continue past the next delimiter after the prefix are
        rolled up into ``prefixes`` (each ending in the delimiter, each listed once across all
        pages). ``max_results`` bounds the number of objects plus prefixes in a page (GCS counts
        both; an implementation may return fewer). Each ObjectInfo carries size, generations,
        updated time, hashes and custom metadata, so no per-object stat is needed.
        """

    def fetch_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                   max_results: int = 1000) -> FetchedPage:
        """:meth:`list_page`, its entries left to convert (see :class:`FetchedPage`)."""
        page = self.list_page(prefix, delimiter, page_token, max_results)
        return FetchedPage(page.next_token, lambda: page)

    def list_all(self, prefix: str = "", delimiter: str | None = "/") -> tuple[list[ObjectInfo], list[str]]:
        """Every page of a listing, concatenated: ``(objects, prefixes)``."""
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        for page in self.iter_pages(prefix, delimiter):
            objects.extend(page.objects)
            prefixes.extend(page.prefixes)
        return objects, prefixes

    def iter_pages(self, prefix: str = "", delimiter: str | None = "/", max_results: int = 1000) -> Iterator[ListPage]:
        token: str | None = None
        while True:
            page = self.list_page(prefix, delimiter, token, max_results)
            yield page
            token = page.next_token
            if not token:
                return

    def iter_pages_ahead(self, prefix: str = "", delimiter: str | None = "/", max_results: int = 1000,
                         depth: int = 2, page_token: str | None = None) -> Iterator[ListPage]:
        """:meth:`iter_pages` with the requests sent by a thread of its own, each as soon as the
        one before has answered (page tokens allow no more overlap than that), while the caller
        converts and uses the pages before: at most ``depth`` pages wait for the caller. An
        error reaches the caller after the pages before it. Closing the iterator stops the
        thread once the request in flight has answered.

        A page's token as :meth:`fetch_page` announces it may be a guess: where the converted
        page says otherwise, what was fetched with the guess is dropped and the listing goes on
        from the page's own token. ``page_token``: where to start (a listing resumed)."""
        token = page_token
        while True:
            ahead = _PagesAhead(self, prefix, delimiter, max_results, depth, token)
            try:
                while True:
                    fetched = ahead.take()
                    page = fetched.convert()
                    yield page
                    if not page.next_token:
                        return
                    if page.next_token != fetched.next_token:
                        token = page.next_token
                        break
            finally:
                ahead.stop()

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo:
        """The current ObjectInfo of ``name``; ``NotFound`` if there is none."""

    @abc.abstractmethod
    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (fewer if the object is shorter).

        With ``generation``, read exactly that generation: ``NotFound`` if it is no longer the
        live one (so a reader never mixes bytes of two versions). ``start`` at or past the end
        of a non-empty object raises ``RangeNotSatisfiable``; an empty range returns ``b""``.
        """

    def read_range_into(self, name: str, start: int, end: int, fd: int, generation: int | None = None,
                        progress: Callable[[int], None] | None = None) -> int:
        """:meth:`read_range`, written into the file ``fd`` at offset ``start``; the number of bytes.

        Implementations may stream, writing as the bytes arrive (a failed call may have written
        part of the range). ``progress(upto)``, if given, is called each time bytes
        ``[start, upto)`` are in ``fd``; a retried request may write part of the range again
        (the same bytes, when pinned to a ``generation``), so ``upto`` may repeat or go back.
        An ``OSError`` from writing to ``fd`` (or an error from ``progress``) is raised as it is.
        """
        data = self.read_range(name, start, end, generation)
        pwrite_all(fd, data, start)
        if progress is not None and data:
            progress(start + len(data))
        return len(data)

    def keep_parts_in(self, directory: str) -> None:
        """Where to note the parts of large uploads until they are deleted (for implementations
        that upload in parts; see :meth:`sweep_parts`)."""

    def sweep_parts(self) -> int:
        """Delete parts of large uploads that earlier ones left behind; how many objects."""
        return 0

    @abc.abstractmethod
    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        """Write the whole object to the local file ``path`` (replacing it); return its info."""

    @abc.abstractmethod
    def upload_file(
        self,
        name: str,
        path: str,
        metadata: Mapping[str, str],
        if_generation_match: int | None = None,
        content_type: str | None = None,
        *,
        progress: Callable[[], None] | None = None,
        if_metageneration_match: int | None = None,
    ) -> ObjectInfo:
        """Create or replace the object from a local file, with its custom metadata, in ONE request.

        ``metadata`` becomes the object's whole custom metadata. ``if_generation_match`` is the
        generation being replaced (0: must not exist yet); ``if_metageneration_match`` the
        metageneration it must still have (so a metadata change made elsewhere since it was
        read is not overwritten; an absent object fails it). A mismatch of either raises
        ``PreconditionFailed`` and leaves the object as it was. The new generation starts at
        metageneration 1. ``progress`` is called whenever a part of the file is read to be
        sent (a sign that the upload is moving).
        """

    def upload_bytes(
        self,
        name: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        if_generation_match: int | None = None,
        content_type: str | None = None,
        *,
        if_metageneration_match: int | None = None,
    ) -> ObjectInfo:
        """Like :meth:`upload_file`, from memory (small objects, markers, tests)."""
        import tempfile

        fd, path = tempfile.mkstemp(prefix="octuefs-upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.upload_file(name, path, metadata or {}, if_generation_match, content_type,
                                    if_metageneration_match=if_metageneration_match)
        finally:
            os.unlink(path)

    @abc.abstractmethod
    def patch_metadata(
        self,
        name: str,
        changes: Mapping[str, str | None],
        if_metageneration_match: int | None = None,
        if_generation_match: int | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        """Change custom metadata keys without touching the content (one PATCH request).

        Keys mapped to a string are set, keys mapped to ``None`` are removed (fake-gcs-server
        stores ``""`` instead; readers treat an empty Octue value as absent), other keys are
        kept. Returns the object's info after the change, read back if the response lacks it.
        """

    @abc.abstractmethod
    def copy(
        self,
        source: str,
        destination: str,
        if_source_generation_match: int | None = None,
        if_generation_match: int | None = None,
        *,
        if_metageneration_match: int | None = None,
        if_source_metageneration_match: int | None = None,
    ) -> ObjectInfo:
        """Server-side copy, keeping content, content type and all custom metadata.

        Preconditions as GCS's rewrite: on the destination (``if_generation_match``,
        ``if_metageneration_match``: a metageneration precondition on an absent destination
        fails) and on the source (``if_source_generation_match``,
        ``if_source_metageneration_match``); any that does not hold: PreconditionFailed, nothing
        copied."""

    @abc.abstractmethod
    def compose(
        self,
        sources: Sequence[str],
        destination: str,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        if_generation_match: int | None = None,
        if_metageneration_match: int | None = None,
    ) -> ObjectInfo:
        """Make ``destination`` the concatenation of ``sources`` (live generations, in order),
        server-side, in ONE request, with ``metadata`` as its whole custom metadata and
        ``content_type`` (default: guessed from the name).

        At most :data:`MAX_COMPOSE_SOURCES` sources, at least one (``ValueError`` before any
        request); a missing source raises ``NotFound``. The preconditions are the
        destination's, as for :meth:`upload_file`; a mismatch raises ``PreconditionFailed`` and
        changes nothing. The result is a new generation at metageneration 1 with a CRC32C (of
        the whole) and no MD5. The sources are left as they are.
        """

    @abc.abstractmethod
    def delete(self, name: str, if_generation_match: int | None = None, *,
               if_metageneration_match: int | None = None) -> None:
        """Delete the object; ``NotFound`` if it is not there. With ``if_metageneration_match``, only
        if no metadata change moved its metageneration (``PreconditionFailed`` otherwise)."""


class _PagesAhead:
    """A thread fetching a listing's pages from ``token`` on, each as soon as the one before
    has answered (by the token it announces), while at most ``depth`` wait to be taken."""

    def __init__(self, bucket: Bucket, prefix: str, delimiter: str | None, max_results: int, depth: int,
                 token: str | None):
        self._args = bucket, prefix, delimiter, max_results
        self._depth = depth
        self._cond = threading.Condition()
        self._fetched: deque[FetchedPage | BaseException] = deque()
        self._stopped = False
        threading.Thread(target=self._fetch, args=(token,), name="octuefs-page", daemon=True).start()

    def _fetch(self, token: str | None) -> None:
        bucket, prefix, delimiter, max_results = self._args
        try:
            while True:
                with self._cond:
                    while len(self._fetched) >= self._depth and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                page = bucket.fetch_page(prefix, delimiter, token, max_results)
                with self._cond:
                    self._fetched.append(page)
                    self._cond.notify_all()
                token = page.next_token
                if not token:
                    return
        except BaseException as exc:  # for the caller, in its turn
            with self._cond:
                self._fetched.append(exc)
                self._cond.notify_all()

    def take(self) -> FetchedPage:
        """The next page fetched (waiting for it), or the error that came instead."""
        with self._cond:
            while not self._fetched:
                self._cond.wait()
            item = self._fetched.popleft()
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """No request after the one in flight; what was fetched is dropped."""
        with self._cond:
            self._stopped = True
            self._fetched.clear()
            self._cond.notify_all()
