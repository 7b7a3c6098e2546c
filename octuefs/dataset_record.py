"""A dataset's own metadata: the Octue SDK's ``<dir>/.octue`` record, and the JSON of a manifest.

The SDK (``octue`` 0.69.1) keeps a Dataset's id, name, tags and labels not on its files but in one
object inside its directory, written by ``Dataset.update_cloud_metadata()``::

    {"dataset": {"id": "<uuid>", "name": "<name>", "tags": {...}, "labels": [...sorted...], "path": "gs://b/dir"}}

``json.dumps`` with the SDK's encoder (tags keep the ``_type`` wrappers of datetimes and sets;
labels are a plain sorted list here), content type ``text/plain``, no custom metadata. The SDK
reads the ``dataset`` key and ignores the rest; when it lists a dataset's files it skips every
object whose name ends in ``.octue`` and every one whose name holds ``.signed_metadata_files``
(:func:`is_dataset_file`). A record may also list the dataset's ``files`` (paths); the SDK then
takes those instead of listing.

This is the codec of that record (:func:`decode_dataset_record`, :func:`encode_dataset_record`),
beside :mod:`octuefs.metadata`, whose validators it uses, so the Python :class:`~octuefs.Dataset`,
``octuefs find --datasets`` and ``octuefs manifest`` (and later a directory's xattrs) read and
write it alike; and the SDK's JSON for a manifest (:func:`cloud_metadata_of`, :func:`dumps_serialised`).
Decoding is lenient per field, as for objects: a malformed field logs a warning and reads as absent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from octuefs import _octue_json
from octuefs._octue_fields import validate_id, validate_labels, validate_tags

_log = logging.getLogger(__name__)

RECORD_NAME = ".octue"
RECORD_CONTENT_TYPE = "text/plain"  # what the SDK's upload_from_string gives its str
SIGNED_METADATA_DIRECTORY = ".signed_metadata_files"

__all__ = ["RECORD_NAME", "RECORD_CONTENT_TYPE", "DatasetRecord", "decode_dataset_record", "encode_dataset_record",
           "is_dataset_file", "cloud_metadata_of", "dumps_compact", "dumps_serialised"]


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    """A dataset's stored metadata; ``None`` (or empty) where the record does not say.
    ``files``: the paths the record lists, or ``None`` (the SDK then lists the directory)."""

    id: str | None = None
    name: str | None = None
    tags: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    labels: frozenset[str] = frozenset()
    path: str | None = None
    files: tuple[str, ...] | None = None


def is_dataset_file(name: str, include_records: bool = False) -> bool:
    """Whether the SDK counts the object ``name`` among a dataset's files when it lists one: not a
    directory marker, no ``.signed_metadata_files`` anywhere in the name, and (unless
    ``include_records``, the SDK's ``include_octue_metadata_files``) no name ending in ``.octue``."""
    if name.endswith("/") or SIGNED_METADATA_DIRECTORY in name:
        return False
    return include_records or not name.endswith(RECORD_NAME)


def _field(record: Mapping[str, Any], key: str, check) -> Any:
    value = record.get(key)
    if value is None:
        return None
    try:
        return check(value)
    except (ValueError, TypeError) as exc:
        _log.warning("ignoring malformed %r=%.100r in a dataset record (%s)", key, value, exc)
        return None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a string, not {type(value).__name__}")
    return value


def _paths(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("a list of paths")
    return tuple(value)


def decode_dataset_record(data: bytes | str) -> DatasetRecord:
    """The record a ``.octue`` object holds. ``ValueError`` if it is not a JSON object (the SDK
    fails to load such a dataset too); a malformed field reads as absent, with a warning."""
    try:
        whole = _octue_json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not a dataset record (the SDK's JSON): {exc}") from None
    if not isinstance(whole, dict):
        raise ValueError(f"not a dataset record: a JSON {type(whole).__name__}, not an object")
    record = whole.get("dataset") or {}
    if not isinstance(record, dict):
        raise ValueError("not a dataset record: its 'dataset' is not a JSON object")
    return DatasetRecord(
        id=_field(record, "id", validate_id), name=_field(record, "name", _text),
        tags=MappingProxyType(_field(record, "tags", validate_tags) or {}),
        labels=_field(record, "labels", validate_labels) or frozenset(),
        path=_field(record, "path", _text), files=_field(record, "files", _paths),
    )


def encode_dataset_record(id: str, name: str, tags: Mapping[str, Any], labels, path: str) -> bytes:
    """The ``.octue`` content ``Dataset.update_cloud_metadata()`` of the SDK writes, byte for byte."""
    record = {"id": validate_id(id), "name": _text(name), "tags": validate_tags(tags),
              "labels": sorted(validate_labels(labels)), "path": _text(path)}
    return _octue_json.dumps({"dataset": record}).encode("utf-8")


def cloud_metadata_of(info) -> dict[str, Any]:
    """An object's facts as the SDK's ``GoogleCloudStorageClient.get_metadata`` gives them (what a
    serialised Datafile carries as ``_cloud_metadata``): its custom metadata with each value
    JSON-decoded in the SDK's dialect (kept as text where it is not JSON), crc32c, size, updated."""
    custom = {key: _octue_json.loads_or(value, value) for key, value in info.metadata.items()}
    return {"custom_metadata": custom, "crc32c": info.crc32c, "size": info.size, "updated": info.updated}


def dumps_compact(value: Any) -> str:
    """One line of JSON in the SDK's dialect (tag values may hold datetimes and sets)."""
    return _octue_json.dumps(value)


def dumps_serialised(value: Any) -> str:
    """JSON as the SDK's ``Serialisable.serialise`` writes it: its encoder, keys sorted, indent 4."""
    return _octue_json.dumps(value, indent=4, sort_keys=True)
