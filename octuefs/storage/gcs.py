"""The Bucket protocol on Google Cloud Storage (or fake-gcs-server), via google-cloud-storage.

The transport is in four modules: this one (the client, the error translation, the bucket and
its one retry loop), :mod:`.gcsreads` (listings, stats, reads, downloads), :mod:`.gcswrites`
(uploads, compose, patch, copy, delete) and :mod:`.jsonapi` (stat, list, ranged reads and small
uploads, made with urllib3 for CPU's sake). This module and :mod:`.jsonapi` are the only octuefs
modules that import ``google.*``. Everything either raises is translated into octuefs errors in
one place, :func:`translate_error`; the library's own retries
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

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import requests
import requests.adapters
import urllib3.exceptions
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions

from octuefs.errors import (
    BucketNotFound,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
    TransientError,
)
from octuefs.storage.base import Bucket
from octuefs.storage.gcsreads import GCSReads
from octuefs.storage.gcswrites import GCSWrites
from octuefs.storage.jsonapi import JsonApi, Timeout
from octuefs.storage.objects import RetryPolicy, SentPage
from octuefs.storage.retry import Retrier, current_bound, cut_to

log = logging.getLogger(__name__)

T = TypeVar("T")

EMULATOR_PROJECT = "octuefs-local"
# HTTP connections kept per host, in each of the two pools (the library's requests session, and
# JsonApi's): at least the threads that may make a request at once, so that none opens a new
# connection (a TCP and TLS handshake: two or three round trips on GCS) or discards one: the FUSE
# threads (10), the upload workers (32 small at a distance), composite parts (4), block fetches
# (8), listing pages and read-ahead besides. Idle connections cost a file descriptor each.
POOL_SIZE = 128
DEFAULT_TIMEOUT = (10.0, 60.0)  # seconds: (connect, read between bytes)

# --- errors --------------------------------------------------------------------------------

CREDENTIALS_HINT = (
    "no usable Google Cloud credentials: run `gcloud auth application-default login` "
    "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
)

_TRANSIENT_STATUS = {408, 429}
_PRECONDITION_STATUS = {304, 412}
_PERMISSION_STATUS = {401, 403}


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


def _quietly(bucket: GCSBucket, prefix: str) -> None:
    """A one-object listing whose answer nobody needs (:meth:`GCSBucket.check`'s others): an
    error is the first one's to report, if it meets it too."""
    try:
        bucket.list_page(prefix, max_results=1)
    except Exception as exc:
        log.debug("an extra listing while checking the bucket failed: %s", exc)


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


# --- the bucket ----------------------------------------------------------------------------


class GCSBucket(GCSReads, GCSWrites, Bucket):
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
    ):
        """``endpoint``: an emulator's URL (overrides STORAGE_EMULATOR_HOST); ``timeout``: per
        HTTP request, seconds or (connect, read)."""
        self.name = name
        self.retry_policy = retry
        self.timeout = timeout
        self._client = client if client is not None else make_client(project, endpoint=endpoint)
        self._bucket = self._client.bucket(name)
        self._api = JsonApi.for_client(self._client, name, self._bucket.user_project, POOL_SIZE)
        self._retrier = Retrier(retry)

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
        return GCSBucket(self.name, client=self._client, retry=retry, timeout=timeout or self.timeout)

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

    # --- the bucket itself ---------------------------------------------------------------

    def check(self, deadline: float = 3.0, connections: int = 1, prefix: str = "", page_size: int = 1) -> SentPage:
        """Verify the bucket exists and can be listed, retrying only for ``deadline`` seconds:
        list the first page of ``prefix`` (delimiter ``/``, ``page_size`` entries) and return it
        with when it was asked for (a mount keeps it as its root's first page: its first lookups
        then ask the bucket nothing).

        With ``connections`` > 1, once the check's listing is answered, that many one-object
        listings go out at once (the first's connection among them), so as many connections are
        open and pooled when it returns: a
        fresh mount's first requests that go out together (a lookup's listing beside its probe,
        a read's GET beside its read-ahead) then pay no handshake, a round trip each here and
        more with TLS.

        Raises BucketNotFound, PermissionDenied or TransientError with a one-line message.
        """
        quick = self.with_retry(RetryPolicy(initial_delay=0.1, max_delay=1.0, deadline=deadline), (min(deadline, 5.0), 30.0))
        until = time.monotonic() + deadline
        sent = time.monotonic()  # (before the first attempt: a retried one's answer is no older than this)
        try:
            page = quick.list_page(prefix, "/", max_results=page_size)
        except BucketNotFound:
            raise BucketNotFound(f"bucket {self.name!r} does not exist (at {self.endpoint})") from None
        except PermissionDenied as exc:
            raise PermissionDenied(f"no permission to list bucket {self.name!r}: {str(exc).split(': ', 1)[-1]}") from exc
        except TransientError as exc:
            raise TransientError(f"cannot reach GCS at {self.endpoint}: {str(exc).split(': ', 1)[-1]}") from exc
        # The others only once the first was answered: its credentials' token is then at hand
        # for them (four at once would each fetch one), and a failing endpoint gets one check,
        # not four. Waited for within the deadline in all; they end on their own (daemon threads).
        extra = [threading.Thread(target=_quietly, args=(quick, prefix), name="octuefs-warm", daemon=True)
                 for _ in range(connections if connections > 1 else 0)]
        for thread in extra:
            thread.start()
        for thread in extra:
            thread.join(max(0.0, until - time.monotonic()))
        return SentPage(prefix, page, sent)

    def create(self, location: str | None = None) -> None:
        """Create the bucket (used for emulators and tests); nothing happens if it exists."""

        def attempt(timeout: Timeout) -> None:
            try:
                self._client.create_bucket(self.name, location=location, retry=None, timeout=timeout)
            except api_exceptions.Conflict:
                pass

        self._call("creating bucket", attempt)
