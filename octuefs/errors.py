"""octuefs's own exception types and the one table that maps each to an errno.

Every layer raises these (never ``FuseOSError`` and never a Google exception above
``storage/gcs.py``). The FUSE adapter turns them into errno values with :func:`errno_for`,
and logs them at the level the table gives, so an expected miss (ENOENT, ENODATA) stays
quiet while a surprise is logged with its cause.
"""

from __future__ import annotations

import errno
import logging


class OctuefsError(Exception):
    """Base of every error octuefs raises on purpose."""


# --- storage ---------------------------------------------------------------------------


class StorageError(OctuefsError):
    """A bucket operation failed."""


class NotFound(StorageError, FileNotFoundError):
    """The object (or bucket) does not exist. Also a FileNotFoundError, as scripts expect."""


class BucketNotFound(NotFound):
    """The bucket itself does not exist."""


class PreconditionFailed(StorageError):
    """A generation or metageneration precondition did not hold: someone else changed the object."""


class PermissionDenied(StorageError):
    """The credentials may not do this (HTTP 401/403), or there are no usable credentials."""


class TransientError(StorageError):
    """A failure worth retrying: HTTP 408/429/5xx, a reset or refused connection, a timeout.

    ``retry_after``: seconds the server asked us to wait (a ``Retry-After`` header), if any.
    """

    def __init__(self, message: str = "", retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class BucketUnreachable(TransientError):
    """Retries of transient failures ran out of time: the bucket did not answer (ETIMEDOUT).

    The message says what failed, how often and for how long, and what was being done:
    ``bucket unreachable: ReadTimeout: timed out after 3 attempts in 3.1s while listing gs://b/d/``.
    """


class RangeNotSatisfiable(StorageError):
    """A ranged read started at or past the end of the object."""


# --- metadata --------------------------------------------------------------------------


class InvalidMetadata(OctuefsError, ValueError):
    """A metadata value breaks a rule. The message names the field and the rule."""

    def __init__(self, field: str, rule: str, value: object = None):
        self.field = field
        self.rule = rule
        self.value = value
        shown = "" if value is None else f" (got {value!r:.80})"
        super().__init__(f"invalid {field}: {rule}{shown}")


class MetadataTooLarge(InvalidMetadata):
    """The custom metadata would break a GCS size limit."""


# --- extended attributes ---------------------------------------------------------------


class NoSuchAttribute(OctuefsError):
    """The extended attribute is not set on this file (ENODATA)."""


class AttributeExists(OctuefsError):
    """XATTR_CREATE was asked for an attribute that already exists (EEXIST)."""


class AttributeNotSupported(OctuefsError):
    """The filesystem does not store an attribute of this name here (ENOTSUP)."""


class ReadOnlyAttribute(OctuefsError):
    """The attribute can be read but not set or removed (EPERM)."""


class AttributeValueTooLarge(OctuefsError):
    """The value does not fit a GCS metadata limit (E2BIG)."""


# --- filesystem ------------------------------------------------------------------------


class FileNotFound(OctuefsError):
    """No file or directory at this path (ENOENT)."""


class FileExists(OctuefsError):
    """Something already exists at this path (EEXIST)."""


class IsADirectory(OctuefsError):
    """A file operation was asked of a directory (EISDIR)."""


class NotADirectory(OctuefsError):
    """A directory operation was asked of a file (ENOTDIR)."""


class DirectoryNotEmpty(OctuefsError):
    """rmdir or rename onto a directory that still holds entries (ENOTEMPTY)."""


class NameTooLong(OctuefsError):
    """A path component longer than 255 bytes (ENAMETOOLONG)."""


class FileTooLarge(OctuefsError):
    """A file would grow past what GCS keeps in one object (5 TiB), or what the cache's own
    filesystem takes (EFBIG)."""


class InvalidArgument(OctuefsError):
    """A call the filesystem cannot honour as asked (EINVAL)."""


class NotSupported(OctuefsError):
    """An operation this filesystem does not offer, or refuses by configuration (ENOTSUP)."""


class NotPermitted(OctuefsError):
    """An operation the filesystem never allows (a hard link; attributes of the mount's root)."""


class ReadOnlyFilesystem(OctuefsError):
    """The mount is read-only (EROFS)."""


class NoSpace(OctuefsError):
    """The local cache disk is full (ENOSPC)."""


class CacheUnwritable(OctuefsError):
    """The local cache directory cannot be written (removed, read-only, full of something else):
    nothing can be written into the mount until it can (EIO; ``octuefs status`` says so too)."""


class Conflict(OctuefsError):
    """The object changed in the bucket since this mount read it; the local version was kept."""


class StaleFile(OctuefsError):
    """The version of the file this handle was reading is gone from the bucket (ESTALE)."""


class UploadStillPending(OctuefsError):
    """A call that needs a file's pending upload to land first gave up waiting, because no upload
    made progress for ``--op-timeout`` seconds (ETIMEDOUT). The upload stays queued."""


class Busy(OctuefsError):
    """The object is being written through this mount (open with unsaved data): a change that
    must rewrite it whole waits for no one and is refused (EBUSY); close it and try again."""


class UploadFailed(OctuefsError):
    """The data could not be written to the bucket; it stays in the local cache (EIO)."""


# errno and the level to log at, by exception type. The most specific type wins.
_ERRNO_TABLE: dict[type[BaseException], tuple[int, int]] = {
    FileNotFound: (errno.ENOENT, logging.DEBUG),
    NotFound: (errno.ENOENT, logging.DEBUG),
    NoSuchAttribute: (errno.ENODATA, logging.DEBUG),
    FileExists: (errno.EEXIST, logging.DEBUG),
    AttributeExists: (errno.EEXIST, logging.DEBUG),
    IsADirectory: (errno.EISDIR, logging.DEBUG),
    NotADirectory: (errno.ENOTDIR, logging.DEBUG),
    DirectoryNotEmpty: (errno.ENOTEMPTY, logging.DEBUG),
    NameTooLong: (errno.ENAMETOOLONG, logging.DEBUG),
    FileTooLarge: (errno.EFBIG, logging.INFO),
    AttributeNotSupported: (errno.ENOTSUP, logging.DEBUG),
    ReadOnlyAttribute: (errno.EPERM, logging.INFO),
    ReadOnlyFilesystem: (errno.EROFS, logging.DEBUG),
    NotPermitted: (errno.EPERM, logging.INFO),
    InvalidMetadata: (errno.EINVAL, logging.WARNING),
    MetadataTooLarge: (errno.E2BIG, logging.WARNING),
    AttributeValueTooLarge: (errno.E2BIG, logging.WARNING),
    InvalidArgument: (errno.EINVAL, logging.WARNING),
    NotSupported: (errno.ENOTSUP, logging.WARNING),
    NoSpace: (errno.ENOSPC, logging.ERROR),
    CacheUnwritable: (errno.EIO, logging.ERROR),
    PermissionDenied: (errno.EACCES, logging.ERROR),
    PreconditionFailed: (errno.EIO, logging.WARNING),
    Conflict: (errno.EIO, logging.WARNING),
    BucketUnreachable: (errno.ETIMEDOUT, logging.ERROR),
    UploadStillPending: (errno.ETIMEDOUT, logging.WARNING),
    TransientError: (errno.EIO, logging.ERROR),
    RangeNotSatisfiable: (errno.EIO, logging.ERROR),
    UploadFailed: (errno.EIO, logging.ERROR),
    Busy: (errno.EBUSY, logging.WARNING),
    StaleFile: (errno.ESTALE, logging.WARNING),
    StorageError: (errno.EIO, logging.ERROR),
}


def errno_for(exc: BaseException) -> tuple[int, int]:
    """Return ``(errno, log level)`` for an exception; anything unknown is EIO at ERROR."""
    for cls in type(exc).__mro__:
        if cls in _ERRNO_TABLE:
            return _ERRNO_TABLE[cls]
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno, logging.WARNING
    return errno.EIO, logging.ERROR
