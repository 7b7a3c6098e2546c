"""ObjectInfo is immutable however it is made: a memo kept on one can never go stale."""

from __future__ import annotations

import datetime as dt

import pytest

from octuefs.storage.base import ObjectInfo
from octuefs.storage.jsonapi import object_info

WHEN = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.timezone.utc)


def _info(**changes) -> ObjectInfo:
    return ObjectInfo(**{"name": "a/b.csv", "size": 3, "generation": 7, "metageneration": 1, "updated": WHEN,
                         "metadata": {"octue__tags": "{}"}, **changes})


@pytest.mark.parametrize("made", [
    lambda: _info(),
    lambda: _info()._replace(metadata={"octue__labels": "[]"}),
    lambda: ObjectInfo._make(tuple(_info())),
    lambda: object_info({"name": "a", "size": "3", "generation": "7", "metageneration": "1",
                         "updated": "2026-11-25T10:00:00.000Z", "metadata": {"k": "v"}}),
], ids=["constructed", "replaced", "made", "from-json"])
def test_metadata_cannot_be_changed_in_place(made):
    info = made()
    with pytest.raises(TypeError):
        info.metadata["k"] = "changed"  # type: ignore[index]
    with pytest.raises(AttributeError):
        info.size = 4  # type: ignore[misc]


def test_the_callers_dict_is_copied_and_a_memo_can_be_kept():
    given = {"octue__tags": "{}"}
    info = _info(metadata=given)
    given["octue__tags"] = '{"changed": 1}'
    assert info.metadata == {"octue__tags": "{}"}
    object.__setattr__(info, "_memo", "kept")  # what xattrs.decoded does
    assert info.__dict__["_memo"] == "kept" and info == _info()


def test_a_listing_entry_missing_a_field_is_refused():
    assert object_info({"name": "a", "size": "3", "generation": "7"}) is None
    assert object_info({"name": "a", "size": "x", "generation": "7", "metageneration": "1",
                        "updated": "2026-11-25T10:00:00Z"}) is None
