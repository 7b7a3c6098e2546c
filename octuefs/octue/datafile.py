"""The Octue SDK's ``Datafile`` API (as the seed describes it), on octuefs's storage and metadata.

A :class:`Datafile` is a local file or an object in a GCS bucket (``gs://bucket/path``) with Octue
metadata: ``id``, ``timestamp``, ``tags``, ``labels``, ``cluster``, ``sequence``. Every value is
validated by :mod:`octuefs.octue.metadata` when it is assigned (``InvalidMetadata``, a ``ValueError``
naming the field and the rule) and encoded only by that module, so what is written here reads
back identically through the mount's xattrs and through the Octue SDK.

What reaches the bucket:

* ``from_cloud`` stats the object (metadata only). Its content is downloaded once, to a private
  temporary file, when it is first read, pinned to the generation stat-ed (content and metadata
  match; a replaced object raises ``StaleFile``).
* Changed content goes up with its metadata in ONE upload, preconditioned on the generation read
  (0 for a new object); a metadata-only change is ONE patch of the changed keys; nothing changed,
  nothing sent (a read-mode ``with`` block without changes makes no request).
* A failed precondition raises ``Conflict`` and overwrites nothing; the changes stay pending.
* An object's ``octue__id`` is kept by every write through a Datafile of that object; one without
  gets the Datafile's id on its first write. ``to_cloud`` of another datafile onto an existing
  object replaces it, and the datafile keeps its own id, which the object takes (as in the SDK).
  Custom metadata keys that are not ``octue__*`` are kept.

Where the seed is silent: ``None`` for a metadata argument means "not given" (a cloud object keeps
its stored value; use the setters to clear one); POSIX seconds become an aware UTC datetime; labels
are folded to lower case (``Vestas`` -> ``vestas``); a 1-tuple ``bucket_name`` (example A's stray
comma) is unwrapped with a warning; a ``with`` block left by an exception sends nothing
(``to_cloud()`` sends it later);
``exists_in_cloud`` means "has a cloud location", as in the SDK.

A local datafile keeps its metadata where the SDK does, in the ``.octue`` file of its directory
(:mod:`octuefs.octue.local_metadata`): read when the Datafile is made, recorded when a file opened
with it for writing is closed (or its metadata changed while it was open), and by
``update_local_metadata()`` / ``update_metadata()``.

Here: the Datafile itself (making one, where it is, its metadata, opening and downloading). Beside
it: the cloud side, what it sends (:mod:`octuefs.octue.datafile_cloud`), ``gs://`` paths and the
errors naming them (:mod:`octuefs.octue.cloud_paths`), the validated ``LabelSet``/``TagDict``
(:mod:`octuefs.octue.containers`) and the file object ``open`` returns (:mod:`octuefs.octue.datafile_io`).

Buckets come from the module-level hook ``bucket_factory(bucket_name, project_name)`` (default:
:func:`octuefs.storage.open_bucket`) unless passed as ``bucket=``. A Datafile is not thread-safe.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from octuefs.errors import BucketNotFound, InvalidMetadata, NotFound, StaleFile
from octuefs.octue.cloud_paths import (
    CLOUD_PROTOCOL,
    bucket_name_arg,
    missing_error,
    split_cloud_path,
    url_in_place_of_names,
)
from octuefs.octue.containers import LabelSet, TagDict
from octuefs.octue.datafile_cloud import CloudWrites
from octuefs.octue.datafile_io import DatafileIO, check_open_kwargs, writes
from octuefs.octue.local_metadata import metadata_path, read_record, write_record
from octuefs.octue.metadata import (
    OCTUE_PREFIX,
    SDK_LAYOUT_VERSION,
    OctueMetadata,
    decode_object_metadata,
    validate_cluster,
    validate_id,
    validate_sequence,
    validate_timestamp,
)
from octuefs.storage import Bucket, ObjectInfo, open_bucket
from octuefs.storage.checksums import file_crc32c_b64
from octuefs.storage.retry import file_md5

_log = logging.getLogger(__name__)

EMPTY_HASH_VALUE = "AAAAAA=="  # the CRC32C of no bytes, which the SDK gives a datafile with no content

__all__ = ["Datafile", "LabelSet", "TagDict", "bucket_factory"]


def _open_default_bucket(bucket_name: str, project_name: str | None) -> Bucket:
    return open_bucket(bucket_name, project_name, check=False)


# The hook every Datafile opens its bucket with (looked up at call time, so tests may replace it).
bucket_factory: Callable[[str, str | None], Bucket] = _open_default_bucket


def _field(name: str, validate: Callable[[Any], Any], doc: str) -> property:
    attr = "_" + name
    return property(lambda self: getattr(self, attr), lambda self, value: setattr(self, attr, validate(value)), doc=doc)


_VALIDATORS: dict[str, Callable[[Any], Any]] = dict(
    id=validate_id, timestamp=validate_timestamp, tags=TagDict, labels=LabelSet,
    cluster=validate_cluster, sequence=validate_sequence,
)


# --- the Datafile ----------------------------------------------------------------------------


class Datafile(CloudWrites):
    """A local file or a cloud object, with its Octue metadata. See the module docstring.

    :param path: a local path, or ``gs://bucket/path/in/bucket`` (stat-ed now, not downloaded)
    :param cluster, sequence, tags, labels, timestamp, id: metadata; ``None`` means "not given"
        (a cloud object's stored value, else the default: cluster 0, no sequence, no tags...)
    :param mode: the mode the ``with Datafile(...) as (datafile, f)`` form opens the file in
    :param project_name: the GCP project for opening the bucket (optional)
    :param bucket: a :class:`~octuefs.storage.Bucket` to use instead of ``bucket_factory``
    :param _listed: what a listing said of the object (then it is not stat-ed); see :meth:`from_listing`
    :param open_kwargs: ``encoding``, ``newline``... for the ``with`` form
    """

    def __init__(
        self, path: str | os.PathLike, cluster: int | None = None, sequence: int | None = None, tags: Any = None,
        labels: Any = None, timestamp: Any = None, id: Any = None, mode: str = "r", *,
        project_name: str | None = None, bucket: Bucket | None = None, _listed: ObjectInfo | None = None,
        **open_kwargs: Any,
    ):
        given = dict(id=id, timestamp=timestamp, tags=tags, labels=labels, cluster=cluster, sequence=sequence)
        given = {field: _VALIDATORS[field](value) for field, value in given.items() if value is not None}
        check_open_kwargs(open_kwargs)
        self._path = os.fspath(path)
        self._mode = mode
        self._open_kwargs = open_kwargs
        self._project_name = project_name
        self._bucket = bucket
        self._location: tuple[str, str] | None = None  # (bucket name, path in bucket)
        self._info: ObjectInfo | None = None  # the object as last read or written; None: no object
        self._raw: dict[str, str] = {}  # its custom metadata, exactly as stored
        self._stored = OctueMetadata()  # its Octue metadata, decoded
        self._content_md5: str | None = None  # base64 MD5 of the object's content, as known
        self._local_path: str | None = None  # the user's file, or the private copy of the object
        self._private_dir: str | None = None
        self._context: DatafileIO | None = None
        self._local_record: OctueMetadata | None = None  # a local datafile's record in its .octue file
        self._id_given = "id" in given
        if self._path.startswith(CLOUD_PROTOCOL):
            self._location = split_cloud_path(self._path)
            if bucket is not None and getattr(bucket, "name", self._location[0]) != self._location[0]:
                raise ValueError(f"bucket {bucket.name!r} given for {self._path!r}")
            try:
                self._adopt(_listed if _listed is not None else self._get_bucket().stat(self._location[1]))
            except BucketNotFound as exc:
                raise BucketNotFound(f"{self._path}: bucket {self._location[0]!r} does not exist") from exc
            except NotFound:
                pass  # a new object: created by the first write (from_cloud checks the bucket)
        else:
            self._local_path = os.path.abspath(self._path)
            self._local_record = read_record(self._local_path)
        stored = self._stored if self._location else (self._local_record or OctueMetadata())
        if self._id_given and stored.id not in (None, given["id"]):
            rule = f"{self._path} already has octue__id {stored.id}; an existing id is kept"
            raise InvalidMetadata("id", rule, given["id"])
        self._id: str = given.get("id") or stored.id or str(uuid.uuid4())
        self._timestamp = given.get("timestamp", stored.timestamp)
        self._tags = given.get("tags", TagDict(stored.tags))
        self._labels = given.get("labels", LabelSet(stored.labels))
        self._cluster = given.get("cluster", stored.cluster)
        self._sequence = given.get("sequence", stored.sequence)

    @classmethod
    def from_cloud(
        cls, project_name: str | None = None, bucket_name: str | tuple[str] | None = None,
        datafile_path: str | None = None, mode: str = "r", *,
        cloud_path: str | None = None, bucket: Bucket | None = None, **kwargs: Any,
    ) -> Datafile:
        """The datafile for an existing cloud object: one stat (metadata only), no download.

        Also ``from_cloud(project_name, "gs://b/p")``, ``from_cloud(cloud_path="gs://b/p")`` or
        ``from_cloud("gs://b/p")``. ``kwargs`` are metadata to set over the stored values (see the
        constructor) and open keywords for the ``with`` form. Raises ``BucketNotFound`` if the
        bucket does not exist (in any mode), ``NotFound`` if the object does not, unless ``mode`` writes.
        """
        if cloud_path is None:
            project_name, bucket_name, cloud_path = url_in_place_of_names(project_name, bucket_name, datafile_path)
        if cloud_path is None:
            bucket_name = bucket_name_arg(bucket.name if bucket_name is None and bucket is not None else bucket_name)
            if not datafile_path:
                raise ValueError("from_cloud() needs datafile_path (the object's path in the bucket)")
            cloud_path = f"{CLOUD_PROTOCOL}{bucket_name}/{datafile_path}"
        datafile = cls(cloud_path, mode=mode, project_name=project_name, bucket=bucket, **kwargs)
        if datafile._info is None:
            missing = missing_error(datafile._get_bucket(), *datafile._location, "no datafile can be made there")
            if isinstance(missing, BucketNotFound):
                raise missing
            if not writes(mode):
                raise NotFound(f"{cloud_path}: no such object (open it with mode='w' to create it)")
        return datafile

    @classmethod
    def from_listing(cls, bucket: Bucket, info: ObjectInfo, project_name: str | None = None) -> Datafile:
        """The datafile of the object a listing (or any answer of ``bucket``) described as ``info``,
        without asking the bucket again: what :class:`~octuefs.Dataset` makes its files with."""
        return cls(f"{CLOUD_PROTOCOL}{bucket.name}/{info.name}", bucket=bucket, project_name=project_name,
                   _listed=info)

    def __repr__(self) -> str:
        return f"<Datafile({self._path!r})>"

    # --- where it is -----------------------------------------------------------------------

    project_name = property(lambda self: self._project_name)
    bucket_name = property(lambda self: self._location[0] if self._location else None)
    path_in_bucket = property(lambda self: self._location[1] if self._location else None)
    exists_in_cloud = property(lambda self: self._location is not None, doc="Has a cloud location (as in the SDK).")

    @property
    def path(self) -> str:
        """The gs:// path of a datafile in the cloud (also after ``to_cloud`` of a local one, so that
        ``name`` is always the last part of ``path``), else the local path given."""
        return self.cloud_path or self._path

    @property
    def cloud_path(self) -> str | None:
        return f"{CLOUD_PROTOCOL}{self._location[0]}/{self._location[1]}" if self._location else None

    @property
    def name(self) -> str:
        return posixpath.basename(self._location[1]) if self._location else os.path.basename(self._path)

    @property
    def extension(self) -> str:
        """The name's extension without the dot (``"csv"``), or ``""``."""
        return os.path.splitext(self.name)[1].strip(".")

    @property
    def exists_locally(self) -> bool:
        """Whether the datafile has a local path (the user's file, even if not written yet, or the
        downloaded private copy), as in the SDK."""
        return self._local_path is not None

    @property
    def metadata_path(self) -> str | None:
        """The ``.octue`` file that holds a local datafile's metadata; None for a datafile in the
        cloud (its metadata is on the object)."""
        return metadata_path(self._local_path) if self._location is None and self._local_path else None

    @property
    def size_bytes(self) -> int | None:
        """The size of the object (a datafile in the cloud) or of the local file; None if there is none."""
        if self._location is not None:
            return self._info.size if self._info is not None else None
        try:
            return os.path.getsize(self._local_path)
        except OSError:
            return None

    @property
    def cloud_hash_value(self) -> str | None:
        """The object's CRC32C as GCS reports it (base64 of the big-endian 4 bytes), or None."""
        return self._info.crc32c if self._info is not None else None

    @property
    def hash_value(self) -> str:
        """The CRC32C of the content in the SDK's form (base64 of the big-endian 4 bytes): of the local
        file if there is one, else the object's, else that of no content (``AAAAAA==``)."""
        if self._local_path is not None and os.path.isfile(self._local_path):
            return file_crc32c_b64(self._local_path)
        return self.cloud_hash_value or EMPTY_HASH_VALUE

    @property
    def local_path(self) -> str | None:
        """The local file; for a cloud datafile, the private copy (downloaded now if need be)."""
        if self._local_path is None and self._info is not None:
            return self.download()
        return self._local_path

    # --- metadata (each setter validates through octuefs.octue.metadata) ------------------------

    timestamp = _field("timestamp", validate_timestamp, "A datetime; set a datetime, POSIX seconds or ISO 8601 text.")
    tags = _field("tags", TagDict, "A dict of tags (validated); set any mapping.")
    labels = _field("labels", LabelSet, "A set of labels (validated); set space-separated text or any iterable.")
    cluster = _field("cluster", validate_cluster, "An integer (default 0).")
    sequence = _field("sequence", validate_sequence, "An integer, or None.")

    @property
    def id(self) -> str:
        """The UUID (read-only): the object's ``octue__id``, or the one written on its first write."""
        return self._id

    @property
    def posix_timestamp(self) -> float | None:
        return None if self._timestamp is None else self._timestamp.timestamp()

    def _model(self, id: str | None) -> OctueMetadata:
        """The metadata as it stands (validated again, as tags may have been changed in place)."""
        return OctueMetadata(id, self._timestamp, dict(self._tags), self._labels, self._cluster, self._sequence)

    def metadata(self, include_id: bool = True, include_sdk_version: bool = True, use_octue_namespace: bool = True):
        """The metadata, as the SDK gives it: ``octue__id``, ``octue__timestamp``, ``octue__tags`` (a
        :class:`TagDict`), ``octue__labels`` (a :class:`LabelSet`), ``octue__sdk_version``, and
        octuefs's ``octue__cluster`` and ``octue__sequence`` (the fields octuefs writes on the object).
        Without ``use_octue_namespace``, the same keys without the ``octue__`` prefix. Copies: changing
        them does not change the datafile."""
        fields = self._model(self._id).to_dict()
        fields["tags"], fields["labels"] = TagDict(fields["tags"]), LabelSet(fields["labels"])
        if not include_id:
            del fields["id"]
        if include_sdk_version:
            fields["sdk_version"] = SDK_LAYOUT_VERSION
        if use_octue_namespace:
            return {OCTUE_PREFIX + key: value for key, value in fields.items()}
        return fields

    def update_local_metadata(self) -> None:
        """Record the metadata in the ``.octue`` file beside the local file, as the SDK does
        (writing the file only if the record differs from what it holds)."""
        if self._location is not None or self._local_path is None:
            raise ValueError(f"{self!r} is in the cloud: its metadata is kept on the object (update_cloud_metadata())")
        meta = self._model(self._id)
        write_record(self._local_path, meta)
        self._local_record = meta

    def update_metadata(self) -> None:
        """Store the metadata where it lives: on the cloud object, or in the local ``.octue`` file."""
        if self._location is not None:
            self.update_cloud_metadata()
        else:
            self.update_local_metadata()

    def _local_metadata_changed(self) -> bool:
        if self._local_record is None:
            return self._model(None) != OctueMetadata()
        return self._model(self._id) != self._local_record

    def _metadata_changed(self) -> bool:
        """Whether the metadata differs from the object's (the id is not a change: it is ours to keep)."""
        return self._model(self._stored.id) != self._stored

    # --- opening -----------------------------------------------------------------------------

    def open(self, mode: str = "r", **kwargs: Any) -> DatafileIO:
        """Open like the builtin ``open`` (a context manager, or close it). A cloud datafile is
        downloaded first (once) if the mode reads or appends; on close it sends what changed: one
        upload if the mode writes and the content changed, else one patch if the metadata did."""
        check_open_kwargs(kwargs)
        return DatafileIO(self, mode, kwargs)

    def __enter__(self) -> tuple[Datafile, DatafileIO]:
        if self._context is not None:
            raise RuntimeError(f"{self!r} is already open as a context manager")
        self._context = self.open(self._mode, **self._open_kwargs)
        return self, self._context

    def __exit__(self, exc_type, exc, tb) -> bool:
        context, self._context = self._context, None
        return context.__exit__(exc_type, exc, tb)

    def _open_local(self, mode: str, kwargs: dict[str, Any]):
        if self._location is not None and "x" in mode and self._info is not None:
            raise FileExistsError(f"{self.cloud_path} already exists")
        if self._location is not None and self._local_path is None:
            if self._info is None and not writes(mode):
                raise NotFound(f"{self.cloud_path}: no such object")
            if self._info is not None and ("r" in mode or "a" in mode):
                self.download()
            else:
                self._local_path = self._private_path()  # "w"/"x": the old content is not needed
        elif writes(mode):
            os.makedirs(os.path.dirname(self._local_path), exist_ok=True)
        return io.open(self._local_path, mode, **kwargs)

    def _private_path(self) -> str:
        """Where this datafile keeps its copy of the object (removed when the Datafile is collected)."""
        if self._private_dir is None:
            self._private_dir = tempfile.mkdtemp(prefix="octuefs-datafile-")
            weakref.finalize(self, shutil.rmtree, self._private_dir, True)
        return os.path.join(self._private_dir, posixpath.basename(self._location[1]) or "data")

    def download(self, local_path: str | os.PathLike | None = None) -> str:
        """Download the object (the generation read) into the private copy, once, or to ``local_path``
        (which then becomes the datafile's local copy); return the local path."""
        self._require_location("download")
        if self._info is None:
            raise NotFound(f"{self.cloud_path}: no such object")
        if local_path is None:
            if self._local_path is not None:
                return self._local_path
            target = self._private_path()
        else:
            target = os.path.abspath(local_path)
            if target == self._local_path:
                return target
            os.makedirs(os.path.dirname(target), exist_ok=True)
        _log.debug("downloading %s (generation %d) to %s", self.cloud_path, self._info.generation, target)
        try:
            self._get_bucket().download_to_file(self._location[1], target, generation=self._info.generation)
        except NotFound as exc:
            raise StaleFile(
                f"{self.cloud_path}: generation {self._info.generation}, which this datafile read, is no longer in "
                "the bucket (replaced or deleted); read it again with Datafile.from_cloud()"
            ) from exc
        self._local_path = target
        if self._content_md5 is None:
            self._content_md5 = file_md5(target)
        return target

    def _adopt(self, info: ObjectInfo | None, content_md5: str | None = None) -> None:
        """Take ``info`` as the truth about the object (after a stat or a write). ``content_md5``:
        the MD5 of the content, if known here and the bucket does not report one."""
        self._info = info
        self._raw = dict(info.metadata) if info is not None else {}
        self._stored = decode_object_metadata(self._raw)
        self._content_md5 = (info.md5 or content_md5) if info is not None else None

    def _take_stored_fields(self) -> None:
        """The fields as the object holds them (after an update merged in changes made
        elsewhere); the tags and labels are changed in place, for whoever holds them."""
        stored = self._stored
        self._timestamp, self._cluster, self._sequence = stored.timestamp, stored.cluster, stored.sequence
        self._tags.clear()
        self._tags.update(stored.tags)
        self._labels.clear()
        self._labels.update(stored.labels)

    def _get_bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = self._bucket_for(self._location[0])
        return self._bucket

    def _bucket_for(self, bucket_name: str) -> Bucket:
        """Bucket ``bucket_name`` opened through the module's hook (looked up now: tests replace it)."""
        return bucket_factory(bucket_name, self._project_name)

    def _require_location(self, what: str) -> None:
        if self._location is None:
            raise ValueError(f"{self!r} is not in the cloud: {what}() needs a cloud datafile (see to_cloud())")

    def _closed(self, mode: str, ok: bool) -> None:
        """After a file opened with ``mode`` is closed: send what changed (one request at most)."""
        if self._location is None:
            if not (writes(mode) or self._local_metadata_changed()):
                return
            if ok:
                self.update_local_metadata()
            else:
                _log.warning("%s: left by an exception; its metadata was not recorded (update_local_metadata() "
                             "records it)", self._local_path)
            return
        if not ok:
            _log.warning("%s: left by an exception; nothing sent (call to_cloud() to send the changes)", self.cloud_path)
            return
        if writes(mode) and self._content_changed():
            self._sync_content()
        else:
            self.update_cloud_metadata()
