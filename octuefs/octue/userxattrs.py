"""Other ``user.*`` extended attributes (not ``user.octue.*``, not ``user.gcs.*``) as custom metadata.

Each attribute is one custom-metadata key on the object: :data:`KEY_PREFIX` followed by its name
without ``user.`` (``user.myown`` -> ``octuefs.user.myown``). The prefix cannot collide with the
Octue SDK's ``octue__*`` keys, with the ``goog-reserved-*`` keys gcloud and gcsfuse use, or with
gcsfuse's ``gcsfuse_*`` keys; it is lower case, so tools that go through the XML API (which folds
header names to lower case) see the same key.

A value is stored as it is when it is printable UTF-8 text (so ``gcloud storage objects describe``
shows it plainly); any other bytes (binary, non-UTF-8, control characters, the empty value, and
text that itself starts with the marker) are stored as :data:`BINARY_MARKER` plus their base64,
so every value ``setfattr`` accepts reads back byte for byte. A name must be non-empty printable
UTF-8 after ``user.`` (it becomes a key, which GCS takes only as text): anything else is
``InvalidMetadata`` (EINVAL). An empty stored value counts as absent: fake-gcs-server stores ""
for a deleted key.

This module only translates; :mod:`octuefs.octue.metadata` holds the attributes in its model and
checks the GCS size limits on the whole custom metadata.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping

from octuefs.errors import InvalidMetadata

log = logging.getLogger(__name__)

XATTR_PREFIX = "user."
KEY_PREFIX = "octuefs.user."
BINARY_MARKER = "base64:"
RESERVED = ("user.octue.", "user.gcs.")  # namespaces octuefs answers itself


def is_user_xattr(name: str) -> bool:
    """Whether ``name`` is a ``user.*`` attribute stored as a custom-metadata key."""
    return name.startswith(XATTR_PREFIX) and not name.startswith(RESERVED)


def short_name(name: str) -> str:
    """The part of a ``user.*`` name after ``user.``; InvalidMetadata if it cannot be a key."""
    short = name[len(XATTR_PREFIX) :]
    try:
        short.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMetadata(name.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace"),
                              "an attribute name must be UTF-8 text to be kept as a GCS metadata key") from None
    if not short or not short.isprintable():
        raise InvalidMetadata(repr(name), "an attribute name must be printable text after 'user.'")
    return short


def encode_value(value: bytes) -> str:
    """The stored text of an attribute value (see the module docstring)."""
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text and text.isprintable() and not text.startswith(BINARY_MARKER):
        return text
    return BINARY_MARKER + base64.b64encode(bytes(value)).decode("ascii")


def decode_value(stored: str) -> bytes:
    """The attribute value from its stored text; text with a bad base64 payload reads as it is."""
    if stored.startswith(BINARY_MARKER):
        try:
            return base64.b64decode(stored[len(BINARY_MARKER) :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return stored.encode("utf-8", "surrogatepass")


def from_custom(custom: Mapping[str, str] | None) -> dict[str, bytes]:
    """The user attributes held in an object's custom metadata: short name -> value."""
    return {
        key[len(KEY_PREFIX) :]: decode_value(value)
        for key, value in (custom or {}).items()
        if key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX) and isinstance(value, str) and value != ""
    }


def into_custom(custom: Mapping[str, str], attrs: Mapping[str, bytes]) -> dict[str, str]:
    """``custom`` with its user-attribute keys replaced by ``attrs``; a stored value that already
    decodes to the attribute's value is kept byte for byte, every other key is kept as it is."""
    result = {k: v for k, v in custom.items() if not k.startswith(KEY_PREFIX)}
    for short, value in attrs.items():
        key = KEY_PREFIX + short
        old = custom.get(key)
        keep = isinstance(old, str) and old != "" and decode_value(old) == bytes(value)
        result[key] = old if keep else encode_value(value)
    return result
