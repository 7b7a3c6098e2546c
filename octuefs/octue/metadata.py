"""The Octue Datafile metadata model, and the one codec between its three forms.

Everything that knows what an Octue field looks like lives here, so a value set through
``setfattr`` reads back identically through the Python ``Datafile`` API and through the Octue SDK:

* :class:`OctueMetadata`, the validated, immutable model (id, timestamp, tags, labels, cluster,
  sequence), and the ``validate_*`` functions that define what each field may hold;
* the object form: GCS custom metadata ``octue__<field>`` holding the SDK's JSON text
  (:func:`decode_object_metadata`, :func:`encode_object_metadata`, :func:`metadata_patch`,
  :func:`check_size_limits`);
* the xattr form: ``user.octue.*`` attributes as ``getfattr``/``setfattr`` see them
  (:func:`list_xattr_names`, :func:`get_xattr`, :func:`set_xattr`, :func:`remove_xattr`), and
  the file's other ``user.*`` attributes, which the model carries (``OctueMetadata.xattrs``) so
  they travel wherever its metadata does; their keys and values are :mod:`octuefs.fs.userxattrs`.

The layout is the one in ``octue-metadata.md`` (SDK 0.69.1, plus the ``cluster``/``sequence``
keys of SDK 0.1.19-0.1.27). Two choices beyond the SDK: labels are folded to lower case before
they are validated (so ``Vestas`` is stored as ``vestas``, which every SDK can read back), and a
tag name may not end in a newline (the SDK's ``$`` lets one through). The ``user.octue.timestamp``
text is POSIX seconds: it carries the instant, not the offset, so setting it back to the same
instant keeps the datetime already held (naive or with its offset).

Reading is lenient (a malformed stored value logs one warning and reads as the field's default);
writing is byte-preserving (a stored value that already means what the model holds is kept as it
is, so a round trip never rewrites what another writer stored).

Two private helpers hold the details: ``_octue_fields`` (the validators, re-exported here) and
``_octue_json`` (the SDK's JSON dialect with its ``_type`` wrappers). Nothing else in octuefs
should import them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from octuefs.errors import (
    AttributeExists,
    AttributeNotSupported,
    AttributeValueTooLarge,
    InvalidMetadata,
    MetadataTooLarge,
    NoSuchAttribute,
    ReadOnlyAttribute,
)
from octuefs.fs import userxattrs
from octuefs.octue import json_dialect as _octue_json
from octuefs.octue.fields import (
    INTEGER_TEXT,
    format_timestamp,
    instant_micros,
    validate_cluster,
    validate_id,
    validate_labels,
    validate_sequence,
    validate_tag_name,
    validate_tags,
    validate_timestamp,
)

_log = logging.getLogger(__name__)

SDK_LAYOUT_VERSION = "0.69.1"
OCTUE_PREFIX = "octue__"
XATTR_PREFIX = "user.octue."
XATTR_CREATE = 1
XATTR_REPLACE = 2

# GCS limits on custom metadata (google.storage.v1 ServiceConstants), in UTF-8 bytes.
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 4096
MAX_TOTAL_BYTES = 8192

FIELDS = ("id", "timestamp", "tags", "labels", "cluster", "sequence")
_SDK_VERSION_KEY = OCTUE_PREFIX + "sdk_version"


# --- the model --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class OctueMetadata:
    """One object's Octue metadata, validated on construction and immutable.

    ``tags`` is held as a read-only mapping of a private deep copy (do not mutate nested values).
    Equality compares what would be written: NaN equals NaN, ``1``/``1.0``/``True`` differ, two
    timestamps are equal only with the same instant *and* offset (or both naive), tag order does
    not matter.

    ``xattrs`` holds the file's other ``user.*`` attributes (name after ``user.`` -> value), or
    ``None`` when the holder does not know them (a model built by the Datafile API): encoding
    then keeps the ones stored, and equality does not compare them.
    """

    id: str | None = None
    timestamp: dt.datetime | None = None
    tags: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    labels: frozenset[str] = frozenset()
    cluster: int = 0
    sequence: int | None = None
    xattrs: Mapping[str, bytes] | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        if self.xattrs is not None:
            put(self, "xattrs", MappingProxyType({str(k): bytes(v) for k, v in self.xattrs.items()}))
        if self.id is not None:
            put(self, "id", validate_id(self.id))
        put(self, "timestamp", validate_timestamp(self.timestamp))
        put(self, "tags", MappingProxyType(validate_tags(self.tags)))
        put(self, "labels", validate_labels(self.labels))
        put(self, "cluster", validate_cluster(self.cluster))
        put(self, "sequence", validate_sequence(self.sequence))

    def _key(self) -> tuple[str, ...]:
        return tuple(_canonical(getattr(self, field)) for field in FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OctueMetadata):
            return NotImplemented
        if self._key() != other._key():
            return False
        return self.xattrs is None or other.xattrs is None or dict(self.xattrs) == dict(other.xattrs)

    def __hash__(self) -> int:
        return hash(self._key())

    def replace(self, **changes: Any) -> OctueMetadata:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def with_id(self) -> OctueMetadata:
        """``self`` if it has an id, else a copy with a new random (version 4) UUID."""
        return self if self.id is not None else self.replace(id=str(uuid.uuid4()))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values: the tags as a (deep-copied) dict, the labels as a set."""
        return {
            "id": self.id,
            "timestamp": self.timestamp,
            "tags": copy.deepcopy(dict(self.tags)),
            "labels": set(self.labels),
            "cluster": self.cluster,
            "sequence": self.sequence,
        }


