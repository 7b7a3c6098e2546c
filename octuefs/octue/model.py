"""The Octue Datafile metadata model: :class:`OctueMetadata`, validated and immutable, and how a
field's stored text reads back (what the object form and the local form share).

The fields and what each may hold are :mod:`octuefs.octue.fields`; the SDK's JSON dialect is
:mod:`octuefs.octue.json_dialect`. The forms the model is written in are beside this module:
:mod:`octuefs.octue.objectform` (GCS custom metadata), :mod:`octuefs.octue.xattrform`
(``user.octue.*``) and :mod:`octuefs.octue.localform` (a ``.octue`` file); :mod:`octuefs.octue.metadata`
presents all of them as the one codec.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from octuefs.octue import json_dialect as _octue_json
from octuefs.octue.fields import (
    INTEGER_TEXT,
    validate_cluster,
    validate_id,
    validate_labels,
    validate_sequence,
    validate_tags,
    validate_timestamp,
)

SDK_LAYOUT_VERSION = "0.69.1"
OCTUE_PREFIX = "octue__"
FIELDS = ("id", "timestamp", "tags", "labels", "cluster", "sequence")


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
        return tuple(canonical(getattr(self, field)) for field in FIELDS)

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


DEFAULTS = OctueMetadata()


def canonical(value: Any) -> str:
    return _octue_json.canonical(dict(value) if isinstance(value, Mapping) else value)


def field_text(field: str, value: Any) -> str:
    """A field's value as the SDK writes it on the object."""
    return _octue_json.dumps(dict(value) if field == "tags" else value)


# --- stored values: what every form reads a field from -----------------------------


def _stored_int(value: Any) -> Any:
    """SDK 0.1.x read cluster/sequence with ``int()``: accept digit strings and whole floats too."""
    if isinstance(value, str) and INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


FROM_STORED = {
    "id": validate_id,
    "timestamp": validate_timestamp,
    "tags": validate_tags,
    "labels": validate_labels,
    "cluster": lambda value: validate_cluster(_stored_int(value)),
    "sequence": lambda value: validate_sequence(_stored_int(value)),
}


def decode_field(field: str, raw: str) -> Any:
    """The field's value from its stored (non-empty) text; raises if the text is malformed."""
    value = _octue_json.loads_or(raw, raw)  # text that is not JSON stays text, as in the SDK
    return FROM_STORED[field](value)


def stored_value(field: str, raw: Any) -> Any:
    """The field's value from its stored text, or the default when the text is malformed."""
    try:
        return decode_field(field, raw)
    except (ValueError, TypeError, RecursionError):
        return getattr(DEFAULTS, field)
