"""Google's errors, translated once into octuefs's own (:mod:`octuefs.errors`).

Every call :class:`~octuefs.storage.gcs.GCSBucket` makes (through google-cloud-storage or
:mod:`.jsonapi`) raises what it raises through :func:`translate_error`: a status code becomes
``NotFound``, ``PreconditionFailed``, ``PermissionDenied``, ``RangeNotSatisfiable`` or a
retryable ``TransientError`` (with the server's ``Retry-After``); credentials and transport
failures become ``PermissionDenied`` (saying what to do) or ``TransientError``.
"""

from __future__ import annotations

import re
import socket

import requests
import urllib3.exceptions
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
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

