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

The protocol offers primitives only (upload a file or a byte range of one, compose, patch,
copy, delete, list, stat, read); how a large file is uploaded is decided above it
(:mod:`octuefs.writeback.composite`). Here too: :class:`BoundedBucket`, the view
:meth:`Bucket.bounded` gives, which works over any bucket. The values the protocol speaks in
(:class:`ObjectInfo`, :class:`ListPage`, :class:`RetryPolicy`, ...) live in
:mod:`octuefs.storage.objects` and are importable from here.
"""

from __future__ import annotations

import abc
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from octuefs.errors import BucketUnreachable
from octuefs.storage.objects import (
    DEFAULT_CONTENT_TYPE,
    MAX_COMPOSE_SOURCES,
    MAX_OBJECT_SIZE,
    PART_SUFFIX,
    PARTS_PREFIX,
    ChecksumMismatch,
    FetchedPage,
    ListPage,
    ObjectInfo,
    RetryPolicy,
    check_sources,
    guess_content_type,
)
from octuefs.storage.retry import attempt_timeout, bounded, current_bound

# The values the protocol speaks in live in objects.py; importable from here as well.
__all__ = ["DEFAULT_CONTENT_TYPE", "MAX_COMPOSE_SOURCES", "MAX_OBJECT_SIZE", "PART_SUFFIX", "PARTS_PREFIX",
           "BoundedBucket", "Bucket", "ChecksumMismatch", "FetchedPage", "ListPage", "ObjectInfo", "RetryPolicy",
           "check_sources", "guess_content_type", "pwrite_all", "read_file_range"]

T = TypeVar("T")


# A lock per descriptor number: writes to one file take turns here, asleep, not in the kernel,
# which serializes them anyway (the inode lock) and lets a waiter spin on the CPU meanwhile.
_writing: dict[int, threading.Lock] = {}


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """``os.pwrite`` until all of ``data`` is written (one writer of ``fd`` at a time)."""
    lock = _writing.get(fd)
    if lock is None:
        lock = _writing.setdefault(fd, threading.Lock())
    with lock:
        written = os.pwrite(fd, data, offset)
        if written < len(data):
            view = memoryview(data)
            while written < len(data):
                written += os.pwrite(fd, view[written:], offset + written)


# Is the bucket far away (its small requests wait on the network, not the CPU)? A bucket that
# times its requests (``round_trip()``: the fastest small request's wall time, a typical one's CPU
# time, how many were timed) is far once FAR_SAMPLES were timed and the fastest took FAR_RATIO
# times the CPU a typical one used, and FAR_WALL seconds at least. Write-back (uploads in flight,
# the burst hold) and prefetching (requests in flight) size themselves by it.
FAR_SAMPLES = 3
FAR_RATIO = 4.0
FAR_WALL = 0.005


def far_away(bucket: object) -> tuple[bool, float, float]:
    """(far, the fastest small request's wall time, a typical one's CPU time) for ``bucket``
    (near: one that does not time its requests)."""
    wall, cpu, timed = getattr(bucket, "round_trip", lambda: (0.0, 0.0, 0))()
    return timed >= FAR_SAMPLES and wall >= max(FAR_WALL, FAR_RATIO * cpu), wall, cpu


def read_file_range(path: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of a local file being uploaded; ``OSError`` if it ends first."""
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, start)
    if len(data) < length:
        raise OSError(f"{path} ended {length - len(data)} bytes early while being uploaded")
    return data


class Bucket(abc.ABC):
    """An object store bucket. See the module docstring for the contract."""

    name: str

    def bounded(self, deadline: float) -> Bucket:
        """This bucket for calls someone is waiting on: each call, retries included, ends within
        about ``deadline`` seconds or raises BucketUnreachable (see :class:`BoundedBucket`)."""
        return BoundedBucket(self, deadline)

    def with_retry(self, retry: RetryPolicy) -> Bucket:
        """This bucket (its objects, connections and counters) with another retry policy for
        transient failures: ``RetryPolicy(deadline=0)`` makes one attempt per call."""
        raise NotImplementedError(f"{type(self).__name__} cannot change its retry policy")

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

    def upload_range(self, name: str, path: str, start: int, length: int, *, crc32c: str | None = None,
                     progress: Callable[[], None] | None = None) -> ObjectInfo:
        """Create or replace the object ``name`` from bytes ``[start, start + length)`` of the local
        file ``path`` (no custom metadata, content type ``application/octet-stream``, no
        precondition): a part of a composite upload (:mod:`octuefs.writeback.composite`).

        Implementations stream it from the file. ``crc32c`` (base64): the range's CRC32C, sent
        for the server to check; an attempt after which the object holds bytes of another
        CRC32C (a server that checks nothing) failed transiently and is retried. ``progress``
        as for :meth:`upload_file`. This default reads the range into memory."""
        data = read_file_range(path, start, length)
        if progress is not None:
            progress()
        return self.upload_bytes(name, data, {}, content_type=DEFAULT_CONTENT_TYPE)

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


class BoundedBucket(Bucket):
    """A bucket for calls someone is waiting on: each call ends within a deadline, retries included.

    It wraps any :class:`Bucket`. Every call on it runs
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

    ``_down_since`` (monotonic seconds, or None) is written whole by any thread; a stale
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

    def with_retry(self, retry: RetryPolicy) -> Bucket:
        return BoundedBucket(self.inner.with_retry(retry), self.deadline)

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

    def upload_range(self, name: str, path: str, start: int, length: int, **kwargs) -> ObjectInfo:
        return self._run(lambda: self.inner.upload_range(name, path, start, length, **kwargs))

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
