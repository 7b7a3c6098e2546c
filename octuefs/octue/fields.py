"""What each Octue metadata field may hold: the validators, and the timestamp as POSIX text.

Each ``validate_*`` function takes what a caller may reasonably give for one field and returns
the one normal form the model stores, or raises :class:`~octuefs.errors.InvalidMetadata` naming
the field and the rule. The rules are the SDK's (``octue`` 0.69.1), with two refinements: labels
are folded to lower case before they are checked (after stripping surrounding whitespace, as the
SDK does), and a tag name is matched whole, so a trailing newline is refused.

This module is private to :mod:`octuefs.octue.metadata`, which re-exports the public names.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
import re
import uuid
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from octuefs.errors import InvalidMetadata
from octuefs.octue import json_dialect as _octue_json

_TAG_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_]*[a-z0-9])?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_POSIX_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MAX_POSIX_SECONDS = 10**12  # beyond year 9999 either way; refused before any big arithmetic

TAG_NAME_RULE = "must be lower-case letters a-z, digits and '_', starting with a letter or digit, not ending in '_'"
LABEL_RULE = (
    "each label must be letters a-z (capitals are folded to lower case), digits and '-',"
    " starting with a letter or digit, not ending in '-'"
)


def validate_tag_name(name: Any) -> str:
    """Return ``name`` if it is a valid tag name, else raise :class:`InvalidMetadata`."""
    if not isinstance(name, str):
        raise InvalidMetadata("tag name", "must be a string", name)
    if not _TAG_NAME.fullmatch(name):
        raise InvalidMetadata("tag name", TAG_NAME_RULE, name)
    return str.__str__(name)


def validate_tags(tags: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a validated deep copy of ``tags`` (``None`` is no tags).

    Values may be anything JSON holds (NaN and Infinity included), datetimes and sets of scalars,
    nested to any reasonable depth; tuples become lists.
    """
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InvalidMetadata("tags", "must be a mapping of tag names to values", tags)
    return {validate_tag_name(n): _octue_json.normalise_value(v, f"tags.{n}") for n, v in tags.items()}


def validate_labels(labels: str | Iterable[str] | None) -> frozenset[str]:
    """Return the labels as a frozenset of valid, lower-case labels.

    ``labels`` is ``None``, a string of space-separated labels, a string holding a JSON list, or an
    iterable of strings. Each label is stripped and folded to lower case, then validated.
    """
    if labels is None:
        return frozenset()
    if isinstance(labels, str):
        items = _label_words(labels)
    elif isinstance(labels, (bytes, bytearray, Mapping)) or not isinstance(labels, Iterable):
        raise InvalidMetadata("labels", "must be a space-separated string or an iterable of strings", labels)
    else:
        items = labels
    return frozenset(_validate_label(item) for item in items)


def _label_words(text: str) -> list[Any]:
    stripped = text.strip()
    if not stripped.startswith("["):
        return stripped.split()
    try:
        items = json.loads(stripped)
    except (ValueError, RecursionError):  # (RecursionError: "[[[[..." nested past the parser's depth)
        items = None
    if not isinstance(items, list):
        raise InvalidMetadata("labels", "text starting with '[' must be a JSON list of labels", text)
    return items


def _validate_label(label: Any) -> str:
    if not isinstance(label, str):
        raise InvalidMetadata("labels", "each label must be a string", label)
    folded = label.strip().lower()
    if not _LABEL.fullmatch(folded):
        raise InvalidMetadata("labels", LABEL_RULE, label)
    return folded


def validate_cluster(value: Any) -> int:
    """Return the cluster as a plain int (anything ``operator.index`` takes, but not a bool)."""
    return _validate_int(value, "cluster")


def validate_sequence(value: Any) -> int | None:
    """Return the sequence as a plain int, or ``None`` for no sequence."""
    return None if value is None else _validate_int(value, "sequence")


def _validate_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise InvalidMetadata(field, "must be an integer, not a bool", value)
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidMetadata(field, "must be an integer", value) from None
    return _octue_json.checked_int(number, field)


def validate_timestamp(value: Any) -> dt.datetime | None:
    """Return the timestamp as a datetime, or ``None``.

    Accepts a datetime (kept as given, naive or aware), POSIX seconds as an int, a float or a
    decimal string (giving an aware UTC datetime, rounded to the microsecond), or an ISO 8601
    date-time string (naive when it has no offset).
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return _in_utc_range(_octue_json.plain_datetime(value))
    if isinstance(value, bool):
        raise InvalidMetadata("timestamp", "must be a datetime, POSIX seconds or ISO 8601 text, not a bool", value)
    if isinstance(value, int):
        return _from_posix(Decimal(value), value)
    if isinstance(value, float):
        return _from_posix(Decimal(repr(value)), value)
    if isinstance(value, str):
        text = value.strip()
        if _POSIX_TEXT.fullmatch(text):
            return _from_posix(Decimal(text), value)
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidMetadata("timestamp", "must be POSIX seconds or an ISO 8601 date-time", value) from None
        return _in_utc_range(parsed)
    raise InvalidMetadata("timestamp", "must be a datetime, POSIX seconds or ISO 8601 text", value)


def _in_utc_range(value: dt.datetime) -> dt.datetime:
    """``value`` itself, if its instant exists in UTC (so it has POSIX seconds)."""
    if value.utcoffset() is not None:
        try:
            value.astimezone(dt.timezone.utc)
        except OverflowError:
            raise InvalidMetadata("timestamp", "must be an instant within the years 1 to 9999 in UTC", value) from None
    return value


def _from_posix(seconds: Decimal, original: Any) -> dt.datetime:
    try:
        if not seconds.is_finite() or seconds.copy_abs() > _MAX_POSIX_SECONDS:
            raise OverflowError
        micros = int((seconds * 1_000_000).to_integral_value(ROUND_HALF_EVEN))
        return _EPOCH + dt.timedelta(microseconds=micros)
    except ArithmeticError:  # OverflowError, and decimal's signals
        rule = "POSIX seconds must be finite, within the years 1 to 9999"
        raise InvalidMetadata("timestamp", rule, original) from None


def validate_id(value: Any) -> str:
    """Return the id as a lower-case hyphenated UUID string (from a UUID, or text ``uuid.UUID`` reads)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise InvalidMetadata("id", "must be a UUID", value)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidMetadata("id", "must be a UUID", value) from None


def format_timestamp(ts: dt.datetime) -> str:
    """POSIX seconds as text: ``"1704067200"`` or ``"1704067200.123456"`` (no trailing zeros).

    A naive datetime is taken as UTC. The text is exact (no float rounding), so
    :func:`validate_timestamp` reads back the same instant.
    """
    micros = instant_micros(ts)
    whole, frac = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    return f"{sign}{whole}" + (f".{frac:06d}".rstrip("0") if frac else "")


def instant_micros(ts: dt.datetime) -> int:
    """Microseconds since the epoch (exact integer arithmetic); a naive datetime is taken as UTC."""
    if ts.utcoffset() is None:
        ts = ts.replace(tzinfo=dt.timezone.utc)
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
