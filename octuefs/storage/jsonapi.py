"""The hot calls of the GCS JSON API, made directly over urllib3.

google-cloud-storage spends most of a small call's CPU in its own layers and in requests.
Measured per 4 KiB upload against fake-gcs-server on this project's 2-core machines: 1.14 ms of
CPU through the library, 0.92 ms through its requests session, 0.37 ms through urllib3; a
ranged download read 8 KiB at a time cost 5x the CPU of reading it 1 MiB at a time. In a daemon
whose FUSE threads share one interpreter lock with its uploads, that CPU is the small-file rate
and the read speed. So the calls made once per file or per block (stat, list, ranged read,
single-request upload) go through :class:`JsonApi`; the rest (resumable and composite uploads,
compose, patch, copy, delete) through the library, as before.

Requests carry the client's credentials (:class:`_Authorized`: the bearer token, refreshed as
google-auth's own transports do, each refresh bounded by the timeout of the request that needed
it, so by ``--op-timeout`` inside a bounded call). Failures are raised as the library's exceptions
(``google.api_core.exceptions`` for HTTP errors, urllib3's for the network), so
``gcs.translate_error`` sees one kind of error whichever path a call took.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import statistics
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import quote, urlencode

import google.auth.transport.urllib3
import msgspec
import orjson
import requests.adapters
import requests.certs
import requests.utils
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials

from octuefs.storage.objects import NO_METADATA, ObjectInfo

Timeout = float | tuple[float, float]
T = TypeVar("T")
DEFAULT_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)
_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client -> its _Authorized pool
_SHARED_LOCK = threading.Lock()


# What a listing asks GCS to send of each object: the fields object_info reads, no more (a
# partial response: GCS leaves out selfLink, mediaLink, id, etag, timeCreated, ... which were
# half of each entry's bytes and of its decoding). fake-gcs-server sends every field regardless.
OBJECT_FIELDS = ("name", "size", "generation", "metageneration", "updated", "crc32c", "md5Hash", "contentType",
                 "storageClass", "metadata")
LIST_FIELDS = f"items({','.join(OBJECT_FIELDS)}),prefixes,nextPageToken"


def object_info(resource: Mapping) -> ObjectInfo | None:
    """ObjectInfo from an object resource, or None if it lacks a field octuefs relies on."""
    try:
        metadata = resource.get("metadata")
        return ObjectInfo(  # positional: a listing makes thousands
            resource["name"],
            int(resource["size"]),
            int(resource["generation"]),
            int(resource["metageneration"]),
            parse_time(resource["updated"]),
            resource.get("crc32c"),
            resource.get("md5Hash"),
            resource.get("contentType"),
            resource.get("storageClass"),
            MappingProxyType(metadata) if type(metadata) is dict else metadata,  # the answer's own: not copied
        )
    except (KeyError, TypeError, ValueError):
        return None


class _Listed(msgspec.Struct, gc=False):
    """The fields of a listed object that :func:`object_info` reads, as :func:`decode_listing`
    takes them: the numbers as GCS sends them (int64 as a decimal string; a JSON number taken
    too), made ints here with ``int()`` as object_info does, so that both read alike."""

    name: str
    size: str | int
    generation: str | int
    metageneration: str | int
    updated: str
    crc32c: str | None = None
    md5Hash: str | None = None  # noqa: N815 (GCS's name)
    contentType: str | None = None  # noqa: N815
    storageClass: str | None = None  # noqa: N815
    metadata: dict[str, str] | None = None


class _ListAnswer(msgspec.Struct, gc=False):
    items: list[_Listed] = []
    prefixes: list[str] = []
    nextPageToken: str | None = None  # noqa: N815


_LIST_DECODER = msgspec.json.Decoder(_ListAnswer)


def decode_listing(page: bytes) -> tuple[list[ObjectInfo], list[str], str | None] | None:
    """A listing page's objects, prefixes and next token, as ``object_info`` of each item of
    the decoded page would give them; None for an answer it cannot take whole (a field of
    another type than GCS sends, a missing field, an unreadable time, not JSON): the caller
    then decodes it the general way, which says what is wrong.

    A typed decoder (msgspec) reads only the fields object_info reads and skips the rest
    without making objects of them: fake-gcs-server sends every field of every object (about
    1 KB each, its ACL included, whatever ``fields=`` asks), and decoding all of it was the
    largest part of a cold ``ls -l``'s CPU (5,000 objects: 40 ms with orjson and object_info,
    10 ms here)."""
    try:
        answer = _LIST_DECODER.decode(page)
    except msgspec.DecodeError:  # (ValidationError included)
        return None
    new, proxy, empty = tuple.__new__, MappingProxyType, NO_METADATA
    try:
        objects = [
            new(ObjectInfo, (o.name, int(o.size), int(o.generation), int(o.metageneration), parse_time(o.updated),
                             o.crc32c, o.md5Hash, o.contentType, o.storageClass,
                             proxy(o.metadata) if o.metadata is not None else empty))
            for o in answer.items
        ]
    except (TypeError, ValueError):
        return None
    return objects, answer.prefixes, answer.nextPageToken or None


_NEXT_TOKEN = re.compile(rb'"nextPageToken"\s*:\s*"((?:[^"\\]|\\.)*)"')


def guess_next_token(page: bytes) -> str | None:
    """The ``nextPageToken`` of an undecoded listing page, found without decoding the page (a
    tenth of the time). A guess: the first such key may be an object's custom metadata, so the
    decoded page has the last word."""
    at = page.find(b'"nextPageToken"')  # (a plain search first: the pattern would scan a last page whole)
    found = _NEXT_TOKEN.search(page, at) if at >= 0 else None
    if found is None:
        return None
    try:
        return orjson.loads(b'"' + found.group(1) + b'"') or None
    except orjson.JSONDecodeError:
        return None


_UTC = dt.timezone.utc


def parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)  # (3.11 and later: "Z", and nanoseconds, truncated)
    tz = value.tzinfo
    if tz is _UTC:  # (GCS's own form, "...Z": as it is)
        return value
    return value.replace(tzinfo=_UTC) if tz is None else value.astimezone(_UTC)


def _pool_manager(base_url: str, pool_size: int, trust_env: bool) -> urllib3.PoolManager:
    """A pool for ``base_url`` that trusts and routes as the library's requests session does:
    the proxy the environment names for it (with its credentials; SOCKS needs PySocks, as for
    requests), the CA bundle in ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (a file or a
    directory), else certifi's. A request that gives no timeout (a token refresh) gets
    :data:`DEFAULT_TIMEOUT`."""
    ca = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")) if trust_env else None
    ca = ca or requests.certs.where()
    options = {"maxsize": pool_size, "block": False, "retries": False, "timeout": DEFAULT_TIMEOUT,
               "cert_reqs": "CERT_REQUIRED", ("ca_cert_dir" if os.path.isdir(ca) else "ca_certs"): ca}
    proxy = requests.utils.select_proxy(base_url, requests.utils.get_environ_proxies(base_url)) if trust_env else None
    if not proxy:
        return urllib3.PoolManager(**options)
    if proxy.lower().startswith("socks"):
        from urllib3.contrib.socks import (
            SOCKSProxyManager,  # needs PySocks, as requests does
        )

        return SOCKSProxyManager(proxy, **options)
    return urllib3.ProxyManager(proxy, proxy_headers=requests.adapters.HTTPAdapter().proxy_headers(proxy), **options)


class RoundTrips:
    """How far the bucket is: the wall-clock time and this thread's CPU time of recent small
    requests that ran (nearly) alone, up to their answer's headers. Many at once wait for the
    interpreter's lock in turn (wall time that is the CPU's, not the network's), and a request
    over ``LONGEST`` s met an outage; neither is noted. Thread-safe."""

    SAMPLES = 32
    ALONE = 2  # requests in flight at most, this one included
    LONGEST = 2.0
    SMALL_BODY = 64 * 1024  # bytes: larger bodies take CPU and time to send, on any network

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0  # guarded by _lock
        self._samples: deque[tuple[float, float]] = deque(maxlen=self.SAMPLES)  # (wall, cpu); _lock

    def time(self, body, send: Callable[[], T]) -> T:
        """``send()``, timed if ``body`` (bytes or None) is small."""
        with self._lock:
            self._in_flight += 1
            alone = self._in_flight <= self.ALONE
        started, cpu = time.monotonic(), time.thread_time()
        try:
            result = send()
        finally:
            with self._lock:
                wall = time.monotonic() - started
                if (alone and self._in_flight <= self.ALONE and wall < self.LONGEST
                        and (body is None or isinstance(body, bytes) and len(body) <= self.SMALL_BODY)):
                    self._samples.append((wall, time.thread_time() - cpu))
                self._in_flight -= 1
        return result

    def estimate(self) -> tuple[float, float, int]:
        """(the fastest request's wall time, a typical request's CPU time, how many were timed);
        (0.0, 0.0, 0) before any."""
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return 0.0, 0.0, 0
        return min(w for w, _ in samples), statistics.median(c for _, c in samples), len(samples)


class _Authorized:
    """A pool whose requests carry the client's credentials: the bearer token, refreshed when
    due and once more after a 401 (what google-auth's AuthorizedHttp does, but releasing the
    refused response's connection). A request whose body is a stream, which cannot be sent
    twice, is not sent again: its 401 stands, and the caller's retry sends it anew with the
    refreshed token."""

    def __init__(self, credentials, pool: urllib3.PoolManager):
        self.credentials = credentials
        self.pool = pool
        self.round_trips = RoundTrips()  # of this pool's requests
        self._auth_request = google.auth.transport.urllib3.Request(pool)  # token refreshes go through the pool

    def urlopen(self, method: str, url: str, headers: dict[str, str], **kwargs) -> urllib3.BaseHTTPResponse:
        """``kwargs["timeout"]`` (a urllib3 Timeout) bounds a token refresh this request makes
        as well: a call cut to the caller's deadline (``--op-timeout``) is not kept waiting
        for a token server beyond it."""
        auth = _TimedRequest(self._auth_request, kwargs.get("timeout"))
        for attempt in (1, 2):
            sent = dict(headers)
            self.credentials.before_request(auth, method, url, sent)
            response = self.pool.urlopen(method, url, headers=sent, **kwargs)
            if response.status != 401 or attempt == 2 or isinstance(self.credentials, AnonymousCredentials):
                return response
            if not isinstance(kwargs.get("body"), (bytes, type(None))):
                self.credentials.refresh(auth)
                return response
            response.drain_conn()
            response.release_conn()
            self.credentials.refresh(auth)
        raise AssertionError("unreachable")


class _TimedRequest:
    """google-auth's transport for token refreshes, each request of it bounded by the timeout of
    the call that needed the token (whole: connecting, and the answer within the read timeout)."""

    def __init__(self, request: google.auth.transport.urllib3.Request, timeout: urllib3.Timeout | None):
        self._request = request
        self._timeout = timeout

    def __call__(self, url: str, method: str = "GET", body=None, headers=None, timeout=None, **kwargs):
        bound = self._timeout
        if bound is not None:
            read = bound.read_timeout if isinstance(bound.read_timeout, (int, float)) else None
            connect = bound.connect_timeout if isinstance(bound.connect_timeout, (int, float)) else None
            limits = [t for t in (timeout, read) if isinstance(t, (int, float))]
            total = min(limits) if limits else None
            timeout = urllib3.Timeout(connect=connect, read=total, total=total)
        return self._request(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)


class JsonApi:
    """Stat, list, ranged read and multipart upload in one bucket. Thread-safe; buckets that
    share a client share one (:func:`for_client`), and so its connections."""

    def __init__(self, credentials, base_url: str, bucket: str, user_project: str | None = None,
                 http: _Authorized | None = None):
        self._http = http if http is not None else _Authorized(credentials, _pool_manager(base_url, 64, True))
        self._base = base_url.rstrip("/")
        self._bucket = quote(bucket, safe="")
        self._user_project = user_project

    @classmethod
    def for_client(cls, client, bucket: str, user_project: str | None, pool_size: int) -> JsonApi:
        """For a google-cloud-storage client: its credentials, endpoint and proxy settings."""
        with _SHARED_LOCK:
            http = _SHARED.get(client)
            if http is None:
                base = client._connection.API_BASE_URL
                http = _Authorized(client._credentials,
                                   _pool_manager(base, pool_size, getattr(client._http, "trust_env", True)))
                _SHARED[client] = http
        return cls(None, client._connection.API_BASE_URL, bucket, user_project, http)

    def round_trip(self) -> tuple[float, float, int]:
        """See :meth:`RoundTrips.estimate` (of every bucket sharing this client)."""
        return self._http.round_trips.estimate()

    def _url(self, path: str, query: list[tuple[str, str]]) -> str:
        if self._user_project is not None:
            query = query + [("userProject", self._user_project)]
        return f"{self._base}{path}?{urlencode(query)}"

    def _object_path(self, name: str) -> str:
        return f"/b/{self._bucket}/o/{quote(name, safe='')}"

    def _request(self, method: str, url: str, timeout: Timeout, *, body: bytes | Iterable[bytes] | None = None,
                 headers: Mapping[str, str] | None = None, stream: bool = False) -> urllib3.BaseHTTPResponse:
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        response = self._http.round_trips.time(body, lambda: self._http.urlopen(
            method, url, body=body, headers=dict(headers or {}), redirect=False, retries=False,
            preload_content=not stream, timeout=urllib3.Timeout(connect=connect, read=read)))
        if response.status >= 300:
            error = _error(method, url, response)  # (reads the body: errors are small)
            response.drain_conn()
            response.release_conn()
            raise error
        return response

    def _json(self, method: str, url: str, timeout: Timeout, **kwargs) -> dict:
        return orjson.loads(self._request(method, url, timeout, **kwargs).data or b"{}")

    # --- the calls -------------------------------------------------------------------------

    def get_object(self, name: str, generation: int | None, timeout: Timeout) -> dict:
        query = [("projection", "noAcl")] + ([("generation", str(generation))] if generation is not None else [])
        return self._json("GET", self._url("/storage/v1" + self._object_path(name), query), timeout)

    def list_objects(self, prefix: str, delimiter: str | None, page_token: str | None, max_results: int,
                     timeout: Timeout) -> bytes:
        """A page of a listing, undecoded (see :func:`guess_next_token`)."""
        query = [("projection", "noAcl"), ("maxResults", str(max_results)), ("fields", LIST_FIELDS)]
        query += [(k, v) for k, v in (("prefix", prefix), ("delimiter", delimiter), ("pageToken", page_token)) if v]
        if delimiter:  # each prefix's own marker object comes as an item too (ListPage.markers)
            query.append(("includeTrailingDelimiter", "true"))
        return self._request("GET", self._url(f"/storage/v1/b/{self._bucket}/o", query), timeout).data or b"{}"

    def read_range(self, name: str, start: int, end: int, generation: int | None, timeout: Timeout,
                   sink: Callable[[int, bytes], None], chunk_size: int) -> int:
        """Bytes [start, end) (fewer at the object's end) to ``sink(offset, chunk)`` as they arrive."""
        query = [("alt", "media")] + ([("generation", str(generation))] if generation is not None else [])
        # Accept-Encoding: the stored bytes, as the object's size counts them, never transcoded.
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "gzip"}
        response = self._request("GET", self._url("/download/storage/v1" + self._object_path(name), query), timeout,
                                 headers=headers, stream=True)
        try:
            skip = start if response.status == 200 else 0  # a server that ignored the range sends it all
            content_range = response.headers.get("Content-Range")
            if response.status == 206 and content_range and not content_range.startswith(f"bytes {start}-"):
                raise api_exceptions.from_http_status(
                    502, f"asked for bytes from {start}, got {content_range!r}", response=response)
            at = start
            while at < end:
                chunk = response.read(min(chunk_size, end - at + skip), decode_content=False)
                if not chunk:
                    break
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                    if not chunk:
                        continue
                sink(at, chunk)
                at += len(chunk)
        except BaseException:
            response.close()  # its body is unread: the connection cannot serve another request
            raise
        if response.status == 206 and response.length_remaining == 0:
            response.release_conn()  # the whole body was read: the connection is reusable
        else:
            response.close()  # a body left unread (more than asked for, or no length given)
        return at - start

    def upload_range(self, name: str, path: str, start: int, length: int, timeout: Timeout,
                     progress: Callable[[], None] | None = None, piece: int = 1 << 20,
                     crc32c: str | None = None) -> dict:
        """A new object made of bytes [start, start + length) of a file, sent as they are read
        (one media request, no metadata): at most one ``piece`` of it in memory. ``crc32c``
        (base64) goes with it in ``X-Goog-Hash``, for the server to check."""
        query = [("uploadType", "media"), ("name", name), ("projection", "noAcl")]
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
        if crc32c is not None:
            headers["X-Goog-Hash"] = f"crc32c={crc32c}"
        body = _file_pieces(path, start, length, piece, progress)
        return self._json("POST", self._url(f"/upload/storage/v1/b/{self._bucket}/o", query), timeout,
                          body=body, headers=headers)

    def upload(self, name: str, data: bytes, metadata: Mapping[str, str], content_type: str,
               if_generation_match: int | None, crc32c: bytes, timeout: Timeout,
               if_metageneration_match: int | None = None) -> dict:
        """One multipart request: the resource (metadata, content type, CRC32C for the server to
        check) and the content, created only if ``if_generation_match`` and
        ``if_metageneration_match`` hold."""
        resource = {"name": name, "metadata": dict(metadata), "contentType": content_type,
                    "crc32c": base64.b64encode(crc32c).decode()}
        boundary = f"octuefs-{uuid.uuid4().hex}".encode()
        body = b"".join([
            b"--", boundary, b"\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n",
            json.dumps(resource).encode(),
            b"\r\n--", boundary, b"\r\ncontent-type: ", content_type.encode("latin-1", "replace"), b"\r\n\r\n",
            data,
            b"\r\n--", boundary, b"--\r\n",
        ])
        query = [("uploadType", "multipart"), ("projection", "noAcl")]
        if if_generation_match is not None:
            query.append(("ifGenerationMatch", str(if_generation_match)))
        if if_metageneration_match is not None:
            query.append(("ifMetagenerationMatch", str(if_metageneration_match)))
        headers = {"Content-Type": f'multipart/related; boundary="{boundary.decode()}"'}
        return self._json("POST", self._url(f"/upload/storage/v1/b/{self._bucket}/o", query), timeout,
                          body=body, headers=headers)


def _file_pieces(path: str, start: int, length: int, piece: int, progress: Callable[[], None] | None):
    """Bytes [start, start + length) of the file at ``path``, ``piece`` bytes at a time."""
    with open(path, "rb") as f:
        left = length
        while left:
            chunk = os.pread(f.fileno(), min(piece, left), start + length - left)
            if not chunk:
                raise OSError(f"{path} ended {left} bytes early while being uploaded")
            left -= len(chunk)
            if progress is not None:
                progress()
            yield chunk


def _error(method: str, url: str, response: urllib3.BaseHTTPResponse) -> api_exceptions.GoogleAPICallError:
    """The library's exception for an error response (its message from the JSON error body)."""
    data = response.data or b""  # (read whole: errors are small)
    try:
        message = json.loads(data)["error"]["message"]
    except (ValueError, TypeError, KeyError):
        message = data.decode("utf-8", "replace")[:300] or response.reason or ""
    # The server's words first: what they say ("bucket does not exist") must survive truncation.
    return api_exceptions.from_http_status(response.status, f"{message} ({method} {url})", response=response)
