"""The Octue SDK's ``Dataset`` for a directory in a bucket, loaded from listings, not a request per file.

A :class:`Dataset` is ``gs://bucket/dir`` with its own metadata (``id``, ``name``, ``tags``,
``labels``), kept by the SDK in the object ``dir/.octue`` (:mod:`octuefs.octue.dataset_record`), and its
``files``: a :class:`~octuefs.Datafile` for every object under the directory, as the SDK (``octue``
0.69.1) counts them (:func:`~octuefs.octue.dataset_record.is_dataset_file`; octuefs also leaves out the
parts of its own large uploads in flight).

What reaches the bucket:

* loading lists the directory once, recursively: one request per page of 1,000 objects. Each
  listing entry carries the object's custom metadata, so every file's Octue metadata comes from
  it (the SDK stats every file). Then one read of ``dir/.octue``, if the listing showed one.
* :meth:`Dataset.update_cloud_metadata` writes ``dir/.octue`` in exactly the SDK's layout, in one
  upload preconditioned on the generation of the record read (0: there was none), so a record
  changed elsewhere meanwhile is never overwritten: ``Conflict`` instead, nothing written. The
  same bytes as stored: nothing sent. It is the rewrite a directory's setfattr makes
  (:func:`~octuefs.octue.dataset_record.rewrite_dataset_record`): only the changed fields are replaced,
  every other key of the record (unknown ones, ``files``, a malformed field left alone) is kept;
  a malformed id, or a change merged into a malformed field, is refused (``InvalidMetadata``);
  a field given whole as an argument (``tags=...``) replaces a malformed one.

Where octuefs differs from the SDK, as its :class:`~octuefs.Datafile` does: metadata given as
arguments wins over the stored record (an ``id`` that differs from the stored one is refused);
``ignore_stored_metadata`` concerns the dataset's record only (its files keep their metadata);
labels are folded to lower case; ``files`` is a list sorted by path, not a ``FilterSet``; only
cloud paths are supported.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from typing import Any

from octuefs.errors import (
    BucketNotFound,
    Conflict,
    InvalidMetadata,
    NotFound,
    PreconditionFailed,
)
from octuefs.octue import datafile as _datafile
from octuefs.octue.datafile import CLOUD_PROTOCOL, Datafile, LabelSet, TagDict
from octuefs.octue.dataset_record import (
    RECORD_CONTENT_TYPE,
    RECORD_NAME,
    DatasetRecord,
    decode_dataset_record,
    is_dataset_file,
    rewrite_dataset_record,
)
from octuefs.octue.metadata import SDK_LAYOUT_VERSION, validate_id
from octuefs.storage import Bucket, ObjectInfo
from octuefs.storage.base import PARTS_PREFIX

_log = logging.getLogger(__name__)

__all__ = ["Dataset", "split_dataset_path", "is_listed_file"]


def split_dataset_path(path: str) -> tuple[str, str]:
    """``gs://bucket/dir/`` -> ``("bucket", "dir")``; ``gs://bucket`` -> ``("bucket", "")``."""
    if not isinstance(path, str) or not path.startswith(CLOUD_PROTOCOL):
        raise ValueError(f"{path!r}: octuefs.Dataset works on cloud datasets; give a path like gs://bucket/dir")
    bucket, _, directory = path[len(CLOUD_PROTOCOL) :].partition("/")
    if not bucket:
        raise ValueError(f"{path!r} names no bucket; give a path like gs://bucket/dir")
    return bucket, directory.strip("/")


def is_listed_file(name: str, include_records: bool = False) -> bool:
    """Whether a listed object is one of a dataset's files: as the SDK counts them, and not a
    part of an octuefs upload in flight."""
    return is_dataset_file(name, include_records) and PARTS_PREFIX not in "/" + name


