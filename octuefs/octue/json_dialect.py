"""The Octue SDK's JSON dialect, and the rules for a value that may be stored in it.

The SDK writes every metadata field with ``json.dumps`` (default separators, ASCII only, NaN and
Infinity as bare words) plus two wrappers for what JSON lacks::

    {"_type": "datetime", "value": "<datetime.isoformat()>"}
    {"_type": "set", "items": [<the items, sorted>]}

:func:`dumps` writes exactly that text and :func:`loads` reads it back. :func:`normalise_value`
checks that a tag value survives the trip (so nothing is silently changed on the way to the
bucket) and returns a private deep copy of it; :func:`canonical` gives the text two values are
compared by, which treats NaN as equal to NaN and keeps ``1``, ``1.0`` and ``True`` apart.

This module is private to the codec (:mod:`octuefs.octue.metadata` and :mod:`octuefs.octue.dataset_record`);
use their API instead.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from typing import Any

from octuefs.errors import InvalidMetadata

WRAPPER_TYPES = ("datetime", "set")
MAX_DEPTH = 64  # nesting levels a tag value may have; also stops reference cycles


class _Encoder(json.JSONEncoder):
    """json.JSONEncoder plus the SDK's wrappers for sets and datetimes."""

    def default(self, o: Any) -> Any:
        if isinstance(o, (set, frozenset)):
            return {"_type": "set", "items": sorted(o)}
        if isinstance(o, dt.datetime):
            return {"_type": "datetime", "value": o.isoformat()}
        return super().default(o)


def _unwrap(obj: dict[str, Any]) -> Any:
    kind = obj.get("_type")
    if kind == "set":
        if not isinstance(obj.get("items"), list):
            raise ValueError(f"malformed set wrapper {obj!r:.80}")
        try:
            return set(obj["items"])
        except TypeError:
            raise ValueError("a set wrapper holds unhashable items") from None
    if kind == "datetime":
        if not isinstance(obj.get("value"), str):
            raise ValueError(f"malformed datetime wrapper {obj!r:.80}")
        return dt.datetime.fromisoformat(obj["value"])
    return obj


def dumps(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """Encode ``value`` as the SDK does (``ValueError``/``TypeError`` if it cannot be); ``indent``
    and ``sort_keys`` as ``json.dumps`` takes them (the SDK writes its local ``.octue`` files with
    an indent of 4, and serialises a manifest with both)."""
    return json.dumps(value, cls=_Encoder, indent=indent, sort_keys=sort_keys)


def loads(text: str) -> Any:
    """Decode SDK text. Raises ``ValueError`` for bad JSON, a malformed wrapper or a huge integer."""
    return json.loads(text, object_hook=_unwrap)


def canonical(value: Any) -> str:
    """The text two values are compared by: the SDK encoding with object keys sorted."""
    return json.dumps(value, cls=_Encoder, sort_keys=True)


_NOT_JSON = object()


def loads_or(text: str, fallback: Any) -> Any:
    """:func:`loads`, or ``fallback`` if ``text`` is not something it reads."""
    try:
        return loads(text)
    except (ValueError, RecursionError):
        return fallback


def parses(text: str) -> bool:
    """Whether ``text`` is something :func:`loads` reads (used to show a tag value unambiguously)."""
    return loads_or(text, _NOT_JSON) is not _NOT_JSON


# --- what a tag value may be -------------------------------------------------------------


def normalise_value(value: Any, where: str, depth: int = 0) -> Any:
    """Return a deep copy of ``value`` in the plain types :func:`loads` gives back.

    Tuples become lists and subclasses of the scalar types become the types themselves. Anything
    that would not come back equal from the bucket raises :class:`InvalidMetadata` naming
    ``where`` (e.g. ``tags.height_m``) and the rule broken.
    """
    if depth > MAX_DEPTH:
        raise InvalidMetadata(where, f"may be nested at most {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # a plain str even for a subclass
    if isinstance(value, int):
        return checked_int(value, where)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dt.datetime):
        return plain_datetime(value)
    if isinstance(value, Mapping):
        return _normalise_mapping(value, where, depth)
    if isinstance(value, (list, tuple)):
        return [normalise_value(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return _normalise_set(value, where, depth)
    raise InvalidMetadata(
        where,
        "must be JSON data (null, bool, number, string, list, object), a datetime or a set;"
        f" {type(value).__name__} is none of these",
    )


def plain_datetime(value: dt.datetime) -> dt.datetime:
    """``value`` as a plain datetime: a subclass (e.g. with nanoseconds) may not write ISO text Python reads."""
    if type(value) is dt.datetime:
        return value
    return dt.datetime(*value.timetuple()[:6], value.microsecond, value.tzinfo, fold=value.fold)


def checked_int(value: int, where: str) -> int:
    """``value`` as a plain int, refused if JSON text could not hold it (Python's 4300-digit limit)."""
    try:
        int.__repr__(value)
    except ValueError:
        raise InvalidMetadata(where, "an integer must have at most 4300 digits to be written as JSON") from None
    return int(value)


def _normalise_mapping(value: Mapping, where: str, depth: int) -> dict[str, Any]:
    out = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidMetadata(where, "object keys must be strings", key)
        out[str(key)] = normalise_value(item, f"{where}.{key}", depth + 1)
    if out.get("_type") in WRAPPER_TYPES:
        raise InvalidMetadata(
            where, f'an object with "_type": "{out["_type"]}" is reserved for the SDK\'s {out["_type"]} wrapper'
        )
    return out


def _normalise_set(value: set | frozenset, where: str, depth: int) -> set:
    items = set()
    for item in value:
        if isinstance(item, (set, frozenset, list, tuple, Mapping)):
            raise InvalidMetadata(where, "set items must be scalars (string, number, bool, null) or datetimes", item)
        if isinstance(item, float) and math.isnan(item):
            raise InvalidMetadata(where, "set items must not be NaN (a set of NaNs has no stable order)")
        items.add(normalise_value(item, where, depth + 1))
    try:
        sorted(items)
    except TypeError:
        rule = "set items must sort together (all strings, all numbers or all datetimes of one kind)"
        raise InvalidMetadata(where, rule) from None
    return items
