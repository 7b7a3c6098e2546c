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
    SDK_VERSION_KEY,
    TAGS_KEY,
    check_size_limits,
    merge_tags,
    reapply_tags,
    same_field_value,
)


def _changed(key: str, base: str | None, value: str | None) -> bool:
    """Is ``value`` a change of ``key`` from ``base``? Judged by meaning on either side: a writer
    that stores every field spells out defaults the base left out (an absent ``octue__cluster``
    and ``"0"``), and that is no change (:func:`~octuefs.octue.objectform.same_field_value`)."""
    return not same_field_value(key, base, value)


def merge_metadata(base: dict[str, str] | None, ours: dict[str, str], theirs: dict[str, str]) -> dict[str, str] | None:
    """Our custom metadata with a change made elsewhere to the same content merged in, key by key
    (the Octue tags, :data:`TAGS_KEY`, tag by tag) against the metadata both started from; None if
    both changed one key (or tag) differently, or the base is not known: then neither may win
    silently. ``octue__sdk_version`` only records who wrote last and never conflicts: ours."""
    if base is None:
        return None
    merged: dict[str, str] = {}
    for key in ours.keys() | theirs.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        ours_changed, theirs_changed = _changed(key, b, o), _changed(key, b, t)
        if ours_changed and theirs_changed and not same_field_value(key, o, t) and key != SDK_VERSION_KEY:
            if key != TAGS_KEY:
                return None
            value = merge_tags(b, o, t)  # one key, many tags: different tags set on each side merge
            if value is None:
                return None
        elif theirs_changed and not ours_changed:
            value = t
        else:
            value = t if o == b else o  # (neither changed it: either spelling)
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
    """``theirs`` with the keys ``ours`` changed from ``base`` set as ours has them (the Octue tags
    tag by tag: a tag changed only elsewhere is kept); and the keys where that replaced a
    different change of theirs (what the caller warns of, or refuses: see the module docstring).
    A default ours only spelled out is no change of ours; ``octue__sdk_version`` never clashes."""
    merged, overwritten = dict(theirs), set()
    for key in ours.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if not _changed(key, b, o):
            continue
        clash = _changed(key, b, t) and not same_field_value(key, o, t) and key != SDK_VERSION_KEY
        if clash and key == TAGS_KEY:
            merged[key], clashed_tags = reapply_tags(b, o, t)
            if clashed_tags:
                overwritten.add(key)
            continue
        if clash:
            overwritten.add(key)
        if o is None:
            merged.pop(key, None)
        else:
            merged[key] = o
    return merged, overwritten
