"""The Bucket protocol on Google Cloud Storage (or fake-gcs-server), via google-cloud-storage.

This module and its direct-HTTP half, :mod:`.jsonapi` (stat, list, ranged reads and small
uploads, made with urllib3 for CPU's sake), are the only octuefs modules that import
``google.*``. Everything either raises is translated into octuefs errors in one place,
:func:`translate_error`; the library's own retries
are switched off on every call (``retry=None``) and transient failures are retried by one loop,
:class:`octuefs.storage.retry.Retrier`, bounded by the bucket's :class:`RetryPolicy`.

Clients: given an ``endpoint``, or with ``STORAGE_EMULATOR_HOST`` set, the client talks to that
emulator anonymously with a dummy project; otherwise it uses Application Default Credentials. The HTTP session gets a
connection pool sized for many threads (:data:`POOL_SIZE`).

Emulator notes (fake-gcs-server 1.54, measured): it ignores preconditions on patch, copy and
delete (only uploads honour them) and ``ifGenerationMatch`` on media downloads (so a pinned read
uses ``generation=``); a metadata patch never bumps the metageneration (the filesystem backend
moves the generation, the memory backend nothing) and its answer lacks ``metageneration``; a key
patched to None is stored as ``""``; ``maxResults`` does not count prefixes. This module does not paper over those;
``tests/contract`` marks them.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import re
import socket
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import google_crc32c
import orjson
import requests
import requests.adapters
import urllib3.exceptions
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions

from octuefs.durable import fsync_dir
from octuefs.errors import (
    BucketNotFound,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
    TransientError,
)
from octuefs.storage import guess_content_type
from octuefs.storage.base import (
    PART_SUFFIX,
    PARTS_PREFIX,
    MAX_COMPOSE_SOURCES,
    Bucket,
    ChecksumMismatch,
    FetchedPage,
    ListPage,
    ObjectInfo,
    RetryPolicy,
    check_sources,
    pwrite_all,
)
from octuefs.storage.checksums import combine_b64
from octuefs.storage.jsonapi import JsonApi, guess_next_token, object_info
from octuefs.storage.retry import (
    Retrier,
    composed_fingerprint,
    confirm_copy,
    confirm_delete,
    confirm_patch,
    confirm_upload,
    current_bound,
    cut_to,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Timeout = float | tuple[float, float]  # seconds, or (connect, read), per HTTP request

EMULATOR_PROJECT = "octuefs-local"
# HTTP connections kept per host, in each of the two pools (the library's requests session, and
# JsonApi's): at least the threads that may make a request at once, so that none opens a new
# connection (a TCP and TLS handshake: two or three round trips on GCS) or discards one: the FUSE
# threads (10), the upload workers (32 small at a distance), composite parts (4), block fetches
# (8), listing pages and read-ahead besides. Idle connections cost a file descriptor each.
POOL_SIZE = 128
DEFAULT_TIMEOUT = (10.0, 60.0)  # seconds: (connect, read between bytes)
READ_CHUNK = 1024 * 1024  # bytes per read from a download's body
MULTIPART_MAX = 8 * 1024 * 1024  # larger files go up resumable, in chunks (as the library does)
UPLOAD_CHUNK_SIZE = 32 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires
# Parallel composite uploads: a file of at least COMPOSE_MIN bytes goes up as parts uploaded
# side by side, then composed into the object in one request that carries its metadata and
# precondition. One stream is bound by one connection's speed (and here by one thread); parts
# measured 1.2-1.8x faster than one stream against fake-gcs-server on 2 cores. The cost: a
# composed object has a CRC32C but no MD5 (octuefs identifies content by either), and a few
# more requests. Parts live under PARTS_PREFIX in the object's directory, hidden from the mount,
# and are deleted once composed (or once the compose failed).
COMPOSE_MIN = 64 * 1024 * 1024
MAX_PARTS = MAX_COMPOSE_SOURCES
PARTS_IN_FLIGHT = 4  # each streamed from the file, 1 MiB at a time
_PART_SLOTS = threading.BoundedSemaphore(PARTS_IN_FLIGHT)  # parts in flight, all uploads together
_IN_FLIGHT: set[str] = set()  # parts prefixes of composite uploads running in this process

CREDENTIALS_HINT = (
    "no usable Google Cloud credentials: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
)

_TRANSIENT_STATUS = {408, 429}
_PRECONDITION_STATUS = {304, 412}
_PERMISSION_STATUS = {401, 403}


# --- errors --------------------------------------------------------------------------------


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code
    if isinstance(exc, storage_exceptions.InvalidResponse):  # media transfers, if not re-wrapped
        return getattr(getattr(exc, "response", None), "status_code", None)
    return None


def _retry_after(exc: BaseException) -> float | None:
    """Seconds a ``Retry-After`` header asks for (its number-of-seconds form), at most a minute."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        value = float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None
    return min(max(value, 0.0), 60.0) or None