_DEFAULTS = OctueMetadata()


def _canonical(value: Any) -> str:
    return _octue_json.canonical(dict(value) if isinstance(value, Mapping) else value)


def _field_text(field: str, value: Any) -> str:
    """A field's value as the SDK writes it on the object."""
    return _octue_json.dumps(dict(value) if field == "tags" else value)


# --- the object form: GCS custom metadata ----------------------------------------------


def _stored_int(value: Any) -> Any:
    """SDK 0.1.x read cluster/sequence with ``int()``: accept digit strings and whole floats too."""
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_FROM_STORED = {
    "id": validate_id,
    "timestamp": validate_timestamp,
    "tags": validate_tags,
    "labels": validate_labels,
    "cluster": lambda value: validate_cluster(_stored_int(value)),
    "sequence": lambda value: validate_sequence(_stored_int(value)),
}


def _decode_field(field: str, raw: str) -> Any:
    """The field's value from its stored (non-empty) text; raises if the text is malformed."""
    value = _octue_json.loads_or(raw, raw)  # text that is not JSON stays text, as in the SDK
    return _FROM_STORED[field](value)


def _stored_value(field: str, raw: Any) -> Any:
    """The field's value from its stored text, or the default when the text is malformed."""
    try:
        return _decode_field(field, raw)
    except (ValueError, TypeError, RecursionError):
        return getattr(_DEFAULTS, field)


def _is_set(raw: Any) -> bool:
    """A stored value counts only if it is a non-empty string (fake-gcs-server stores "" for deleted keys)."""
    return isinstance(raw, str) and raw != ""


def decode_object_metadata(custom: Mapping[str, str] | None) -> OctueMetadata:
    """Read the Octue fields of an object's custom metadata. Never raises.

    An absent or empty key gives the field's default; a malformed value logs one warning naming
    the key and also gives the default. The returned model has ``id=None`` if the object has none.
    """
    custom = custom or {}
    values = {}
    for field in FIELDS:
        raw = custom.get(OCTUE_PREFIX + field)
        if not _is_set(raw):
            continue
        try:
            values[field] = _decode_field(field, raw)
        except (ValueError, TypeError, RecursionError) as exc:
            _log.warning("ignoring malformed %s%s=%.100r (%s); read as the default", OCTUE_PREFIX, field, raw, exc)
    return OctueMetadata(**values, xattrs=userxattrs.from_custom(custom))