class Dataset:
    """A dataset in the cloud: see the module docstring. The arguments are the SDK's.

    :param path: ``gs://bucket/dir`` (listed now, with its ``.octue`` record)
    :param files: Datafiles (or ``gs://`` paths) to take instead of listing the directory; the
        record is then not read, and :meth:`update_cloud_metadata` creates it only if there is none
    :param recursive: include the files of subdirectories (default), else only the directory's own
    :param ignore_stored_metadata: leave the ``.octue`` record's metadata unread
    :param include_octue_metadata_files: count objects named ``*.octue`` among the files
    :param id, name, tags, labels: metadata, winning over the stored record
    :param project_name, bucket: as for :class:`~octuefs.Datafile`
    """

    def __init__(self, path: str | None = None, files: Any = None, recursive: bool = True,
                 ignore_stored_metadata: bool = False, include_octue_metadata_files: bool = False,
                 id: str | None = None, name: str | None = None, tags: Any = None, labels: Any = None, *,
                 project_name: str | None = None, bucket: Bucket | None = None):
        self._name = name
        bucket_name, self._directory = split_dataset_path(path)
        self.path = CLOUD_PROTOCOL + bucket_name + (f"/{self._directory}" if self._directory else "")
        self._prefix = f"{self._directory}/" if self._directory else ""
        self._project_name = project_name
        if bucket is not None and bucket.name != bucket_name:
            raise ValueError(f"bucket {bucket.name!r} given for {path!r}")
        self._bucket = bucket if bucket is not None else _datafile.bucket_factory(bucket_name, project_name)
        self._record_generation: int | None = None  # of the record read (0: none); None: not looked at
        self._record_bytes: bytes | None = None
        self._stored: DatasetRecord | None = None  # the record read, which a rewrite starts from
        # Fields given whole as arguments: they replace the stored ones even where those are malformed.
        self._replacing = frozenset(k for k, v in (("name", name), ("tags", tags), ("labels", labels)) if v is not None)
        self.listed: dict[str, ObjectInfo] = {}  # object name -> what the listing said of it
        stored = DatasetRecord()
        if files is not None:
            self.files = [f if isinstance(f, Datafile) else Datafile(f, project_name=project_name) for f in files]
        else:
            stored = self._load(recursive, include_octue_metadata_files, ignore_stored_metadata)
        if id is not None and stored.id not in (None, validate_id(id)):
            raise InvalidMetadata("id", f"{self.metadata_path} holds id {stored.id}; an existing id is kept", id)
        self._id = validate_id(id) if id is not None else stored.id or str(uuid.uuid4())
        self._name = name if name is not None else stored.name
        self.tags = tags if tags is not None else dict(stored.tags)
        self.labels = labels if labels is not None else stored.labels
        self.files.sort(key=lambda f: f.cloud_path or f.path)

    @classmethod
    def from_cloud(cls, cloud_path: str, *, project_name: str | None = None, bucket: Bucket | None = None,
                   **kwargs: Any) -> Dataset:
        """The dataset at ``gs://bucket/dir``: one listing (a request per 1,000 objects) and one read
        of its ``.octue`` record. ``kwargs`` as for the constructor."""
        return cls(cloud_path, project_name=project_name, bucket=bucket, **kwargs)

    # --- loading -------------------------------------------------------------------------------

    def _load(self, recursive: bool, include_records: bool, ignore_stored: bool) -> DatasetRecord:
        record_info = None
        try:
            for page in self._bucket.iter_pages_ahead(self._prefix, None if recursive else "/"):
                for info in page.objects:
                    if info.name == self._record_name:
                        record_info = info
                    if is_listed_file(info.name, include_records):
                        self.listed[info.name] = info
        except BucketNotFound as exc:
            raise BucketNotFound(f"{self.path}: bucket {self.bucket_name!r} does not exist") from exc
        self._record_generation = record_info.generation if record_info else 0
        record = DatasetRecord() if record_info is None or ignore_stored else self._read_record(record_info)
        if record.files is not None:  # the record names the files (the SDK then lists nothing)
            self.files = [self._datafile_at(path) for path in record.files]
        else:
            self.files = [f for f in map(self._datafile_of, self.listed.values()) if f is not None]
        return record

    def _read_record(self, info: ObjectInfo) -> DatasetRecord:
        for _ in range(3):
            try:
                data = self._bucket.read_range(info.name, 0, info.size, generation=info.generation)
                break
            except NotFound:  # replaced (or deleted) since the listing: read what is there now
                try:
                    info = self._bucket.stat(info.name)
                except NotFound:
                    self._record_generation = 0
                    return DatasetRecord()
        else:
            raise Conflict(f"{self.metadata_path} kept changing while it was read; try again")
        self._record_generation, self._record_bytes = info.generation, data
        try:
            self._stored = decode_dataset_record(data)
        except ValueError as exc:
            raise ValueError(f"{self.metadata_path}: {exc}") from None
        return self._stored

    def _datafile_of(self, info: ObjectInfo) -> Datafile | None:
        try:
            return Datafile.from_listing(self._bucket, info, self._project_name)
        except ValueError as exc:  # a name no Datafile (nor mount) can have: a//b, a/./b
            _log.warning("%s: leaving out %r: %s", self.path, info.name, exc)
            return None

    def _datafile_at(self, path: str) -> Datafile:
        bucket_name, _, name = path[len(CLOUD_PROTOCOL) :].partition("/")
        same = bucket_name == self.bucket_name
        if same and name in self.listed:
            return Datafile.from_listing(self._bucket, self.listed[name], self._project_name)
        return Datafile(path, project_name=self._project_name, bucket=self._bucket if same else None)

    # --- what it is ----------------------------------------------------------------------------

    tags = property(lambda self: self._tags, lambda self, value: setattr(self, "_tags", TagDict(value)),
                    doc="A dict of tags (validated); set any mapping.")
    labels = property(lambda self: self._labels, lambda self, value: setattr(self, "_labels", LabelSet(value)),
                      doc="A set of labels (validated); set space-separated text or any iterable.")
    id = property(lambda self: self._id, doc="The dataset's UUID (read-only).")
    exists_in_cloud = property(lambda self: True)
    cloud_path = property(lambda self: self.path)
    bucket_name = property(lambda self: self.path[len(CLOUD_PROTOCOL) :].partition("/")[0])
    path_in_bucket = property(lambda self: self._directory)
    metadata_path = property(lambda self: f"{self.path}/{RECORD_NAME}", doc="Where the record is: DIR/.octue.")
    _record_name = property(lambda self: self._prefix + RECORD_NAME)

    @property
    def name(self) -> str:
        """The name given or stored, else the directory's name (the bucket's, at its root)."""
        return self._name or self._default_name

    _default_name = property(lambda self: posixpath.basename(self._directory) or self.bucket_name)

    @name.setter
    def name(self, value: str | None) -> None:
        self._name = value

    def __repr__(self) -> str:
        return f"<Dataset({self.name!r})>"

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __contains__(self, item: Any) -> bool:
        return item in self.files

    def metadata(self, include_id: bool = True, include_sdk_version: bool = True) -> dict[str, Any]:
        """``id``, ``name``, ``tags``, ``labels`` (and ``sdk_version``), as the SDK's ``metadata()``."""
        fields = {"id": self.id, "name": self.name, "tags": TagDict(self.tags), "labels": LabelSet(self.labels)}
        if not include_id:
            del fields["id"]
        if include_sdk_version:
            fields["sdk_version"] = SDK_LAYOUT_VERSION
        return fields

    def to_primitive(self, include_files: bool = True) -> dict[str, Any]:
        """As the SDK's: ``id``, ``name``, ``tags``, ``labels`` (sorted), ``path``, and the files' paths."""
        primitive = {"id": self.id, "name": self.name, "tags": dict(self.tags), "labels": sorted(self.labels),
                     "path": self.path}
        if include_files:
            primitive["files"] = sorted(f.cloud_path or f.path for f in self.files)
        return primitive

    # --- writing -------------------------------------------------------------------------------

    def update_cloud_metadata(self) -> None:
        """Write ``DIR/.octue`` as the SDK does, only over the record this dataset read (or where
        there is none): ``Conflict`` if it changed in the bucket since, and nothing is written."""
        # The one rewrite a directory's setfattr makes too: from the whole record read, only the
        # fields that changed replaced (keys octuefs does not know, a `files` list, a field it
        # reads as malformed and left alone, all kept); a record of the SDK's shape comes out as
        # the SDK's own update writes it.
        body = rewrite_dataset_record(self._stored, self.id, self.name, dict(self.tags), self.labels, self.path,
                                      replacing=self._replacing, default_name=self._default_name)
        if body == self._record_bytes:
            _log.debug("%s: unchanged; nothing to send", self.metadata_path)
            return
        generation = self._record_generation or 0
        try:
            info = self._bucket.upload_bytes(self._record_name, body, {}, if_generation_match=generation,
                                             content_type=RECORD_CONTENT_TYPE)
        except PreconditionFailed as exc:
            seen = f"generation {generation}" if generation else "none"
            raise Conflict(
                f"{self.metadata_path} changed in the bucket since this dataset read it (it read {seen}): nothing "
                f"was written. Load it again with Dataset.from_cloud({self.path!r}) and reapply the changes"
            ) from exc
        self._record_generation, self._record_bytes = info.generation, body
        self._stored = decode_dataset_record(body)

    update_metadata = update_cloud_metadata

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.update_cloud_metadata()
