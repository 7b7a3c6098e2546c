"""Local Datafile metadata on disk: the Octue SDK's ``.octue`` file, one per directory.

The file is shared with the SDK (``octue`` 0.69.1), so it is read and written in the SDK's layout::

    {"datafiles": {"<file name>": {"id": ..., "timestamp": ..., "tags": {...}, "labels": ..., ...}},
     "dataset": {...}}

Only the record of the datafile being written changes; every other key and record (the
``dataset`` record, other files' records, keys a newer SDK adds) is kept as it was. The codec is
:mod:`octuefs.octue.metadata`'s; this module only reads and writes the file.

Beyond the SDK: a write re-reads the file just before changing it (the SDK answers from a
per-process cache, so two processes overwrite each other's records), holds an exclusive ``flock``
on the directory meanwhile (between octuefs writers; the SDK takes none), and replaces the file
atomically (a crash leaves the old file or the new one, never half of one). A file that is not
valid JSON reads as empty with a warning, as in the SDK, but is not overwritten: writing raises
:class:`LocalMetadataError` naming it, where the SDK would silently replace it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from octuefs.octue.metadata import (
    LOCAL_METADATA_FILENAME,
    OctueMetadata,
    decode_local_record,
    dumps_local_metadata,
    encode_local_record,
    loads_local_metadata,
)

_log = logging.getLogger(__name__)

__all__ = ["LocalMetadataError", "metadata_path", "read_record", "write_record"]


class LocalMetadataError(ValueError):
    """A ``.octue`` file that cannot be read as the SDK's layout, so it is not overwritten."""


def metadata_path(local_path: str | os.PathLike) -> str:
    """The ``.octue`` file that holds the metadata of the file at ``local_path``."""
    return os.path.join(os.path.dirname(os.path.abspath(local_path)), LOCAL_METADATA_FILENAME)


def _load(path: str) -> dict[str, Any]:
    """The file's content; ``{}`` if there is none; LocalMetadataError if it is malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    try:
        data = loads_local_metadata(text)
    except (ValueError, RecursionError) as exc:
        raise LocalMetadataError(f"{path} is not a valid Octue metadata file ({exc}); fix or delete it") from None
    if not isinstance(data.get("datafiles", {}), dict):
        raise LocalMetadataError(f"{path}: \"datafiles\" is not a JSON object; fix or delete it")
    return data


def read_record(local_path: str | os.PathLike) -> OctueMetadata | None:
    """The metadata recorded for the file at ``local_path``, or None if there is no record.

    A malformed ``.octue`` file logs a warning and reads as having no record (as in the SDK).
    """
    path = metadata_path(local_path)
    try:
        data = _load(path)
    except LocalMetadataError as exc:
        _log.warning("%s; its metadata is ignored", exc)
        return None
    except OSError as exc:  # unreadable (permissions, a directory of that name...): as if absent, but said
        _log.warning("cannot read %s (%s); its metadata is ignored", path, exc)
        return None
    record = data.get("datafiles", {}).get(os.path.basename(local_path))
    return None if record is None else decode_local_record(record)


def write_record(local_path: str | os.PathLike, meta: OctueMetadata) -> bool:
    """Record ``meta`` for the file at ``local_path``; return whether the file changed.

    Nothing is written if the record already reads as ``meta``. Raises LocalMetadataError if the
    existing file is malformed, and ``OSError`` if the directory cannot be written.
    """
    path = metadata_path(local_path)
    name = os.path.basename(local_path)
    with _locked(os.path.dirname(path)):
        data = _load(path)
        datafiles = data.get("datafiles") or {}
        record = encode_local_record(meta, datafiles.get(name))
        if name in datafiles and datafiles[name] == record:
            return False
        data["datafiles"] = {**datafiles, name: record}
        _replace(path, dumps_local_metadata(data))
    _log.debug("recorded the metadata of %s in %s", local_path, path)
    return True


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """An exclusive lock on ``directory`` (between octuefs processes updating its ``.octue``); where
    the filesystem has no ``flock`` (some network filesystems), none, as in the SDK."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            _log.debug("no lock on %s (%s): updating its %s unlocked", directory, exc, LOCAL_METADATA_FILENAME)
        yield
    finally:
        os.close(fd)


def _replace(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, keeping the permissions of the file it replaces."""
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, temporary = tempfile.mkstemp(prefix=LOCAL_METADATA_FILENAME + ".", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
