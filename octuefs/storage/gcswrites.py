"""The writing half of :class:`~octuefs.storage.gcs.GCSBucket`: uploads (of a file, of a byte
range of one), compose, metadata patches, copies and deletes.

A small file goes up in one multipart request over :mod:`.jsonapi`, its content in memory; a
larger one resumable, in chunks, through google-cloud-storage; a byte range streams from the
file. Each request runs under the bucket's ``_call`` (errors translated, transient failures
retried: :mod:`octuefs.storage.gcs`); a create-only or replace write whose answer was lost is
recognised on its retry by the ``confirm_*`` functions of :mod:`octuefs.storage.retry`. Whether a
large file goes up in parts is decided above the bucket (:mod:`octuefs.writeback.composite`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import google_crc32c

from octuefs.errors import PreconditionFailed, StorageError, TransientError
from octuefs.storage.jsonapi import Timeout, object_info
from octuefs.storage.objects import ObjectInfo, check_sources, guess_content_type
from octuefs.storage.retry import (
    composed_fingerprint,
    confirm_copy,
    confirm_delete,
    confirm_patch,
    confirm_upload,
)

log = logging.getLogger(__name__)

Blob = Any  # google.cloud.storage.Blob, made by the bucket's ``_bucket`` (only gcs.py imports the library)

MULTIPART_MAX = 8 * 1024 * 1024  # larger files go up resumable, in chunks (as the library does)
UPLOAD_CHUNK_SIZE = 32 * 1024 * 1024  # a multiple of 256 KiB, as GCS requires


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _info(blob: Blob) -> ObjectInfo | None:
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




class GCSWrites:
    """Writing methods of :class:`~octuefs.storage.gcs.GCSBucket`, which gives them ``name``,
    ``_call``, ``_api`` (a :class:`~octuefs.storage.jsonapi.JsonApi`), ``_bucket`` (the
    library's bucket) and ``stat``."""

    def _complete(self, blob: Blob) -> ObjectInfo:
        """ObjectInfo from a write's response, stat-ing again if the response lacks fields."""
        info = _info(blob)
        if info is None:
            log.debug("response for %s lacks fields; reading its metadata back", blob.name)
            info = self.stat(blob.name)
        return info

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
        if size <= MULTIPART_MAX:
            return self._upload_small(name, path, metadata, preconditions, content_type, progress)

        def attempt(timeout: Timeout) -> Blob:
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
        return result if isinstance(result, ObjectInfo) else self._info_of(result, name)

    def _info_of(self, resource: dict, name: str) -> ObjectInfo:
        """ObjectInfo from a JSON API write's answer, stat-ing again if the answer lacks fields."""
        info = object_info(resource)
        if info is None:
            log.debug("response for %s lacks fields; reading its metadata back", name)
            info = self.stat(name)
        return info

    def upload_range(self, name: str, path: str, start: int, length: int, *, crc32c: str | None = None,
                     progress: Callable[[], None] | None = None) -> ObjectInfo:
        """One media request streaming the range from the file (:mod:`.jsonapi`), 1 MiB at a time."""

        def attempt(timeout: Timeout) -> dict:
            answer = self._api.upload_range(name, path, start, length, timeout, progress, crc32c=crc32c)
            if crc32c is not None and answer.get("crc32c") != crc32c:  # a server that does not check what it is sent
                raise TransientError(f"gs://{self.name}/{name}: stored with CRC32C {answer.get('crc32c')}, "
                                     f"sent with {crc32c}")
            return answer

        return self._info_of(self._call("uploading", attempt, name), name)

    def compose(self, sources: Sequence[str], destination: str, metadata: Mapping[str, str] | None = None,
                content_type: str | None = None, if_generation_match: int | None = None,
                if_metageneration_match: int | None = None) -> ObjectInfo:
        sources = check_sources(sources)
        metadata = dict(metadata or {})
        content_type = content_type or guess_content_type(destination)

        def attempt(timeout: Timeout) -> Blob:
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

        def attempt(timeout: Timeout) -> Blob:
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

