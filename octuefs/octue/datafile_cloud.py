"""The cloud side of a Datafile: sending its content and metadata to the bucket.

:class:`CloudWrites` is the part of :class:`~octuefs.octue.datafile.Datafile` that writes:
``to_cloud`` (to its own location or a new one), ``upload`` and ``update_cloud_metadata``.
Changed content goes up with its metadata in ONE upload preconditioned on the generation (and
metageneration) read; a metadata-only change is ONE patch of the changed keys, re-applied to a
change made elsewhere meanwhile by the rule the mount's setfattr follows too
(:mod:`octuefs.octue.merge`); any other failed precondition is a
:class:`~octuefs.errors.Conflict` that overwrites nothing. The Datafile
supplies the state (``_location``, ``_info``, ``_raw``...) and its bucket (``_get_bucket``,
``_bucket_for``).
"""

from __future__ import annotations

import logging
import os

from octuefs.errors import BucketNotFound, Conflict, NotFound, PreconditionFailed
from octuefs.octue.cloud_paths import (
    bucket_name_arg,
    check_object_name,
    conflict_error,
    missing_error,
    split_cloud_path,
    url_in_place_of_names,
)
from octuefs.octue.merge import reapply
from octuefs.octue.metadata import (
    check_size_limits,
    decode_object_metadata,
    encode_object_metadata,
    metadata_delta,
)
from octuefs.storage import Bucket, ObjectInfo
from octuefs.storage.retry import file_md5

_log = logging.getLogger(__name__)

RACE_ATTEMPTS = 5  # patches re-applied after changes elsewhere, before giving up (Conflict)


