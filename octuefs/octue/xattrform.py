"""The xattr form of Octue metadata: ``user.octue.*`` attributes as ``getfattr``/``setfattr`` see
them, and the file's other ``user.*`` attributes, which the model carries."""

from __future__ import annotations

from typing import Any

from octuefs.errors import (
    AttributeExists,
    AttributeNotSupported,
    AttributeValueTooLarge,
    InvalidMetadata,
    NoSuchAttribute,
    ReadOnlyAttribute,
)
from octuefs.octue import json_dialect as _octue_json
from octuefs.octue import userxattrs
from octuefs.octue.fields import (
    INTEGER_TEXT,
    format_timestamp,
    instant_micros,
    validate_labels,
    validate_tag_name,
    validate_timestamp,
)
from octuefs.octue.model import (
    DEFAULTS,
    FIELDS,
    OCTUE_PREFIX,
    OctueMetadata,
    field_text,
)
from octuefs.octue.objectform import MAX_VALUE_BYTES, utf8_size

XATTR_PREFIX = "user.octue."
XATTR_CREATE = 1
XATTR_REPLACE = 2


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
        text = field_text("tags", value)
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
    size = len(field_text(field, getattr(meta, field)).encode("utf-8"))
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
    size = utf8_size(userxattrs.encode_value(value))
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
    return meta.replace(**{field: getattr(DEFAULTS, field)})
