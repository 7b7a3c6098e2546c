"""The object form of Octue metadata: GCS custom metadata ``octue__<field>`` holding the SDK's
JSON text, read leniently and written byte-preserving, within GCS's size limits."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from octuefs.errors import MetadataTooLarge
from octuefs.octue import json_dialect as _octue_json
from octuefs.octue import userxattrs
from octuefs.octue.model import (
    DEFAULTS,
    FIELDS,
    OCTUE_PREFIX,
    SDK_LAYOUT_VERSION,
    OctueMetadata,
    canonical,
    decode_field,
    field_text,
    stored_value,
)

_log = logging.getLogger(__name__)

# GCS limits on custom metadata (google.storage.v1 ServiceConstants), in UTF-8 bytes.
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 4096
MAX_TOTAL_BYTES = 8192

SDK_VERSION_KEY = OCTUE_PREFIX + "sdk_version"


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
            values[field] = decode_field(field, raw)
        except (ValueError, TypeError, RecursionError) as exc:
            _log.warning("ignoring malformed %s%s=%.100r (%s); read as the default", OCTUE_PREFIX, field, raw, exc)
    return OctueMetadata(**values, xattrs=userxattrs.from_custom(custom))


def same_field_value(key: str, a: str | None, b: str | None) -> bool:
    """Do two stored values of custom metadata key ``key`` (None: absent) mean the same? For an
    Octue field, what they decode to is compared: an absent ``octue__cluster`` and ``"0"`` mean
    the same (a writer that stores every field spells out the default). A malformed value means
    only itself. Any other key: the same text."""
    if a == b:
        return True
    field = key[len(OCTUE_PREFIX):] if key.startswith(OCTUE_PREFIX) else None
    if field not in FIELDS:
        return False
    try:
        decoded = [decode_field(field, raw) if _is_set(raw) else getattr(OctueMetadata(), field) for raw in (a, b)]
    except (ValueError, TypeError, RecursionError):
        return False
    return decoded[0] == decoded[1]


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
            if canonical(stored_value(field, raw)) == canonical(value):
                continue
            changed = True
        elif canonical(value) != canonical(getattr(DEFAULTS, field)):
            changed = True
        written[key] = field_text(field, value)
    if not changed:
        return result
    if meta.id is None:
        raise ValueError("cannot encode Octue metadata without an id; call with_id() first")
    result.update(written)
    result[SDK_VERSION_KEY] = _octue_json.dumps(SDK_LAYOUT_VERSION)
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
    return metadata_delta(old, encode_object_metadata(meta, old))


def metadata_delta(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str | None]:
    """The keys one PATCH sends to turn custom metadata ``old`` into ``new``: those changed, and
    None for those removed (a key stored empty is as good as absent: not sent)."""
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
    merged, clashed = reapply_tags(base, ours, theirs)
    return None if clashed else merged


def reapply_tags(base: str | None, ours: str | None, theirs: str | None) -> tuple[str, set[str]]:
    """``theirs`` tags with the tags ``ours`` changed from ``base`` set (or removed) as ours has
    them; and the names of the tags where that replaced a different change of theirs."""
    b, o, t = (dict(stored_value("tags", text)) if text else {} for text in (base, ours, theirs))
    merged: dict[str, Any] = {}
    clashed: set[str] = set()
    for name in o.keys() | t.keys() | b.keys():
        bv, ov, tv = (canonical(d[name]) if name in d else None for d in (b, o, t))
        if ov != bv and tv != bv and ov != tv:
            clashed.add(name)  # (ours is taken: reapply's caller warns or refuses)
        source = t if ov == bv else o
        if name in source:
            merged[name] = source[name]
    return field_text("tags", dict(sorted(merged.items()))), clashed


def check_size_limits(custom: Mapping[str, str | None]) -> None:
    """Raise :class:`MetadataTooLarge` if GCS would refuse this custom metadata.

    The limits (UTF-8 bytes): a key at most 1 KiB, a value at most 4 KiB, all keys and values of
    one object together at most 8 KiB. ``None`` values (deletions) count for nothing.
    """
    total = 0
    for key, value in custom.items():
        if value is None:
            continue
        key_bytes, value_bytes = utf8_size(key), utf8_size(value)
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


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def with_octue_id(custom: Mapping[str, str], stored_id: str | None) -> dict[str, str]:
    """``custom`` with its Octue id replaced by ``stored_id`` (the id's stored text, as the object
    holds it): what a copy of an object that is a new Datafile of its own (a conflict copy) carries."""
    result = {k: v for k, v in custom.items() if k != OCTUE_PREFIX + "id"}
    result[OCTUE_PREFIX + "id"] = stored_id
    return result