def encode_object_metadata(meta: OctueMetadata, existing: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole custom metadata to store for ``meta`` on an object that now has ``existing``.

    Every key of ``existing`` that is not an Octue field is kept as it is, except the user
    attributes' keys when ``meta.xattrs`` is known: those become exactly ``meta.xattrs``. For each
    field, a stored value that already reads as ``meta``'s value (a malformed one reading as the
    default included) is kept byte for byte. If no field changes, the Octue keys come back
    unchanged; otherwise every field is written, with ``octue__sdk_version`` set to
    :data:`SDK_LAYOUT_VERSION`. Raises ``ValueError`` if a field is to be written and ``meta.id``
    is ``None`` (use :meth:`OctueMetadata.with_id`, or :func:`identified`).
    """
    result = dict(existing or {})
    if meta.xattrs is not None:
        result = userxattrs.into_custom(result, meta.xattrs)
    written: dict[str, str] = {}
    changed = False
    for field in FIELDS:
        key, value = OCTUE_PREFIX + field, getattr(meta, field)
        raw = result.get(key)
        if _is_set(raw):
            if _canonical(_stored_value(field, raw)) == _canonical(value):
                continue
            changed = True
        elif _canonical(value) != _canonical(getattr(_DEFAULTS, field)):
            changed = True
        written[key] = _field_text(field, value)
    if not changed:
        return result
    if meta.id is None:
        raise ValueError("cannot encode Octue metadata without an id; call with_id() first")
    result.update(written)
    result[_SDK_VERSION_KEY] = _octue_json.dumps(SDK_LAYOUT_VERSION)
    return result


def identified(meta: OctueMetadata, existing: Mapping[str, str] | None) -> OctueMetadata:
    """``meta``, given an id if encoding it onto ``existing`` writes Octue fields. A change of
    other user attributes alone leaves an object without Octue metadata without it."""
    if meta.id is not None or decode_object_metadata(existing).replace(xattrs=None) == meta:
        return meta
    return meta.with_id()


def metadata_patch(existing: Mapping[str, str] | None, meta: OctueMetadata) -> dict[str, str | None]:
    """The keys to send in one PATCH to turn ``existing`` into ``encode_object_metadata(meta, existing)``.

    ``{}`` means there is nothing to send; ``None`` deletes a key (a user attribute removed).
    """
    old = dict(existing or {})
    new = encode_object_metadata(meta, old)
    changes: dict[str, str | None] = {key: value for key, value in new.items() if old.get(key) != value}
    changes.update({key: None for key, value in old.items() if key not in new and value != ""})
    return changes


def octue_patch_from(existing: Mapping[str, str] | None, donor: Mapping[str, str]) -> dict[str, str | None]:
    """The keys to send in one PATCH so that an object with ``existing`` custom metadata carries
    exactly the Octue metadata (every ``octue__*`` key, known field or not) of ``donor``: the
    donor's keys set, the object's other Octue keys removed, every other key left as it is."""
    old = dict(existing or {})
    wanted = {k: v for k, v in donor.items() if k.startswith(OCTUE_PREFIX)}
    changes: dict[str, str | None] = {k: v for k, v in wanted.items() if old.get(k) != v}
    changes.update({k: None for k in old if k.startswith(OCTUE_PREFIX) and k not in wanted})
    return changes


TAGS_KEY = OCTUE_PREFIX + "tags"


def merge_tags(base: str | None, ours: str | None, theirs: str | None) -> str | None:
    """Three stored ``octue__tags`` texts merged tag by tag (both sides changed the key: one set
    tag ``a``, the other tag ``b``): the merged text, or None if both changed one tag
    differently (then neither may win silently)."""
    b, o, t = (dict(_stored_value("tags", text)) if text else {} for text in (base, ours, theirs))
    merged: dict[str, Any] = {}
    for name in o.keys() | t.keys() | b.keys():
        bv, ov, tv = (_canonical(d[name]) if name in d else None for d in (b, o, t))
        if ov != bv and tv != bv and ov != tv:
            return None
        source = t if ov == bv else o
        if name in source:
            merged[name] = source[name]
    return _field_text("tags", dict(sorted(merged.items())))


def check_size_limits(custom: Mapping[str, str | None]) -> None:
    """Raise :class:`MetadataTooLarge` if GCS would refuse this custom metadata.

    The limits (UTF-8 bytes): a key at most 1 KiB, a value at most 4 KiB, all keys and values of
    one object together at most 8 KiB. ``None`` values (deletions) count for nothing.
    """
    total = 0
    for key, value in custom.items():
        if value is None:
            continue
        key_bytes, value_bytes = _utf8_size(key), _utf8_size(value)
        if key_bytes > MAX_KEY_BYTES:
            raise MetadataTooLarge(key, f"key is {key_bytes} bytes; GCS allows {MAX_KEY_BYTES} bytes per key")
        if value_bytes > MAX_VALUE_BYTES:
            raise MetadataTooLarge(key, f"value is {value_bytes} bytes; GCS allows {MAX_VALUE_BYTES} bytes per value")
        total += key_bytes + value_bytes
    if total > MAX_TOTAL_BYTES:
        raise MetadataTooLarge(
            "custom metadata",
            f"keys and values total {total} bytes; GCS allows {MAX_TOTAL_BYTES} bytes of custom metadata per object",
        )


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# --- the xattr form: user.octue.* ------------------------------------------------------


_TAGS_DOT = "tags."


def is_octue_xattr(name: str) -> bool:
    """Whether ``name`` is in the ``user.octue.`` namespace (known to octuefs or not)."""
    return name.startswith(XATTR_PREFIX)


def is_stored_xattr(name: str) -> bool:
    """Whether ``name`` is kept in the object's custom metadata: ``user.octue.*`` or another
    ``user.*`` attribute (``user.gcs.*`` are the object's own facts)."""
    return is_octue_xattr(name) or userxattrs.is_user_xattr(name)


def _parse_xattr_name(name: str) -> tuple[str, str | None]:
    """``(field, tag name or None)`` for a ``user.octue.*`` name; AttributeNotSupported otherwise."""
    rest = name[len(XATTR_PREFIX) :] if is_octue_xattr(name) else None
    if rest is not None and rest.startswith(_TAGS_DOT):
        return "tags", rest[len(_TAGS_DOT) :]
    if rest in FIELDS:
        return rest, None
    raise AttributeNotSupported(
        f"{name}: octuefs stores only {XATTR_PREFIX}{{{','.join(FIELDS)}}} and {XATTR_PREFIX}tags.<name>"
    )


def _has(meta: OctueMetadata, field: str, tag: str | None) -> bool:
    if tag is not None:
        return tag in meta.tags
    return field in ("tags", "labels", "cluster") or getattr(meta, field) is not None


def list_xattr_names(meta: OctueMetadata) -> list[str]:
    """The ``user.octue.*`` names ``listxattr`` shows: every field that has a value, one per tag."""
    names = [XATTR_PREFIX + f for f in ("id", "timestamp", "tags") if _has(meta, f, None)]
    names += [XATTR_PREFIX + _TAGS_DOT + tag for tag in sorted(meta.tags)]
    names += [XATTR_PREFIX + f for f in ("labels", "cluster", "sequence") if _has(meta, f, None)]
    names += [userxattrs.XATTR_PREFIX + short for short in sorted(meta.xattrs or {})]
    return names


def get_xattr(meta: OctueMetadata, name: str) -> bytes:
    """The value ``getfattr`` shows for ``name``; NoSuchAttribute if it is absent or not one of ours.

    Rendered once per model and name (a memo on the immutable model): ``getfattr -d`` over a
    directory asks for every attribute of every file.
    """
    memo = meta.__dict__.get("_xattr_memo")
    if memo is None:
        memo = {}
        object.__setattr__(meta, "_xattr_memo", memo)
    value = memo.get(name)
    if value is None:
        value = memo[name] = _render_xattr(meta, name)
    return value


def _render_xattr(meta: OctueMetadata, name: str) -> bytes:
    if userxattrs.is_user_xattr(name):
        value = (meta.xattrs or {}).get(name[len(userxattrs.XATTR_PREFIX) :])
        if value is None:
            raise NoSuchAttribute(name)
        return value
    try:
        field, tag = _parse_xattr_name(name)
    except AttributeNotSupported:
        raise NoSuchAttribute(name) from None
    if not _has(meta, field, tag):
        raise NoSuchAttribute(name)
    if tag is not None:
        return _tag_value_text(meta.tags[tag]).encode("utf-8")
    value = getattr(meta, field)
    if field == "timestamp":
        text = format_timestamp(value)
    elif field == "labels":
        text = " ".join(sorted(value))
    elif field == "tags":
        text = _field_text("tags", value)
    else:
        text = str(value)
    return text.encode("utf-8")


def _tag_value_text(value: Any) -> str:
    """A tag value as raw text if that is unambiguous (a string that is not JSON), else as JSON."""
    if isinstance(value, str) and not _octue_json.parses(value) and _is_utf8(value):
        return value
    return _octue_json.dumps(value)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only JSON's \\u escape can carry it
        return False
    return True


def set_xattr(meta: OctueMetadata, name: str, value: bytes, flags: int = 0) -> OctueMetadata:
    """The model after ``setxattr(name, value, flags)``; ``meta`` itself is not changed.

    Setting a value to exactly what :func:`get_xattr` returned gives a model equal to ``meta``.
    Another ``user.*`` name sets that attribute (any bytes; InvalidMetadata for a name that
    cannot be a metadata key). Raises AttributeNotSupported (not ours), ReadOnlyAttribute (a
    different id), AttributeExists / NoSuchAttribute (XATTR_CREATE / XATTR_REPLACE),
    InvalidMetadata (a bad value, naming the field and the rule) or AttributeValueTooLarge (the
    encoded field would break the GCS 4 KiB limit).
    """
    if userxattrs.is_user_xattr(name):
        return _set_user_xattr(meta, name, value, flags)
    field, tag = _parse_xattr_name(name)
    if field == "id" and (meta.id is None or bytes(value) != meta.id.encode()):
        raise ReadOnlyAttribute(f"{name} is read-only: octuefs assigns the id and keeps it")
    if tag is not None:
        validate_tag_name(tag)
    exists = _has(meta, field, tag)
    if flags & XATTR_CREATE and exists:
        raise AttributeExists(name)
    if flags & XATTR_REPLACE and not exists:
        raise NoSuchAttribute(name)
    if field == "id":
        return meta
    text = _utf8_text(value, name[len(XATTR_PREFIX) :])
    new = meta.replace(**{field: _parse_xattr_value(meta, field, tag, text)})
    _check_field_size(new, field, name)
    return new


def _utf8_text(value: bytes, field: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMetadata(field, "must be UTF-8 text", bytes(value)) from None


def _parse_xattr_value(meta: OctueMetadata, field: str, tag: str | None, text: str) -> Any:
    """The new value of ``field`` from the text given to setxattr."""
    if tag is not None:
        return {**meta.tags, tag: _octue_json.loads_or(text, text)}
    if field == "tags":
        tags = _octue_json.loads_or(text, None)
        if not isinstance(tags, dict):
            raise InvalidMetadata("tags", "must be a JSON object of tag names to values", text)
        return tags
    if field == "timestamp":
        new = validate_timestamp(text)
        same_instant = meta.timestamp is not None and instant_micros(new) == instant_micros(meta.timestamp)
        return meta.timestamp if same_instant else new
    if field in ("cluster", "sequence"):
        if not INTEGER_TEXT.fullmatch(text.strip()):
            raise InvalidMetadata(field, "must be an integer in decimal digits", text)
        return int(text)
    return validate_labels(text)


def _check_field_size(meta: OctueMetadata, field: str, name: str) -> None:
    size = len(_field_text(field, getattr(meta, field)).encode("utf-8"))
    if size > MAX_VALUE_BYTES:
        raise AttributeValueTooLarge(
            f"{name}: {OCTUE_PREFIX}{field} would be {size} bytes; GCS allows {MAX_VALUE_BYTES} bytes per value"
        )


def _set_user_xattr(meta: OctueMetadata, name: str, value: bytes, flags: int) -> OctueMetadata:
    short = userxattrs.short_name(name)
    attrs = dict(meta.xattrs or {})
    if flags & XATTR_CREATE and short in attrs:
        raise AttributeExists(name)
    if flags & XATTR_REPLACE and short not in attrs:
        raise NoSuchAttribute(name)
    size = _utf8_size(userxattrs.encode_value(value))
    if size > MAX_VALUE_BYTES:
        raise AttributeValueTooLarge(f"{name}: stored as {userxattrs.KEY_PREFIX}{short}, the value would be "
                                     f"{size} bytes; GCS allows {MAX_VALUE_BYTES} bytes per value")
    return meta.replace(xattrs={**attrs, short: bytes(value)})


def remove_xattr(meta: OctueMetadata, name: str) -> OctueMetadata:
    """The model after ``removexattr(name)``: a tag is dropped, a field goes back to its default,
    another user attribute is removed."""
    if userxattrs.is_user_xattr(name):
        short = userxattrs.short_name(name)
        if short not in (meta.xattrs or {}):
            raise NoSuchAttribute(name)
        return meta.replace(xattrs={k: v for k, v in meta.xattrs.items() if k != short})
    field, tag = _parse_xattr_name(name)
    if not _has(meta, field, tag):
        raise NoSuchAttribute(name)
    if field == "id":
        raise ReadOnlyAttribute(f"{name} is read-only: octuefs assigns the id and keeps it")
    if tag is not None:
        return meta.replace(tags={k: v for k, v in meta.tags.items() if k != tag})
    return meta.replace(**{field: getattr(_DEFAULTS, field)})

# --- the local form: a record in a directory's .octue file ------------------------------

LOCAL_METADATA_FILENAME = ".octue"
_RECORD_KEYS = (*FIELDS, "sdk_version")


def decode_local_record(record: Any) -> OctueMetadata:
    """Read one datafile's record from a ``.octue`` file (already JSON-decoded). Never raises.

    The SDK writes ``id``, ``timestamp``, ``tags``, ``labels`` and ``sdk_version``; octuefs adds
    ``cluster`` and ``sequence``. A missing or ``None`` value gives the field's default; a malformed
    one logs one warning naming the field and also gives the default.
    """
    values = {}
    for field in FIELDS:
        value = record.get(field) if isinstance(record, Mapping) else None
        if value is None:
            continue
        try:
            values[field] = _FROM_STORED[field](value)
        except (ValueError, TypeError, RecursionError) as exc:
            _log.warning("ignoring malformed %r=%.100r in a local metadata record (%s); read as the default",
                         field, value, exc)
    return OctueMetadata(**values)


def encode_local_record(meta: OctueMetadata, existing: Any = None) -> dict[str, Any]:
    """The record to store for ``meta`` in a ``.octue`` file, in place of ``existing``.

    Keys of ``existing`` that are not Octue fields (written by a newer SDK, say) are kept. If
    ``existing`` already reads as ``meta``, it comes back unchanged (so nothing is rewritten).
    Raises ``ValueError`` if ``meta.id`` is ``None``.
    """
    if meta.id is None:
        raise ValueError("cannot record Octue metadata without an id; call with_id() first")
    existing = dict(existing) if isinstance(existing, Mapping) else {}
    if existing and decode_local_record(existing) == meta:
        return existing
    fields = meta.to_dict()
    record = {key: value for key, value in existing.items() if key not in _RECORD_KEYS}
    return {**record, **{f: fields[f] for f in FIELDS}, "sdk_version": SDK_LAYOUT_VERSION}


def dumps_local_metadata(data: Mapping[str, Any]) -> str:
    """A ``.octue`` file's text as the SDK writes it: its JSON dialect, indented by 4, a final newline."""
    return _octue_json.dumps(data, indent=4) + "\n"


def loads_local_metadata(text: str) -> dict[str, Any]:
    """A ``.octue`` file's content; ``ValueError`` if it is not a JSON object in the SDK's dialect."""
    data = _octue_json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"a local metadata file holds a JSON object, not {type(data).__name__}")
    return data


__all__ = [
    "SDK_LAYOUT_VERSION",
    "OCTUE_PREFIX",
    "XATTR_PREFIX",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "OctueMetadata",
    "validate_tag_name",
    "validate_tags",
    "validate_labels",
    "validate_cluster",
    "validate_sequence",
    "validate_timestamp",
    "validate_id",
    "format_timestamp",
    "decode_object_metadata",
    "encode_object_metadata",
    "metadata_patch",
    "check_size_limits",
    "merge_tags",
    "is_octue_xattr",
    "is_stored_xattr",
    "identified",
    "list_xattr_names",
    "get_xattr",
    "set_xattr",
    "remove_xattr",
    "LOCAL_METADATA_FILENAME",
    "decode_local_record",
    "encode_local_record",
    "dumps_local_metadata",
    "loads_local_metadata",
]


def with_octue_id(custom: Mapping[str, str], stored_id: str | None) -> dict[str, str]:
    """``custom`` with its Octue id replaced by ``stored_id`` (the id's stored text, as the object
    holds it): what a copy of an object that is a new Datafile of its own (a conflict copy) carries."""
    result = {k: v for k, v in custom.items() if k != OCTUE_PREFIX + "id"}
    result[OCTUE_PREFIX + "id"] = stored_id
    return result
