"""The local form of Octue metadata: a datafile's record in its directory's ``.octue`` file, as
the Octue SDK writes it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from octuefs.octue import json_dialect as _octue_json
from octuefs.octue.model import FIELDS, FROM_STORED, SDK_LAYOUT_VERSION, OctueMetadata

_log = logging.getLogger(__name__)

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
            values[field] = FROM_STORED[field](value)
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
