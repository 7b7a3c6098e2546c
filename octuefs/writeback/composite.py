"""Large files uploaded as parallel parts composed into the object, over any bucket.

:class:`ComposingBucket` wraps a :class:`~octuefs.storage.base.Bucket` and decides how a file goes
up (a small facade over two strategies, as mountpoint-s3's ``upload.rs``): a file under
``compose_min`` bytes goes to the wrapped bucket's own ``upload_file`` (one request); a larger one
goes up as parts, each a byte range of the file (``upload_range``) uploaded side by side, then
one ``compose`` makes the object with its metadata, content type and precondition, atomically.
Every other call passes through. It uses the protocol's primitives only, so it runs over
``GCSBucket`` and ``FakeBucket`` alike (and over their bounded or metered views). The mount
builds one over its bucket (``mount.serve``), under the metrics wrapper, so a composite upload
counts as one upload there as it always did.

Why parts: one stream is bound by one connection's speed (and here by one thread); parts
measured 1.2-1.8x faster than one stream against fake-gcs-server on 2 cores. The cost: a
composed object has a CRC32C but no MD5 (octuefs identifies content by either), and a few more
requests. The composed object's CRC32C must be the file's (combined from its parts'), else
:class:`~octuefs.storage.base.ChecksumMismatch`: never counted as done.

Parts live under ``PARTS_PREFIX`` in the object's directory (where whoever may write the object
may write too: a credential limited to a prefix, say), each name ending in ``PART_SUFFIX`` for
a lifecycle rule, hidden from the mount and from Dataset listings. They are deleted once
composed, or once the compose failed, one attempt each (a bucket away then must not hold the
upload for minutes of retries).

The parts ledger (:class:`PartsLedger`, local crash state): before the first part goes up, a
file naming the upload's parts prefix is written and fsynced in the ledger directory (a mount's
is ``parts/`` in its cache directory); it is removed once the parts are deleted.
:meth:`ComposingBucket.sweep_parts` deletes what the ledger names and no upload of this process
is using: what a crash, or a bucket away at the time, left behind. Without a ledger such parts
stay, for a lifecycle rule to delete (README, "Large files").

Process-wide state, for every wrapper alike: ``_PART_SLOTS`` lets at most ``PARTS_IN_FLIGHT``
parts be in flight for all composite uploads together, and ``_IN_FLIGHT`` holds the parts
prefixes of those running (added before the ledger notes them, so a sweep never takes a running
upload's parts for a crash's). The semaphore is its own lock; the set is changed and tested by
single operations, atomic in CPython.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

from octuefs.durable import fsync_dir
from octuefs.errors import BucketUnreachable, NotFound, PreconditionFailed, StorageError
from octuefs.storage.base import Bucket
from octuefs.storage.checksums import combine_b64, range_crc32c_b64
from octuefs.storage.objects import (
    MAX_COMPOSE_SOURCES,
    PART_SUFFIX,
    PARTS_PREFIX,
    ChecksumMismatch,
    ObjectInfo,
    RetryPolicy,
    guess_content_type,
)

log = logging.getLogger(__name__)

COMPOSE_MIN = 64 * 1024 * 1024  # the smallest file uploaded in parts
MAX_PARTS = MAX_COMPOSE_SOURCES  # one compose makes the object
PARTS_IN_FLIGHT = 4  # each streamed from the file, 1 MiB at a time
_PART_SLOTS = threading.BoundedSemaphore(PARTS_IN_FLIGHT)  # parts in flight, all uploads together
_IN_FLIGHT: set[str] = set()  # parts prefixes of composite uploads running in this process
ONE_ATTEMPT = RetryPolicy(deadline=0.0)  # a transient failure is not retried


def part_ranges(size: int, compose_min: int = COMPOSE_MIN) -> list[tuple[int, int]]:
    """(start, length) of each part of a ``size``-byte composite upload: parts of half
    ``compose_min`` (so at least two), fewer and larger past MAX_PARTS, each a multiple of
    256 KiB but the last."""
    quantum = 256 * 1024
    part = max(compose_min // 2, -(-size // MAX_PARTS), quantum)
    part = -(-part // quantum) * quantum
    return [(start, min(part, size - start)) for start in range(0, size, part)]


def new_parts_prefix(name: str) -> str:
    """Where a new composite upload of ``name`` puts its parts: beside the object, under a prefix
    of its own (a retried upload never reuses old parts)."""
    return f"{name.rpartition('/')[0] + '/' if '/' in name else ''}{PARTS_PREFIX}{uuid.uuid4().hex}/"


class PartsLedger:
    """A directory with a file per composite upload whose parts may be in the bucket, named after
    its parts prefix's last segment and holding the whole prefix."""

    def __init__(self, directory: str):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory

    def note(self, prefix: str) -> str:
        """Note ``prefix`` durably (file and directory fsynced); the entry's path. On ``OSError``
        (the cache disk is full, say) nothing is left noted."""
        path = os.path.join(self.directory, prefix.rstrip("/").rpartition("/")[2])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, prefix.encode("utf-8", "surrogateescape"))
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.directory)
        except OSError:
            self.forget(path)
            raise
        return path

    def forget(self, entry: str) -> None:
        try:
            os.unlink(entry)
        except FileNotFoundError:
            pass

    def entries(self) -> Iterator[tuple[str, str]]:
        """(parts prefix, entry path) of each noted upload, in name order; an entry that cannot
        be read is passed over."""
        for name in sorted(os.listdir(self.directory)):
            entry = os.path.join(self.directory, name)
            try:
                with open(entry, "rb") as f:
                    prefix = f.read().decode("utf-8", "surrogateescape")
            except OSError:
                continue
            yield prefix, entry

    def pending(self) -> bool:
        return bool(os.listdir(self.directory))


