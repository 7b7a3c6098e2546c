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
beside :mod:`octuefs.octue.metadata`, whose validators it uses, so the Python :class:`~octuefs.Dataset`,
``octuefs find --datasets``, ``octuefs manifest`` and a directory's xattrs read and write it alike;
its xattr form (``user.octue.id``, ``.name``, ``.tags``, ``.tags.NAME``, ``.labels`` of a
directory: :func:`list_dataset_xattrs`, :func:`get_dataset_xattr`, :func:`set_dataset_xattr`,
:func:`remove_dataset_xattr`), whose tags and labels are the files' own forms (the one codec in
:mod:`octuefs.octue.metadata` renders, parses and validates them); and the SDK's JSON for a manifest
(:func:`cloud_metadata_of`, :func:`dumps_serialised`).
Decoding is lenient per field, as for objects: a malformed field logs a warning and reads as absent.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from octuefs.errors import (
    AttributeExists,
    AttributeNotSupported,
    InvalidMetadata,
    NoSuchAttribute,
    ReadOnlyAttribute,
)
from octuefs.octue import json_dialect as _octue_json
from octuefs.octue import metadata as _octue
from octuefs.octue.fields import validate_id, validate_labels, validate_tags

_log = logging.getLogger(__name__)

RECORD_NAME = ".octue"
RECORD_CONTENT_TYPE = "text/plain"  # what the SDK's upload_from_string gives its str
SIGNED_METADATA_DIRECTORY = ".signed_metadata_files"

__all__ = ["RECORD_NAME", "RECORD_CONTENT_TYPE", "DatasetRecord", "decode_dataset_record", "encode_dataset_record",
           "rewrite_dataset_record", "fields_replaced_by",
           "is_dataset_file", "cloud_metadata_of", "dumps_compact", "dumps_serialised", "DATASET_XATTRS",
           "list_dataset_xattrs", "get_dataset_xattr", "set_dataset_xattr", "remove_dataset_xattr"]


@dataclasses.dataclass(frozen=True)
class DatasetRecord:
    """A dataset's stored metadata; ``None`` (or empty) where the record does not say.
    ``files``: the paths the record lists, or ``None`` (the SDK then lists the directory).
    ``whole``: the record object's whole JSON as stored (plain JSON values, every key kept,
    those octuefs does not know included), None for a record not read from an object;
    ``malformed``: the fields present in it that read as absent (a warning said why). A
    rewrite (:func:`rewrite_dataset_record`) starts from ``whole``."""

    id: str | None = None
    name: str | None = None
    tags: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    labels: frozenset[str] = frozenset()
    path: str | None = None
    files: tuple[str, ...] | None = None
    whole: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    malformed: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)


def is_dataset_file(name: str, include_records: bool = False) -> bool:
    """Whether the SDK counts the object ``name`` among a dataset's files when it lists one: not a
    directory marker, no ``.signed_metadata_files`` anywhere in the name, and (unless
    ``include_records``, the SDK's ``include_octue_metadata_files``) no name ending in ``.octue``."""
    if name.endswith("/") or SIGNED_METADATA_DIRECTORY in name:
        return False
    return include_records or not name.endswith(RECORD_NAME)