class CloudWrites:
    """What a Datafile sends to the cloud (a mixin of :class:`~octuefs.octue.datafile.Datafile`)."""

    def to_cloud(
        self, project_name: str | None = None, bucket_name: str | None = None, path_in_bucket: str | None = None,
        *, cloud_path: str | None = None, bucket: Bucket | None = None,
    ) -> str:
        """Send the datafile to the cloud and return its ``gs://`` path. To a new location: one stat
        of the destination, then one upload of data and metadata replacing only what the stat saw
        (keeping its non-Octue keys; the datafile's own id replaces the object's, as in the SDK).
        To its own location: one upload if the content changed, else :meth:`update_cloud_metadata`.

        The destination may also be a ``gs://bucket/path`` URL: ``to_cloud(project_name, "gs://b/p")``,
        ``to_cloud(cloud_path="gs://b/p")`` or ``to_cloud("gs://b/p")``."""
        if cloud_path is None:
            project_name, bucket_name, cloud_path = url_in_place_of_names(project_name, bucket_name, path_in_bucket)
        if cloud_path is not None:
            if bucket_name is not None or path_in_bucket is not None:
                raise ValueError("to_cloud() takes a cloud_path or a bucket_name and path_in_bucket, not both")
            bucket_name, path_in_bucket = split_cloud_path(cloud_path)
        bucket_name = bucket.name if bucket_name is None and bucket is not None else bucket_name
        bucket_name = bucket_name_arg(bucket_name) if bucket_name else self.bucket_name
        target = (bucket_name, path_in_bucket or self.path_in_bucket)
        if target[0] is None or target[1] is None:
            raise ValueError(f"{self!r} is not in the cloud yet: to_cloud() needs bucket_name and path_in_bucket")
        check_object_name(*target)
        self._project_name = project_name or self._project_name
        if target == self._location and bucket in (None, self._bucket):
            if self._content_changed():
                self._sync_content()
            else:
                self.update_cloud_metadata()
        else:
            self._upload_to(target, bucket)
        return self.cloud_path

    def upload(self, cloud_path: str | None = None) -> str:
        """The SDK 0.69.1 name for :meth:`to_cloud`: to ``cloud_path`` (``gs://bucket/path``), or to
        the datafile's own cloud location; returns the ``gs://`` path."""
        return self.to_cloud(cloud_path=cloud_path)

    def update_cloud_metadata(self) -> None:
        """Send changed metadata in one patch of the changed keys; send nothing if nothing changed.

        A change made elsewhere meanwhile (the patch's metageneration precondition fails) is met
        by the one rule for such a race (:mod:`octuefs.octue.merge`): this datafile's changes are
        applied again to the object as it is now, key by key and tag by tag, keeping what changed
        only elsewhere, and the datafile then holds the merged metadata. A key (or tag) changed
        both here and elsewhere raises :class:`~octuefs.errors.Conflict` and writes nothing, as
        does content replaced or deleted elsewhere."""
        self._require_location("update_cloud_metadata")
        if not self._metadata_changed():
            _log.debug("%s: metadata unchanged; nothing to send", self.cloud_path)
            return
        if self._info is None:
            raise NotFound(f"{self.cloud_path}: no such object; write its content first (open('w') or to_cloud())")
        base, seen = dict(self._raw), self._info
        ours = encode_object_metadata(self._model(self._id), base)  # (this datafile's change, against base)
        check_size_limits(ours)
        bucket, name, wanted = self._get_bucket(), self._location[1], ours
        for _ in range(RACE_ATTEMPTS):
            changes = metadata_delta(dict(seen.metadata), wanted)
            _log.debug("%s: patching metadata keys %s", self.cloud_path, sorted(changes))
            try:
                info = bucket.patch_metadata(name, changes, seen.metageneration, seen.generation) if changes else seen
                break
            except NotFound as exc:
                raise conflict_error(self.cloud_path, self._info, "metadata", self._local_path, exc) from exc
            except PreconditionFailed as exc:  # re-applied each time from base and ours, never from a merge
                seen, wanted = self._reapplied(bucket, name, base, ours, exc)
        else:
            raise conflict_error(self.cloud_path, self._info, "metadata", self._local_path,
                                 PreconditionFailed(f"changed elsewhere {RACE_ATTEMPTS} times while re-applied"))
        self._adopt(info, self._content_md5)
        self._take_stored_fields()  # (what was merged in from elsewhere)

    def _reapplied(self, bucket: Bucket, name: str, base: dict[str, str], ours: dict[str, str],
                   exc: PreconditionFailed) -> tuple[ObjectInfo, dict[str, str]]:
        """The object as it is now and this datafile's change re-applied to it, or Conflict."""
        try:
            current = bucket.stat(name)
        except NotFound:
            raise conflict_error(self.cloud_path, self._info, "metadata", self._local_path, exc) from exc
        if current.generation != self._info.generation:  # new content: its metadata is not ours to merge
            raise conflict_error(self.cloud_path, self._info, "metadata", self._local_path, exc) from exc
        merged, both = reapply(base, ours, dict(current.metadata))
        if both:
            raise Conflict(f"{self.cloud_path}: metadata key(s) {sorted(both)} changed both here and in the bucket "
                           f"since this datafile read it; nothing was written. Read it again with "
                           f"Datafile.from_cloud() and reapply the changes") from exc
        check_size_limits(merged)
        _log.info("%s: its metadata changed in the bucket meanwhile; this datafile's change is applied to it "
                  "(keys changed elsewhere kept)", self.cloud_path)
        return current, merged

    def _sync_content(self) -> None:
        content_type = self._info.content_type if self._info else None
        self._upload(self._get_bucket(), self._location, self._info, content_type)

    def _content_changed(self) -> bool:
        if self._info is None:
            return True
        if self._local_path is None or not os.path.exists(self._local_path):
            return False  # never downloaded nor written: nothing can have changed
        return self._content_md5 is None or file_md5(self._local_path) != self._content_md5

    def _upload_to(self, target: tuple[str, str], bucket: Bucket | None) -> None:
        """To a new location: one stat of the destination, then one upload replacing what it saw."""
        self._model(self._id)  # validate before any request
        if bucket is None:
            same = target[0] == self.bucket_name and self._bucket is not None
            bucket = self._bucket if same else self._bucket_for(target[0])
        try:
            existing = bucket.stat(target[1])
        except BucketNotFound as exc:
            raise BucketNotFound(f"gs://{target[0]}/{target[1]}: bucket {target[0]!r} does not exist") from exc
        except NotFound:
            existing = None
        stored_id = decode_object_metadata(existing.metadata if existing else {}).id
        if stored_id not in (None, self._id):
            # As the SDK does: the datafile sent replaces the object, identity included.
            _log.info("gs://%s/%s: replacing octue__id %s with this datafile's id %s", *target, stored_id, self._id)
        self._upload(bucket, target, existing, content_type=None)

    def _upload(self, bucket: Bucket, target: tuple[str, str], existing: ObjectInfo | None, content_type: str | None):
        """Content and metadata in ONE request, replacing ``existing`` (None: creating) and nothing newer."""
        local = self.local_path  # downloads a cloud datafile being moved
        if local is None or not os.path.exists(local):
            raise FileNotFoundError(f"{self!r}: no content to upload; write it first with open('w')")
        custom = encode_object_metadata(self._model(self._id), existing.metadata if existing else {})
        check_size_limits(custom)
        md5, generation = file_md5(local), (existing.generation if existing else 0)
        _log.debug("uploading %s to gs://%s/%s (if generation %d)", local, target[0], target[1], generation)
        try:
            # The metageneration too: a metadata change made elsewhere moves only it, and must
            # not be overwritten by this upload's metadata.
            info = bucket.upload_file(target[1], local, custom, generation, content_type,
                                      if_metageneration_match=existing.metageneration if existing else None)
        except PreconditionFailed as exc:
            raise conflict_error(f"gs://{target[0]}/{target[1]}", existing, "content and metadata", local, exc) from exc
        except NotFound as exc:  # GCS says only 404 when the bucket is missing
            raise missing_error(bucket, target[0], target[1], "nothing was uploaded") from exc
        self._location, self._bucket = target, bucket
        self._adopt(info, md5)
