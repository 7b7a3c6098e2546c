"""Object storage for octuefs: the Bucket protocol and a way to open a real (or emulated) bucket.

``octuefs.storage`` imports without Google's library; :func:`open_bucket` loads
:mod:`octuefs.storage.gcs` (which, with :mod:`octuefs.storage.jsonapi`, is the only module that
imports ``google.*``) when it is called. Nothing here keeps state on local disk: how large files
are uploaded, and the ledger of their parts, live above (:mod:`octuefs.writeback.composite`).
"""

from __future__ import annotations

from octuefs.storage.base import Bucket, ListPage, ObjectInfo, RetryPolicy
from octuefs.storage.objects import DEFAULT_CONTENT_TYPE, SentPage, guess_content_type

__all__ = ["Bucket", "ListPage", "ObjectInfo", "RetryPolicy", "SentPage", "open_bucket", "open_checked",
           "guess_content_type", "DEFAULT_CONTENT_TYPE"]


def open_bucket(
    name: str,
    project: str | None = None,
    retry: RetryPolicy | None = None,
    check: bool = True,
    *,
    endpoint: str | None = None,
    check_deadline: float = 3.0,
    connections: int = 1,
) -> Bucket:
    """Open GCS bucket ``name``: on the emulator at ``endpoint`` (e.g. ``Emulator.url``) or at
    ``STORAGE_EMULATOR_HOST`` if either is given, else on GCS with Application Default Credentials.

    With ``check``, make one listing request first (retried for at most ``check_deadline``
    seconds, so a wrong emulator address fails fast; ``connections`` of them at once, which leaves
    that many connections open for what comes next) and raise a one-line error:
    ``BucketNotFound("bucket 'x' does not exist ...")``, ``PermissionDenied`` (no credentials or
    no access, with what to do about it) or ``TransientError("cannot reach GCS at <url>: ...")``.
    """
    from octuefs.storage import gcs

    bucket = gcs.GCSBucket(name, project=project, retry=retry or RetryPolicy(), endpoint=endpoint)
    if check:
        bucket.check(deadline=check_deadline, connections=connections)
    return bucket


def open_checked(
    name: str,
    project: str | None = None,
    retry: RetryPolicy | None = None,
    *,
    endpoint: str | None = None,
    check_deadline: float = 3.0,
    connections: int = 1,
    prefix: str = "",
    page_size: int = 1,
) -> tuple[Bucket, SentPage]:
    """:func:`open_bucket` with its check, whose listing is the first page of ``prefix``
    (``page_size`` entries, delimiter ``/``): the bucket, and that page with when it was asked
    for (a mount keeps it as its root's first page). The same one-line errors."""
    bucket = open_bucket(name, project, retry, check=False, endpoint=endpoint)
    page = bucket.check(deadline=check_deadline, connections=connections, prefix=prefix, page_size=page_size)
    return bucket, page