def _field(record: Mapping[str, Any], key: str, check, malformed: set[str] | None = None) -> Any:
    value = record.get(key)
    if value is None:
        return None
    try:
        return check(value)
    except (ValueError, TypeError) as exc:
        _log.warning("ignoring malformed %r=%.100r in a dataset record (%s)", key, value, exc)
        if malformed is not None:
            malformed.add(key)
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
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        whole = _octue_json.loads(text)
        plain = json.loads(text)  # the same, its wrappers left as they are: what a rewrite keeps
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not a dataset record (the SDK's JSON): {exc}") from None
    if not isinstance(whole, dict):
        raise ValueError(f"not a dataset record: a JSON {type(whole).__name__}, not an object")
    record = whole.get("dataset") or {}
    if not isinstance(record, dict):
        raise ValueError("not a dataset record: its 'dataset' is not a JSON object")
    malformed: set[str] = set()
    return DatasetRecord(
        id=_field(record, "id", validate_id, malformed), name=_field(record, "name", _text, malformed),
        tags=MappingProxyType(_field(record, "tags", validate_tags, malformed) or {}),
        labels=_field(record, "labels", validate_labels, malformed) or frozenset(),
        path=_field(record, "path", _text, malformed), files=_field(record, "files", _paths, malformed),
        whole=MappingProxyType(plain), malformed=frozenset(malformed),
    )


def encode_dataset_record(id: str, name: str, tags: Mapping[str, Any], labels, path: str,
                          files: tuple[str, ...] | None = None) -> bytes:
    """The ``.octue`` content ``Dataset.update_cloud_metadata()`` of the SDK writes, byte for byte.
    ``files``: the paths a record being rewritten listed (kept, after ``path``, where the SDK's
    ``to_primitive`` puts them), so a change of its metadata never changes which files it holds."""
    record = {"id": validate_id(id), "name": _text(name), "tags": validate_tags(tags),
              "labels": sorted(validate_labels(labels)), "path": _text(path)}
    if files is not None:
        record["files"] = list(_paths(list(files)))
    return _octue_json.dumps({"dataset": record}).encode("utf-8")


_FIELDS = ("id", "name", "tags", "labels", "path")  # the SDK's order


def rewrite_dataset_record(old: DatasetRecord | None, id: str, name: str, tags: Mapping[str, Any], labels,
                           path: str, replacing: frozenset[str] | set[str] = frozenset(),
                           default_name: str | None = None) -> bytes:
    """The ``.octue`` content of the dataset ``old`` (None: a new one) after a change of its
    metadata to ``id``, ``name``, ``tags``, ``labels`` (at ``path``): the one rewrite both a
    directory's setfattr and :meth:`octuefs.Dataset.update_cloud_metadata` make.

    It starts from the whole object ``old`` was read from and replaces only the fields whose
    value changed (``path`` always says where the record is, as the SDK writes it); every other
    key, inside ``dataset`` or beside it (a newer SDK's field, a local ``datafiles`` section, a
    ``files`` list), and every field left alone, malformed or not, stays as it was stored. A field
    the record lacks is added in the SDK's order, so a new record (or one the SDK wrote) comes out
    as the SDK's own update writes it, byte for byte (``{"dataset": {id, name, tags, labels,
    path}}``). InvalidMetadata (nothing to write) when the record's id is there but not a UUID (a
    new one would replace the id another writer gave it), or when the change would merge into a
    field the record holds malformed: only a change of the whole field (``replacing``, e.g. the
    tags set whole) replaces one. ``default_name``: the name a record without one reads as (its
    directory's), so a malformed name the change leaves alone is told from one it sets."""
    new = {"id": validate_id(id), "name": _text(name), "tags": validate_tags(tags),
           "labels": sorted(validate_labels(labels)), "path": _text(path)}
    whole = copy.deepcopy(dict(old.whole)) if old is not None and old.whole is not None else {}
    record = whole.get("dataset")
    if not isinstance(record, dict) or not record:
        record = whole["dataset"] = {}
    if old is None:
        old = DatasetRecord()
    was = {"id": old.id, "name": old.name if old.name is not None else default_name,
           "tags": validate_tags(old.tags), "labels": sorted(old.labels),
           "path": old.path}
    for key in _FIELDS:
        if key in old.malformed and key != "path":
            if key == "id":
                raise InvalidMetadata("id", "the record's id is not a UUID; octuefs neither replaces it nor writes a "
                                            "record under it (fix the record first)", record.get("id"))
            if key in replacing:  # set whole (even to what it read as): it replaces what was there
                record[key] = new[key]
            elif _octue_json.canonical(new[key]) != _octue_json.canonical(was[key]):
                raise InvalidMetadata(key, f"the record's {key} is malformed (see the log); set {key} whole to "
                                           "replace it, nothing is merged into it", record.get(key))
            # (else untouched: it stays as stored)
        elif record.get(key) is None or _octue_json.canonical(new[key]) != _octue_json.canonical(was[key]):
            record[key] = new[key]
    return _octue_json.dumps(whole).encode("utf-8")


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


# --- the xattr form: a directory's user.octue.* --------------------------------------------

# What a dataset has of the files' attributes, and its name. Its tags and labels are rendered,
# parsed and validated by the files' codec (metadata.py), so a directory and a file take and show
# them alike; a field a dataset does not have (timestamp, cluster, sequence) is not stored here.
DATASET_XATTRS = ("id", "name", "tags", "labels")
_ID, _NAME, _TAGS = (_octue.XATTR_PREFIX + f for f in ("id", "name", "tags"))
DATASET_ID_XATTR = _ID


def _as_meta(record: DatasetRecord) -> _octue.OctueMetadata:
    return _octue.OctueMetadata(id=record.id, tags=record.tags, labels=record.labels)


def _is_tags_or_labels(name: str) -> bool:
    return name in (_TAGS, _octue.XATTR_PREFIX + "labels") or name.startswith(_TAGS + ".")


def list_dataset_xattrs(record: DatasetRecord) -> list[str]:
    """The names ``listxattr`` shows on a dataset's directory (its name always: the record's, else
    the directory's, as the SDK reads it)."""
    names = [_ID] if record.id else []
    names += [_NAME, _TAGS] + [f"{_TAGS}.{tag}" for tag in sorted(record.tags)] + [_octue.XATTR_PREFIX + "labels"]
    return names


def get_dataset_xattr(record: DatasetRecord, name: str, default_name: str) -> bytes:
    """The value ``getfattr`` shows for ``name`` on the directory; NoSuchAttribute if it has none."""
    if name == _ID and record.id:
        return record.id.encode()
    if name == _NAME:
        return (record.name or default_name).encode("utf-8", "surrogatepass")
    if _is_tags_or_labels(name):
        return _octue.get_xattr(_as_meta(record), name)
    raise NoSuchAttribute(name)


def validate_dataset_name(text: str) -> str:
    if not text or not text.isprintable() or text != text.strip():
        raise InvalidMetadata("name", "a dataset's name must be printable text, not empty, with no space at either "
                                      "end", text)
    return text


def fields_replaced_by(name: str) -> frozenset[str]:
    """The record fields a change of the attribute ``name`` replaces whole (the name, all tags,
    all labels), as opposed to one it merges into (one tag): see :func:`rewrite_dataset_record`."""
    if name == _NAME:
        return frozenset({"name"})
    if name == _TAGS:
        return frozenset({"tags"})
    if name == _octue.XATTR_PREFIX + "labels":
        return frozenset({"labels"})
    return frozenset()


def set_dataset_xattr(record: DatasetRecord, name: str, value: bytes, flags: int, default_name: str,
                      exists: bool = True) -> DatasetRecord:
    """The record after ``setxattr(name, value, flags)`` on its directory; ``record`` is unchanged.
    ``exists``: whether the directory has a record (else ``record`` is the one being made, and
    its name is not there yet for XATTR_CREATE: getxattr answered ENODATA).

    The same forms and checks as a file's: InvalidMetadata (EINVAL) for a bad value,
    ReadOnlyAttribute for a different id, AttributeExists / NoSuchAttribute for XATTR_CREATE /
    XATTR_REPLACE, AttributeNotSupported for a name a dataset does not keep."""
    if name == _ID:  # read-only; setting the value it has is a no-op (cp --preserve=xattr)
        if record.id is None or bytes(value) != record.id.encode():
            raise ReadOnlyAttribute(f"{name} is read-only: a dataset keeps its id")
        if flags & _octue.XATTR_CREATE:
            raise AttributeExists(name)
        return record
    if name == _NAME:
        if flags & _octue.XATTR_CREATE and exists:
            raise AttributeExists(name)  # (every dataset has a name: its directory's by default)
        if flags & _octue.XATTR_REPLACE and not exists:
            raise NoSuchAttribute(name)  # (as getxattr says: a directory without a record has none)
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMetadata("name", "must be UTF-8 text", bytes(value)) from None
        return dataclasses.replace(record, name=validate_dataset_name(text))
    if _is_tags_or_labels(name):
        meta = _octue.set_xattr(_as_meta(record), name, value, flags)
        return dataclasses.replace(record, tags=MappingProxyType(dict(meta.tags)), labels=meta.labels)
    raise AttributeNotSupported(f"{name}: a directory (a dataset) keeps only "
                                f"{_octue.XATTR_PREFIX}{{{','.join(DATASET_XATTRS)}}} and {_TAGS}.<name>")


def remove_dataset_xattr(record: DatasetRecord, name: str) -> DatasetRecord:
    """The record after ``removexattr(name)``: a tag dropped, the tags or labels emptied, the name
    back to the directory's; the id is read-only."""
    if name == _ID:
        raise ReadOnlyAttribute(f"{name} is read-only: a dataset keeps its id")
    if name == _NAME:
        return dataclasses.replace(record, name=None)
    if _is_tags_or_labels(name):
        meta = _octue.remove_xattr(_as_meta(record), name)
        return dataclasses.replace(record, tags=MappingProxyType(dict(meta.tags)), labels=meta.labels)
    raise NoSuchAttribute(name)