def _short(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]


def _network_reason(exc: BaseException) -> str:
    """The useful part of a transport error: "Connection refused" rather than a pool repr."""
    match = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(exc))
    if match:
        return match.group(1).strip()
    if isinstance(exc, (requests.exceptions.Timeout, socket.timeout, TimeoutError)):
        return "timed out"
    return _short(exc)


def translate_error(exc: BaseException, bucket: str, name: str | None = None) -> BaseException:
    """The octuefs error for a library/transport exception, or ``exc`` itself if unknown.

    ``name`` is the object concerned, or None for bucket-level calls (listing), where a 404 means
    the bucket is missing.
    """
    where = f"gs://{bucket}/{name}" if name is not None else f"gs://{bucket}"
    status = _status_of(exc)
    if status is not None:
        if status == 404:
            if name is None or "bucket does not exist" in _short(exc).lower():
                return BucketNotFound(f"bucket {bucket!r} does not exist")
            return NotFound(f"{where}: no such object")
        if status in _PRECONDITION_STATUS:
            return PreconditionFailed(f"{where}: precondition failed (the object changed): {_short(exc)}")
        if status in _PERMISSION_STATUS:
            return PermissionDenied(f"{where}: permission denied: {_short(exc)}")
        if status == 416:
            return RangeNotSatisfiable(f"{where}: requested range not satisfiable")
        if status in _TRANSIENT_STATUS or status >= 500:
            return TransientError(f"{where}: HTTP {status}: {_short(exc)}", retry_after=_retry_after(exc))
        return StorageError(f"{where}: HTTP {status}: {_short(exc)}")
    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return PermissionDenied(CREDENTIALS_HINT)
    if isinstance(exc, auth_exceptions.RefreshError):
        if getattr(exc, "retryable", False):
            return TransientError(f"{where}: refreshing credentials failed: {_short(exc)}")
        return PermissionDenied(f"{CREDENTIALS_HINT} ({_short(exc)})")
    if isinstance(exc, storage_exceptions.DataCorruption):
        return TransientError(f"{where}: checksum mismatch in transfer: {_short(exc)}")
    if isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
            auth_exceptions.TransportError,
            socket.timeout,
            socket.gaierror,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return TransientError(f"{where}: {type(exc).__name__}: {_network_reason(exc)}")
    return exc


# --- client --------------------------------------------------------------------------------


def emulator_host() -> str | None:
    return os.environ.get("STORAGE_EMULATOR_HOST") or None


