"""Three-way merges of custom metadata: ours, theirs (a change made elsewhere meanwhile) and the
base both started from, key by key and the Octue tags tag by tag. Used when an upload or a
metadata patch meets a version changed elsewhere."""

from __future__ import annotations

from octuefs.errors import OctuefsError
from octuefs.octue.metadata import TAGS_KEY, check_size_limits, merge_tags


def merge_metadata(base: dict[str, str] | None, ours: dict[str, str], theirs: dict[str, str]) -> dict[str, str] | None:
    """Our custom metadata with a change made elsewhere to the same content merged in, key by key
    (the Octue tags, :data:`TAGS_KEY`, tag by tag) against the metadata both started from; None if
    both changed one key (or tag) differently, or the base is not known: then neither may win
    silently."""
    if base is None:
        return None
    merged: dict[str, str] = {}
    for key in ours.keys() | theirs.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if o != b and t != b and o != t:
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


def apply_changes(base: dict[str, str], ours: dict[str, str], theirs: dict[str, str]) -> tuple[dict[str, str], set]:
    """``theirs`` with the keys ``ours`` changed from ``base`` set as ours has them (tags merged
    tag by tag where they can be); and the keys where that replaced a change of theirs."""
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
            overwritten.add(key)
        if o is None:
            merged.pop(key, None)
        else:
            merged[key] = o
    return merged, overwritten
