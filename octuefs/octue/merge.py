"""Three-way merges of custom metadata: ours, theirs (a change made elsewhere meanwhile) and the
base both started from, key by key and the Octue tags tag by tag.

:func:`reapply` is the one rule for a metadata update that raced another writer, whoever sends
it: the mount's ``setfattr`` (writeback/patches.py) and ``Datafile.update_cloud_metadata``
(octue/datafile_cloud.py). The update is applied again to what the bucket holds now, key by key
(tag by tag): a key or tag changed only elsewhere is kept, one changed only here is set. Where
both changed the same key differently, the two differ only in who can still be told: the mount
has already acknowledged its ``setfattr`` (and journaled it), so its value, the later one, is
applied and a WARNING names the key and the value replaced; a ``Datafile`` caller is still
waiting, so it gets :class:`~octuefs.errors.Conflict` and nothing is written. (docs/semantics.md,
"A change elsewhere meanwhile".)

:func:`merge_metadata` is the stricter merge an upload of new content uses (it never overwrites a
key changed elsewhere: the version goes beside as a conflict copy instead)."""

from __future__ import annotations

from octuefs.errors import OctuefsError
from octuefs.octue.metadata import (
    TAGS_KEY,
    check_size_limits,
    merge_tags,
    same_field_value,
)


def merge_metadata(base: dict[str, str] | None, ours: dict[str, str], theirs: dict[str, str]) -> dict[str, str] | None:
    """Our custom metadata with a change made elsewhere to the same content merged in, key by key
    (the Octue tags, :data:`TAGS_KEY`, tag by tag) against the metadata both started from; None if
    both changed one key (or tag) differently, or the base is not known: then neither may win
    silently. (A value that means what the base's did, such as a default spelled out, is no
    change: :func:`~octuefs.octue.objectform.same_field_value`.)"""
    if base is None:
        return None
    merged: dict[str, str] = {}
    for key in ours.keys() | theirs.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if o != b and t != b and o != t:
            if same_field_value(key, b, t):  # theirs only spelled out what the base meant
                if o is not None:
                    merged[key] = o
                continue
            if key != TAGS_KEY:
                return None
            value = merge_tags(b, o, t)  # one key, many tags: different tags set on each side merge
            if value is None:
                return None
            merged[key] = value
            continue
        value = t if o == b else o
        if value is not None:
            merged[key] = value
    return merged


def fits_limits(custom: dict[str, str]) -> bool:
    """Does this custom metadata fit GCS's limits (a merge of two that each fit may not)?"""
    try:
        check_size_limits(custom)
    except OctuefsError:
        return False
    return True


def reapply(base: dict[str, str], ours: dict[str, str], theirs: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """``theirs`` with the keys ``ours`` changed from ``base`` set as ours has them (tags merged
    tag by tag where they can be); and the keys where that replaced a change of theirs (what the
    caller warns of, or refuses: see the module docstring)."""
    merged, overwritten = dict(theirs), set()
    for key in ours.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if o == b:
            continue
        if t != b and t != o:
            value = merge_tags(b, o, t) if key == TAGS_KEY else None
            if value is not None:
                merged[key] = value
                continue
            if not same_field_value(key, b, t):  # (theirs only spelled out what the base meant)
                overwritten.add(key)
        if o is None:
            merged.pop(key, None)
        else:
            merged[key] = o
    return merged, overwritten