def make_client(project: str | None = None, pool_size: int = POOL_SIZE, endpoint: str | None = None) -> storage.Client:
    """A storage client: for the emulator at ``endpoint`` or ``STORAGE_EMULATOR_HOST`` (anonymous,
    dummy project), else for real GCS with Application Default Credentials."""
    local = endpoint or emulator_host()
    if local:
        options = {"api_endpoint": endpoint} if endpoint else None
        client = storage.Client(project=project or EMULATOR_PROJECT, credentials=AnonymousCredentials(), client_options=options)
    else:
        try:
            client = storage.Client(project=project)
        except auth_exceptions.DefaultCredentialsError as exc:
            raise PermissionDenied(CREDENTIALS_HINT) from exc
    # google-cloud-storage >= 3.8 fetches bucket metadata in background threads, only to label
    # OpenTelemetry spans: an extra request per bucket and a thread per 404. Not wanted here.
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None
    session = client._http  # the AuthorizedSession every call of this client goes through
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if local:
        session.trust_env = False  # an http_proxy must not capture requests to a local emulator
    return client


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _info(blob: storage.Blob) -> ObjectInfo | None:
    """ObjectInfo from a blob resource, or None if the resource lacks a required field."""
    updated = _utc(blob.updated)
    if blob.generation is None or blob.metageneration is None or blob.size is None or updated is None:
        return None
    return ObjectInfo(
        name=blob.name,
        size=int(blob.size),
        generation=int(blob.generation),
        metageneration=int(blob.metageneration),
        updated=updated,
        crc32c=blob.crc32c,
        md5=blob.md5_hash,
        content_type=blob.content_type,
        storage_class=blob.storage_class,
        metadata=blob.metadata or {},
    )


class _Reporting:
    """A file being uploaded that calls ``progress()`` after each read: the upload is moving."""

    def __init__(self, f, progress: Callable[[], None]):
        self._f = f
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._progress()
        return data

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _range_crc32c(path: str, start: int, length: int) -> str:
    """The base64 CRC32C of bytes [start, start + length) of a file, read 1 MiB at a time."""
    crc = google_crc32c.Checksum()
    with open(path, "rb") as f:
        at, end = start, start + length
        while at < end:
            chunk = os.pread(f.fileno(), min(READ_CHUNK, end - at), at)
            if not chunk:
                raise OSError(f"{path} ended {end - at} bytes early while being uploaded")
            crc.update(chunk)
            at += len(chunk)
    return base64.b64encode(crc.digest()).decode()


