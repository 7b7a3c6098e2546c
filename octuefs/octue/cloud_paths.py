"""Where a Datafile is in the cloud: ``gs://`` paths and bucket names checked, and the errors
that say what is (not) there.

A name a mount could not show as a file (``a//b``, ``dir/``, ``..``) is refused here with the
reason, before any request; :func:`missing_error` and :func:`conflict_error` word the errors of
a request that found nothing, or found the object changed.
"""

from __future__ import annotations

import logging
from typing import Any

from octuefs.errors import BucketNotFound, Conflict, NotFound, StorageError
from octuefs.storage import Bucket, ObjectInfo

_log = logging.getLogger(__name__)

CLOUD_PROTOCOL = "gs://"


def split_cloud_path(path: str) -> tuple[str, str]:
    bucket, _, name = path[len(CLOUD_PROTOCOL) :].partition("/")
    if not bucket or not name:
        raise ValueError(f"{path!r} is not a cloud path of the form gs://bucket/path/in/bucket")
    return bucket, check_object_name(bucket, name)


def check_object_name(bucket: str, name: str) -> str:
    """``name``, if a datafile (a file) can be there; else ValueError saying why. A name ending in
    "/" is a directory marker to the mount (and to gcsfuse and the console): the data would be
    hidden behind an empty directory, and an ``rmdir`` of it would remove the object. A name
    with an empty, "." or ".." segment (``a//b``, ``/a``, ``a/../b``) no mount can show."""
    where = f"{CLOUD_PROTOCOL}{bucket}/{name}"
    if not name:
        raise ValueError(f"{where!r} names no object: give the path of a file in the bucket, "
                         f"like {CLOUD_PROTOCOL}{bucket}/results/data.csv")
    if name.endswith("/"):
        raise ValueError(f"{where!r} ends in '/', so it names a directory, not a file (its object would be "
                         f"a directory marker: the data hidden, and removed by an rmdir); give the file's name, "
                         f"like {where}data.csv")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            what = "an empty path segment (a leading or double slash)" if not segment else f"a {segment!r} segment"
            raise ValueError(f"{where!r} has {what}: no mount can show a file by that name; give a path "
                             f"like {CLOUD_PROTOCOL}{bucket}/results/data.csv")
    if "\0" in name or "\r" in name or "\n" in name:
        raise ValueError(f"{where!r}: an object name cannot hold a NUL, carriage return or line feed")
    return name


def bucket_name_arg(value: Any) -> str:
    """The bucket name; a 1-tuple (``bucket_name = "b",``, as in the seed's example A) is unwrapped."""
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], str):
        _log.warning("bucket_name %r is a 1-tuple (a stray trailing comma?); using %r", value, value[0])
        value = value[0]
    if not isinstance(value, str) or not value:
        raise TypeError(f"bucket_name must be a non-empty string, not {value!r}")
    if value.startswith(CLOUD_PROTOCOL):
        raise ValueError(
            f"bucket_name {value!r} is a gs:// URL: give a bucket name and a path in it, or the whole "
            "gs://bucket/path/in/bucket alone (or as cloud_path=)"
        )
    return value


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(CLOUD_PROTOCOL)


def url_in_place_of_names(project: Any, bucket_name: Any, path: Any) -> tuple[Any, Any, str | None]:
    """``(project, bucket_name, cloud_path)`` for arguments that may hold a ``gs://`` URL in place of
    the names: ``("gs://b/p")`` or ``(project, "gs://b/p")``; else the names as given and no URL."""
    if is_url(project) and bucket_name is None and path is None:
        return None, None, project
    if is_url(bucket_name) and path is None:
        return project, None, bucket_name
    return project, bucket_name, None


def missing_error(bucket: Bucket, bucket_name: str, name: str, what: str) -> NotFound:
    """The error for ``what`` on gs://bucket_name/name, which is not there: ``BucketNotFound`` if the
    bucket itself is missing (one listing asks; GCS and its emulator answer an object request in a
    missing bucket with a plain 404), else ``NotFound``."""
    where = f"{CLOUD_PROTOCOL}{bucket_name}/{name}"
    try:
        bucket.list_page(name, None, None, 1)
    except BucketNotFound:
        return BucketNotFound(f"{where}: bucket {bucket_name!r} does not exist, so {what}")
    except StorageError as exc:  # not allowed to list, say: the object's own answer stands
        _log.debug("%s: could not tell whether the bucket exists: %s", where, exc)
    return NotFound(f"{where}: no such object, so {what}")


def conflict_error(where: str, seen: ObjectInfo | None, what: str, local: str | None, exc: Exception) -> Conflict:
    version = f"generation {seen.generation}, metageneration {seen.metageneration}" if seen else "no object"
    kept = f"; the local copy is kept at {local}" if local else ""
    return Conflict(
        f"{where} changed in the bucket since this datafile read it ({version}): its {what} was not written and "
        f"the object was left as it is{kept}. Read it again with Datafile.from_cloud() and reapply the changes ({exc})"
    )