class ComposingBucket(Bucket):
    """``inner``, uploading files of ``compose_min`` bytes or more in parts (0: never), noting
    them in a :class:`PartsLedger` in ``parts_dir`` if given. See the module docstring.

    Attributes it does not define (test hooks such as ``calls``) are the wrapped bucket's."""

    def __init__(self, inner: Bucket, parts_dir: str | None = None, compose_min: int = COMPOSE_MIN):
        self.inner = inner
        self.compose_min = compose_min
        self.ledger = PartsLedger(parts_dir) if parts_dir is not None else None
        self._once: Bucket | None = None  # inner with ONE_ATTEMPT, made when first needed

    @property
    def name(self) -> str:
        return self.inner.name

    def __repr__(self) -> str:
        return f"ComposingBucket({self.inner!r})"

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    # --- the choice ----------------------------------------------------------------------

    def upload_file(self, name: str, path: str, *args, **kwargs) -> ObjectInfo:
        """:meth:`Bucket.upload_file`; below ``compose_min`` bytes, the wrapped bucket's own,
        called exactly as this was."""
        if not self.compose_min or os.path.getsize(path) < self.compose_min:
            return self.inner.upload_file(name, path, *args, **kwargs)
        return self._upload_composite(name, path, *args, **kwargs)

    def upload_bytes(self, name: str, data: bytes, *args, **kwargs) -> ObjectInfo:
        if self.compose_min and len(data) >= self.compose_min:
            return super().upload_bytes(name, data, *args, **kwargs)  # through a file, in parts
        return self.inner.upload_bytes(name, data, *args, **kwargs)

    # --- a composite upload --------------------------------------------------------------

    def _upload_composite(self, name: str, path: str, metadata: Mapping[str, str],
                          if_generation_match: int | None = None, content_type: str | None = None, *,
                          progress: Callable[[], None] | None = None,
                          if_metageneration_match: int | None = None) -> ObjectInfo:
        """Parts side by side, then one compose that sets the content, metadata and content
        type under the precondition, atomically."""
        content_type = content_type or guess_content_type(name)
        preconditions = (if_generation_match, if_metageneration_match)
        prefix = new_parts_prefix(name)
        ranges = part_ranges(os.path.getsize(path), self.compose_min)
        parts = [f"{prefix}{i:02d}{PART_SUFFIX}" for i in range(len(ranges))]
        crcs: list[str] = [""] * len(parts)  # each part's CRC32C, as read from the file and sent

        def upload_part(i: int) -> None:
            start, length = ranges[i]
            crcs[i] = range_crc32c_b64(path, start, length)
            with _PART_SLOTS:
                try:
                    self.upload_range(parts[i], path, start, length, crc32c=crcs[i], progress=progress)
                except BucketUnreachable as exc:  # its text names the part's object: say whose part it is
                    raise BucketUnreachable(f"{exc}, a part of gs://{self.name}/{name} (part {i + 1} of "
                                            f"{len(parts)})") from exc

        # GCS refuses a compose whose precondition fails; fake-gcs-server ignores it, so check
        # before sending the parts (no upload for nothing) and again before composing (a change
        # landing in between is caught only by GCS itself).
        self._check_preconditions(name, *preconditions)
        entry = self._note(prefix)
        try:
            with ThreadPoolExecutor(min(len(parts), PARTS_IN_FLIGHT), thread_name_prefix="octuefs-part") as pool:
                for done in [pool.submit(upload_part, i) for i in range(len(parts))]:
                    done.result()
            self._check_preconditions(name, *preconditions)
            result = self.compose(parts, name, metadata, content_type, *preconditions)
            whole = combine_b64(zip(crcs, (length for _start, length in ranges)))
            if result.crc32c != whole:  # never counted as done: the caller keeps the file and tries again
                raise ChecksumMismatch(f"gs://{self.name}/{name}: composed with CRC32C {result.crc32c}, but the "
                                       f"file's is {whole} (generation {result.generation} holds wrong bytes)",
                                       result.generation)
        finally:
            if self._delete_parts(parts):
                self._forget(prefix, entry)
            else:
                _IN_FLIGHT.discard(prefix)  # left for sweep_parts
        log.debug("uploaded %s in %d parts, composed", name, len(parts))
        if self.ledger is not None and self.ledger.pending():
            self.sweep_parts()  # the bucket answers again: what an outage left can go now
        return result

    def _check_preconditions(self, name: str, if_generation_match: int | None,
                             if_metageneration_match: int | None) -> None:
        if if_generation_match is None and if_metageneration_match is None:
            return
        try:
            info: ObjectInfo | None = self.stat(name)
        except NotFound:
            info = None
        current = info.generation if info is not None else 0
        if if_generation_match is not None and current != if_generation_match:
            raise PreconditionFailed(f"gs://{self.name}/{name} is at generation {current}, "
                                     f"not {if_generation_match}")
        if if_metageneration_match is not None and (info is None or info.metageneration != if_metageneration_match):
            actual = "absent" if info is None else f"at metageneration {info.metageneration}"
            raise PreconditionFailed(f"gs://{self.name}/{name} is {actual}, not at metageneration "
                                     f"{if_metageneration_match}")

    def _delete_parts(self, parts: list[str]) -> bool:
        """Delete a composite upload's parts (one attempt each); whether none is left."""
        if self._once is None:
            self._once = self.inner.with_retry(ONE_ATTEMPT)
        gone = True
        for part in parts:
            try:
                self._once.delete(part)
            except NotFound:  # never uploaded
                pass
            except Exception as exc:  # the bucket is away
                gone = False
                log.info("could not delete the upload part %s (%s); it is deleted later", part, exc)
        return gone

    # --- the parts ledger: no part is left in the bucket for good ----------------------------

    def _note(self, prefix: str) -> str | None:
        _IN_FLIGHT.add(prefix)  # first: a sweep must never take a noted prefix for a crash's
        if self.ledger is None:
            return None
        try:
            return self.ledger.note(prefix)
        except OSError:  # no part has gone up: nothing to note
            _IN_FLIGHT.discard(prefix)
            raise

    def _forget(self, prefix: str, entry: str | None) -> None:
        _IN_FLIGHT.discard(prefix)
        if entry is not None and self.ledger is not None:
            self.ledger.forget(entry)

    def sweep_parts(self) -> int:
        """Delete the parts noted in the ledger that no upload in this process is using; how
        many objects were deleted. What cannot be deleted now stays noted for the next sweep."""
        if self.ledger is None:
            return 0
        deleted = 0
        for prefix, entry in self.ledger.entries():
            if prefix in _IN_FLIGHT:
                continue
            if not prefix.endswith("/") or PARTS_PREFIX not in prefix:  # not ours to act on
                log.warning("ignoring %s in the parts ledger: %r is no parts prefix", entry, prefix)
                continue
            try:
                objects, _ = self.list_all(prefix, delimiter=None)
                for obj in objects:
                    try:
                        self.delete(obj.name)
                        deleted += 1
                    except NotFound:
                        pass
            except StorageError as exc:
                log.info("could not delete the parts under gs://%s/%s yet: %s", self.name, prefix, exc)
                continue
            self._forget(prefix, entry)
        if deleted:
            log.info("deleted %d part(s) that earlier uploads left in gs://%s", deleted, self.name)
        return deleted

    def sweep_in_background(self) -> threading.Thread:
        """:meth:`sweep_parts` on a thread of its own (started): the parts an earlier mount's
        large uploads left (it crashed, or the bucket was away when they were to be deleted)."""

        def sweep() -> None:
            try:
                self.sweep_parts()
            except Exception:
                log.exception("sweeping the parts of earlier large uploads failed; the next mount tries again")

        thread = threading.Thread(target=sweep, name="octuefs-sweep", daemon=True)
        thread.start()
        return thread

    # --- everything else: the wrapped bucket's -------------------------------------------

    def with_retry(self, retry: RetryPolicy) -> Bucket:
        view = ComposingBucket(self.inner.with_retry(retry), compose_min=self.compose_min)
        view.ledger = self.ledger
        return view

    def list_page(self, *args, **kwargs):
        return self.inner.list_page(*args, **kwargs)

    def fetch_page(self, *args, **kwargs):
        return self.inner.fetch_page(*args, **kwargs)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def read_range(self, *args, **kwargs) -> bytes:
        return self.inner.read_range(*args, **kwargs)

    def read_range_into(self, *args, **kwargs) -> int:
        return self.inner.read_range_into(*args, **kwargs)

    def download_to_file(self, *args, **kwargs) -> ObjectInfo:
        return self.inner.download_to_file(*args, **kwargs)

    def upload_range(self, *args, **kwargs) -> ObjectInfo:
        return self.inner.upload_range(*args, **kwargs)

    def patch_metadata(self, *args, **kwargs) -> ObjectInfo:
        return self.inner.patch_metadata(*args, **kwargs)

    def copy(self, *args, **kwargs) -> ObjectInfo:
        return self.inner.copy(*args, **kwargs)

    def compose(self, *args, **kwargs) -> ObjectInfo:
        return self.inner.compose(*args, **kwargs)

    def delete(self, *args, **kwargs) -> None:
        self.inner.delete(*args, **kwargs)