def part_ranges(size: int, compose_min: int = COMPOSE_MIN) -> list[tuple[int, int]]:
    """(start, length) of each part of a ``size``-byte composite upload: parts of half
    ``compose_min`` (so at least two), fewer and larger past MAX_PARTS, each a multiple of
    256 KiB but the last."""
    quantum = 256 * 1024
    part = max(compose_min // 2, -(-size // MAX_PARTS), quantum)
    part = -(-part // quantum) * quantum
    return [(start, min(part, size - start)) for start in range(0, size, part)]


# --- the bucket ----------------------------------------------------------------------------


class GCSBucket(Bucket):
    """A GCS bucket (or one on fake-gcs-server). Thread-safe: it holds no mutable state of its
    own; the client's HTTP session is shared by all threads."""

    def __init__(
        self,
        name: str,
        client: storage.Client | None = None,
        project: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        *,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        endpoint: str | None = None,
        compose_min: int = COMPOSE_MIN,
        parts_dir: str | None = None,
    ):
        """``endpoint``: an emulator's URL (overrides STORAGE_EMULATOR_HOST); ``timeout``: per
        HTTP request, seconds or (connect, read); ``compose_min``: the smallest file uploaded in
        parallel parts (0: never)."""
        self.name = name
        self.retry_policy = retry
        self.timeout = timeout
        self._client = client if client is not None else make_client(project, endpoint=endpoint)
        self._bucket = self._client.bucket(name)
        self._api = JsonApi.for_client(self._client, name, self._bucket.user_project, POOL_SIZE)
        self._retrier = Retrier(retry)
        self.compose_min = compose_min  # 0: never a composite upload
        self.parts_dir: str | None = None
        if parts_dir is not None:
            self.keep_parts_in(parts_dir)

    def __repr__(self) -> str:
        return f"GCSBucket({self.name!r}, endpoint={self.endpoint!r})"

    def round_trip(self) -> tuple[float, float, int]:
        """How far the bucket is: (the fastest recent small request's seconds, a typical one's
        CPU seconds, how many were timed); see :class:`octuefs.storage.jsonapi.RoundTrips`."""
        return self._api.round_trip()

    @property
    def client(self) -> storage.Client:
        """The google-cloud-storage client (share it between buckets to share connections)."""
        return self._client

    @property
    def endpoint(self) -> str:
        """The base URL requests go to (the emulator's, or https://storage.googleapis.com)."""
        return self._client._connection.API_BASE_URL

    def with_retry(self, retry: RetryPolicy, timeout: float | tuple[float, float] | None = None) -> GCSBucket:
        """The same bucket and client with another retry policy (and timeout)."""
        return GCSBucket(self.name, client=self._client, retry=retry, timeout=timeout or self.timeout,
                         compose_min=self.compose_min, parts_dir=self.parts_dir)

    def _call(
        self,
        verb: str,
        fn: Callable[[Timeout], T],
        name: str | None = None,
        after_ambiguous: Callable[[Exception], T] | None = None,
        shown: str | None = None,
    ) -> T:
        """Run ``fn(timeout)`` with errors translated and transient failures retried.

        ``verb`` and ``shown`` (default ``name``) say what is being done, for the log and for
        the error once retries run out: "listing gs://b/dir/". Each attempt's timeout is this
        bucket's, cut short inside a bounded call (see :mod:`octuefs.storage.retry`).
        """

        def attempt(left: float) -> T:
            try:
                return fn(self._attempt_timeout(left))
            except Exception as exc:
                ours = translate_error(exc, self.name, name)
                if ours is exc:
                    raise
                raise ours from exc

        what = f"{verb} gs://{self.name}/{shown if shown is not None else name or ''}"
        return self._retrier.call_within(attempt, what, after_ambiguous)

    def _attempt_timeout(self, left: float) -> Timeout:
        bound = current_bound()
        if bound is None:
            return self.timeout
        cut = cut_to(bound.attempt_timeout, left)
        connect, read = self.timeout if isinstance(self.timeout, tuple) else (self.timeout, self.timeout)
        return (min(connect, cut), min(read, cut))

    def _complete(self, blob: storage.Blob) -> ObjectInfo:
        """ObjectInfo from a write's response, stat-ing again if the response lacks fields."""
        info = _info(blob)
        if info is None:
            log.debug("response for %s lacks fields; reading its metadata back", blob.name)
            info = self.stat(blob.name)
        return info

    # --- reading -------------------------------------------------------------------------

    def list_page(
        self,
        prefix: str = "",
        delimiter: str | None = "/",
        page_token: str | None = None,
        max_results: int = 1000,
    ) -> ListPage:
        return self.fetch_page(prefix, delimiter, page_token, max_results).convert()

    def fetch_page(self, prefix: str = "", delimiter: str | None = "/", page_token: str | None = None,
                   max_results: int = 1000) -> FetchedPage:
        raw = self._call("listing", lambda timeout: self._api.list_objects(prefix, delimiter, page_token,
                                                                           max_results, timeout), shown=prefix)

        def convert() -> ListPage:
            try:
                answer = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise StorageError(f"gs://{self.name}: listing {prefix!r} returned no JSON ({exc})") from exc
            if not isinstance(answer, dict):
                raise StorageError(f"gs://{self.name}: listing {prefix!r} returned {type(answer).__name__}, "
                                   "not a JSON object")
            objects = []
            prefixes = list(answer.get("prefixes", ()))
            markers: dict[str, ObjectInfo | None] | None = dict.fromkeys(prefixes) if delimiter else None
            for resource in answer.get("items", ()):
                info = object_info(resource)
                if info is None:
                    raise StorageError(f"gs://{self.name}: listing returned an incomplete entry for "
                                       f"{resource.get('name')!r}")
                if markers is not None and info.name in markers:  # (a prefix's marker: includeTrailingDelimiter)
                    markers[info.name] = info
                else:
                    objects.append(info)
            return ListPage(objects, prefixes, answer.get("nextPageToken") or None, markers)

        return FetchedPage(guess_next_token(raw), convert)  # the next request need not wait for decoding

    def _stat(self, name: str, generation: int | None = None) -> ObjectInfo:
        resource = self._call("looking up", lambda timeout: self._api.get_object(name, generation, timeout), name)
        info = object_info(resource)
        if info is None:
            raise StorageError(f"gs://{self.name}/{name}: the server's answer lacks generation or size")
        return info

    def stat(self, name: str) -> ObjectInfo:
        return self._stat(name)

    def read_range(self, name: str, start: int, end: int, generation: int | None = None) -> bytes:
        chunks: list[bytes] = []

        def keep(_offset: int, chunk: bytes) -> None:
            chunks.append(chunk)

        def restart() -> None:
            chunks.clear()

        self._read_range(name, start, end, generation, keep, restart)
        return b"".join(chunks)

    def read_range_into(self, name: str, start: int, end: int, fd: int, generation: int | None = None,
                        progress: Callable[[int], None] | None = None) -> int:
        def sink(offset: int, chunk: bytes) -> None:
            pwrite_all(fd, chunk, offset)
            if progress is not None:
                progress(offset + len(chunk))

        return self._read_range(name, start, end, generation, sink)

    def _read_range(self, name: str, start: int, end: int, generation: int | None,
                    sink: Callable[[int, bytes], None], restart: Callable[[], None] = lambda: None) -> int:
        """Stream bytes [start, end) to ``sink(offset, chunk)``; how many there were.

        One media GET with a Range header (:mod:`.jsonapi`), read in READ_CHUNK pieces. The
        library's own download reads the body 8 KiB at a time through three layers of Python,
        which measured 5x the CPU of this (0.58 s against 0.12 s per 256 MiB): on a reader's
        critical path, that was most of the daemon's time. A retry of a read pinned to a
        ``generation`` goes on from the last byte the failed attempt delivered (a read-ahead
        request may be 32 MiB long); an unpinned one starts again (``restart``), since the
        object may have changed in between.
        """
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        if end == start:
            return 0
        at = start  # delivered to the sink up to here

        def delivered(offset: int, chunk: bytes) -> None:
            nonlocal at
            sink(offset, chunk)
            at = offset + len(chunk)

        def attempt(timeout: Timeout) -> int:
            nonlocal at
            if generation is None or at == start:
                restart()
                at = start
            elif at >= end:
                return at - start
            self._api.read_range(name, at, end, generation, timeout, delivered, READ_CHUNK)
            return at - start

        try:
            return self._call("reading", attempt, name)
        except RangeNotSatisfiable:
            if self._stat(name, generation).size == 0:  # GCS answers 416 to any range of an empty object
                return 0
            raise

    def download_to_file(self, name: str, path: str, generation: int | None = None) -> ObjectInfo:
        for _ in range(3):
            info = self._stat(name, generation)
            try:
                self._download(name, info.generation, path)
                return info
            except NotFound:
                if generation is not None:
                    raise
                log.debug("%s was replaced during its download; starting again", name)
        raise TransientError(f"gs://{self.name}/{name}: kept changing during download")

    def _download(self, name: str, generation: int, path: str) -> None:
        """Download exactly ``generation`` to a temporary file beside ``path``, then rename it."""
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".octuefs-download-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:

                def attempt(timeout: Timeout) -> None:
                    f.seek(0)
                    f.truncate()
                    blob = self._bucket.blob(name, generation=generation)
                    blob.download_to_file(f, raw_download=True, retry=None, timeout=timeout)

                self._call("downloading", attempt, name)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    # --- writing -------------------------------------------------------------------------

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
        content_type = content_type or guess_content_type(name)
        size = os.path.getsize(path)
        preconditions = (if_generation_match, if_metageneration_match)
        if self.compose_min and size >= self.compose_min:
            return self._upload_composite(name, path, metadata, preconditions, content_type, progress)
        if size <= MULTIPART_MAX:
            return self._upload_small(name, path, metadata, preconditions, content_type, progress)

        def attempt(timeout: Timeout) -> storage.Blob:
            # Resumable chunks of 32 MiB, not the library's 100 MiB: each chunk is held in memory
            # (about twice), and the daemon's RSS must stay bounded whatever the file size.
            blob = self._bucket.blob(name, chunk_size=UPLOAD_CHUNK_SIZE)
            blob.metadata = dict(metadata)  # sent in the same (multipart or resumable) upload
            blob.content_type = content_type
            with open(path, "rb") as f:
                blob.upload_from_file(
                    _Reporting(f, progress) if progress is not None else f,
                    size=os.fstat(f.fileno()).st_size,
                    content_type=content_type,
                    if_generation_match=if_generation_match,
                    if_metageneration_match=if_metageneration_match,
                    retry=None,
                    timeout=timeout,
                )
            return blob

        # If a lost response made us retry a create-only/replace upload, the retry fails its
        # precondition because the first attempt worked: confirm_upload recognises that case.
        resolve = confirm_upload(self.stat, name, path, metadata, *preconditions)
        result = self._call("uploading", attempt, name, after_ambiguous=resolve)
        return result if isinstance(result, ObjectInfo) else self._complete(result)

    def _upload_small(self, name: str, path: str, metadata: Mapping[str, str],
                      preconditions: tuple[int | None, int | None], content_type: str,
                      progress: Callable[[], None] | None) -> ObjectInfo:
        """:meth:`upload_file` in one multipart request (:mod:`.jsonapi`), the content in memory."""
        with open(path, "rb") as f:
            data = f.read(MULTIPART_MAX + 1)
        if len(data) > MULTIPART_MAX:
            raise StorageError(f"{path} grew past {MULTIPART_MAX} bytes while being uploaded")
        if progress is not None:
            progress()
        crc = google_crc32c.value(data).to_bytes(4, "big")

        def attempt(timeout: Timeout) -> dict:
            return self._api.upload(name, data, metadata, content_type, preconditions[0], crc, timeout,
                                    if_metageneration_match=preconditions[1])

        resolve = confirm_upload(self.stat, name, path, metadata, *preconditions)
        result = self._call("uploading", attempt, name, after_ambiguous=resolve)
        if isinstance(result, ObjectInfo):
            return result
        info = object_info(result)
        if info is None:
            log.debug("response for %s lacks fields; reading its metadata back", name)
            info = self.stat(name)
        return info

    def _upload_composite(self, name: str, path: str, metadata: Mapping[str, str],
                          preconditions: tuple[int | None, int | None], content_type: str,
                          progress: Callable[[], None] | None) -> ObjectInfo:
        """:meth:`upload_file` for a large file: parts side by side, then one compose that sets
        the content, metadata and content type under the precondition, atomically."""
        # Parts go beside the object (under its directory), where whoever may write the
        # object may write too (a credential limited to a prefix, say).
        tag = f"{name.rpartition('/')[0] + '/' if '/' in name else ''}{PARTS_PREFIX}{uuid.uuid4().hex}/"
        ranges = part_ranges(os.path.getsize(path), self.compose_min)
        parts = [f"{tag}{i:02d}{PART_SUFFIX}" for i in range(len(ranges))]

        crcs: list[str] = [""] * len(parts)  # each part's CRC32C, as read from the file and sent

        def upload_part(i: int) -> None:
            start, length = ranges[i]
            crcs[i] = _range_crc32c(path, start, length)

            def attempt(timeout: Timeout) -> None:
                answer = self._api.upload_range(parts[i], path, start, length, timeout, progress, crc32c=crcs[i])
                if answer.get("crc32c") != crcs[i]:  # a server that does not check what it is sent
                    raise TransientError(f"gs://{self.name}/{parts[i]}: stored with CRC32C {answer.get('crc32c')}, "
                                         f"sent with {crcs[i]}")

            with _PART_SLOTS:
                self._call("uploading a part of", attempt, parts[i], shown=f"{name} (part {i + 1} of {len(parts)})")

        # GCS refuses a compose whose precondition fails; fake-gcs-server ignores it, so check
        # before sending the parts (no upload for nothing) and again before composing (a change
        # landing in between is caught only by GCS itself).
        self._check_preconditions(name, *preconditions)
        ledger = self._note_parts(tag)
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
                self._forget_parts(tag, ledger)
            else:
                _IN_FLIGHT.discard(tag)  # left for sweep_parts
        log.debug("uploaded %s in %d parts, composed", name, len(parts))
        if self.parts_dir is not None and os.listdir(self.parts_dir):
            self.sweep_parts()  # the bucket answers again: what an outage left can go now
        return result

    def compose(self, sources: Sequence[str], destination: str, metadata: Mapping[str, str] | None = None,
                content_type: str | None = None, if_generation_match: int | None = None,
                if_metageneration_match: int | None = None) -> ObjectInfo:
        sources = check_sources(sources)
        metadata = dict(metadata or {})
        content_type = content_type or guess_content_type(destination)

        def attempt(timeout: Timeout) -> storage.Blob:
            blob = self._bucket.blob(destination)
            blob.metadata = dict(metadata)
            blob.content_type = content_type
            blob.compose([self._bucket.blob(source) for source in sources], if_generation_match=if_generation_match,
                         if_metageneration_match=if_metageneration_match, retry=None, timeout=timeout)
            return blob

        resolve = confirm_upload(self.stat, destination, composed_fingerprint(self.stat, sources), metadata,
                                 if_generation_match, if_metageneration_match)
        result = self._call("composing", attempt, destination, after_ambiguous=resolve)
        return result if isinstance(result, ObjectInfo) else self._complete(result)

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
        gone = True
        for part in parts:
            try:
                self._bucket.blob(part).delete(retry=None, timeout=self.timeout)
            except Exception as exc:  # never uploaded, or the bucket is away
                if not isinstance(exc, api_exceptions.NotFound):
                    gone = False
                    log.info("could not delete the upload part %s (%s); it is deleted later", part, _short(exc))
        return gone

    # --- the parts ledger: no part is left in the bucket for good ----------------------------

    def keep_parts_in(self, directory: str) -> None:
        """Note each composite upload's parts in ``directory`` (a file per upload, made before
        its first part goes up) until they are deleted, so that :meth:`sweep_parts` can delete
        what a crash, or a bucket away at the time, left behind. Without it such parts stay."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.parts_dir = directory

    def _note_parts(self, tag: str) -> str | None:
        _IN_FLIGHT.add(tag)  # first: a sweep must never take a noted prefix for a crash's
        if self.parts_dir is None:
            return None
        path = os.path.join(self.parts_dir, tag.rstrip("/").rpartition("/")[2])
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, tag.encode("utf-8", "surrogateescape"))
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.parts_dir)
        except OSError:  # (the cache disk is full, say) no part has gone up: nothing to note
            self._forget_parts(tag, path)
            raise
        return path

    def _forget_parts(self, tag: str, ledger: str | None) -> None:
        _IN_FLIGHT.discard(tag)
        if ledger is not None:
            try:
                os.unlink(ledger)
            except FileNotFoundError:
                pass

    def sweep_parts(self) -> int:
        """Delete the parts noted in the ledger that no upload in this process is using; how
        many objects were deleted. What cannot be deleted now stays noted for the next sweep."""
        if self.parts_dir is None:
            return 0
        deleted = 0
        for entry in sorted(os.listdir(self.parts_dir)):
            ledger = os.path.join(self.parts_dir, entry)
            try:
                with open(ledger, "rb") as f:
                    tag = f.read().decode("utf-8", "surrogateescape")
            except OSError:
                continue
            if tag in _IN_FLIGHT:
                continue
            if not tag.endswith("/") or PARTS_PREFIX not in tag:  # not ours to act on
                log.warning("ignoring %s in the parts ledger: %r is no parts prefix", ledger, tag)
                continue
            try:
                objects, _ = self.list_all(tag, delimiter=None)
                for obj in objects:
                    try:
                        self.delete(obj.name)
                        deleted += 1
                    except NotFound:
                        pass
            except StorageError as exc:
                log.info("could not delete the parts under gs://%s/%s yet: %s", self.name, tag, exc)
                continue
            self._forget_parts(tag, ledger)
        if deleted:
            log.info("deleted %d part(s) that earlier uploads left in gs://%s", deleted, self.name)
        return deleted

    def patch_metadata(
        self,
        name: str,
        changes: Mapping[str, str | None],
        if_metageneration_match: int | None = None,
        if_generation_match: int | None = None,
        content_type: str | None = None,
    ) -> ObjectInfo:
        if not changes and content_type is None:
            return self._check_only(name, if_metageneration_match, if_generation_match)

        def attempt(timeout: Timeout) -> storage.Blob:
            blob = self._bucket.blob(name)
            if changes:
                blob.metadata = dict(changes)  # None values delete keys
            if content_type is not None:
                blob.content_type = content_type
            blob.patch(
                if_generation_match=if_generation_match,
                if_metageneration_match=if_metageneration_match,
                retry=None,
                timeout=timeout,
            )
            return blob

        resolve = confirm_patch(self.stat, name, {k: (None if v is None else str(v)) for k, v in changes.items()},
                                content_type, if_generation_match, if_metageneration_match)
        result = self._call("changing the metadata of", attempt, name, after_ambiguous=resolve)
        return result if isinstance(result, ObjectInfo) else self._complete(result)  # (ObjectInfo: it had landed)

    def _check_only(self, name: str, if_metageneration_match: int | None, if_generation_match: int | None) -> ObjectInfo:
        """A patch with nothing to change: check the preconditions against a stat."""
        info = self.stat(name)
        if if_generation_match is not None and info.generation != if_generation_match:
            raise PreconditionFailed(f"gs://{self.name}/{name}: generation is {info.generation}, not {if_generation_match}")
        if if_metageneration_match is not None and info.metageneration != if_metageneration_match:
            raise PreconditionFailed(
                f"gs://{self.name}/{name}: metageneration is {info.metageneration}, not {if_metageneration_match}"
            )
        return info

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
        src = self._bucket.blob(source)
        dst = self._bucket.blob(destination)
        token: str | None = None
        resolve = confirm_copy(self.stat, source, destination, if_source_generation_match, if_generation_match,
                               if_source_metageneration_match=if_source_metageneration_match)
        while True:  # rewrite may take several calls for a large object; each call is retried

            def attempt(timeout: Timeout) -> str | None:
                new_token, _done, _total = dst.rewrite(
                    src,
                    token=token,
                    if_generation_match=if_generation_match,
                    if_metageneration_match=if_metageneration_match,
                    if_source_generation_match=if_source_generation_match,
                    if_source_metageneration_match=if_source_metageneration_match,
                    retry=None,
                    timeout=timeout,
                )
                return new_token

            shown = f"{source} to gs://{self.name}/{destination}"
            result = self._call("copying", attempt, source, after_ambiguous=resolve, shown=shown)
            if isinstance(result, ObjectInfo):  # an attempt whose answer was lost had done it
                return result
            token = result
            if token is None:
                return self._complete(dst)

    def delete(self, name: str, if_generation_match: int | None = None, *,
               if_metageneration_match: int | None = None) -> None:
        def attempt(timeout: Timeout) -> None:
            self._bucket.blob(name).delete(if_generation_match=if_generation_match,
                                           if_metageneration_match=if_metageneration_match, retry=None, timeout=timeout)

        self._call("deleting", attempt, name, after_ambiguous=confirm_delete)

    # --- the bucket itself ---------------------------------------------------------------

    def check(self, deadline: float = 3.0) -> None:
        """Verify the bucket exists and can be listed, retrying only for ``deadline`` seconds.

        Raises BucketNotFound, PermissionDenied or TransientError with a one-line message.
        """
        quick = self.with_retry(RetryPolicy(initial_delay=0.1, max_delay=1.0, deadline=deadline), (min(deadline, 5.0), 30.0))
        try:
            quick.list_page(max_results=1)
        except BucketNotFound:
            raise BucketNotFound(f"bucket {self.name!r} does not exist (at {self.endpoint})") from None
        except PermissionDenied as exc:
            raise PermissionDenied(f"no permission to list bucket {self.name!r}: {str(exc).split(': ', 1)[-1]}") from exc
        except TransientError as exc:
            raise TransientError(f"cannot reach GCS at {self.endpoint}: {str(exc).split(': ', 1)[-1]}") from exc

    def create(self, location: str | None = None) -> None:
        """Create the bucket (used for emulators and tests); nothing happens if it exists."""

        def attempt(timeout: Timeout) -> None:
            try:
                self._client.create_bucket(self.name, location=location, retry=None, timeout=timeout)
            except api_exceptions.Conflict:
                pass

        self._call("creating bucket", attempt)
