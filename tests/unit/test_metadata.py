"""octuefs.octue.metadata: validation, the model, the object codec and the xattr surface.

The round-trip properties at the end are the contract the rest of octuefs relies on: whatever
form a value passes through (object metadata, model, xattr text) it comes back unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import math
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octuefs.errors import (
    AttributeExists,
    AttributeNotSupported,
    AttributeValueTooLarge,
    InvalidMetadata,
    MetadataTooLarge,
    NoSuchAttribute,
    ReadOnlyAttribute,
    errno_for,
)
from octuefs.octue import metadata as octue
from octuefs.octue.metadata import OctueMetadata

UTC = dt.timezone.utc
ID = "02464c6f-0070-50ca-8a9b-ba1af5456601"
P = octue.XATTR_PREFIX


def full_meta(**changes):
    values = dict(
        id=ID,
        timestamp=dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        tags={"instrument": "anemometer", "height_m": 80.5, "calibrated": True},
        labels={"raw", "qc-passed"},
        cluster=2,
        sequence=3,
    )
    values.update(changes)
    return OctueMetadata(**values)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "a_b", "wind_speed_80m", "a1_2b"])
def test_valid_tag_names(name):
    assert octue.validate_tag_name(name) == name


@pytest.mark.parametrize("name", ["", "_a", "a_", "A", "Height", "a-b", "a b", "a\n", "\na", "a.b", "é"])
def test_invalid_tag_names_are_refused_naming_field_and_rule(name):
    with pytest.raises(InvalidMetadata) as info:
        octue.validate_tag_name(name)
    assert info.value.field == "tag name"
    assert "lower-case letters a-z, digits and '_'" in str(info.value)
    assert "not ending in '_'" in str(info.value)


@pytest.mark.parametrize("name", [None, 1, b"a"])
def test_tag_name_must_be_a_string(name):
    with pytest.raises(InvalidMetadata, match="must be a string"):
        octue.validate_tag_name(name)


def test_tags_accept_json_values_datetimes_and_sets():
    when = dt.datetime(2024, 1, 1, tzinfo=UTC)
    tags = {"a": None, "b": True, "c": 1, "d": 1.5, "e": "x", "f": [1, (2, 3)], "g": {"k": {"s": {1, 2}}}, "h": when,
            "i": frozenset({"x"}), "j": math.nan}
    out = octue.validate_tags(tags)
    assert out["f"] == [1, [2, 3]] and isinstance(out["f"][1], list)
    assert out["g"] == {"k": {"s": {1, 2}}} and out["h"] is when and out["i"] == {"x"}
    assert out["g"] is not tags["g"]  # a deep copy


def test_tags_none_is_empty_and_non_mapping_refused():
    assert octue.validate_tags(None) == {}
    with pytest.raises(InvalidMetadata, match="mapping") as info:
        octue.validate_tags([("a", 1)])
    assert info.value.field == "tags"


@pytest.mark.parametrize(
    "value, rule",
    [
        (b"bytes", "must be JSON data"),
        (object(), "must be JSON data"),
        (dt.date(2024, 1, 1), "must be JSON data"),
        ({1: "x"}, "keys must be strings"),
        ({"_type": "set", "items": [1]}, "reserved"),
        ({"_type": "datetime", "value": "2024-01-01"}, "reserved"),
        ({1, "a"}, "sort together"),
        ({math.nan}, "NaN"),
        ({(1, 2)}, "scalars"),
        pytest.param(10**5000, "4300 digits", id="huge-int"),
    ],
)
def test_tag_values_that_would_not_round_trip_are_refused(value, rule):
    with pytest.raises(InvalidMetadata, match=rule) as info:
        octue.validate_tags({"t": value})
    assert info.value.field.startswith("tags.t")


def test_deeply_nested_and_cyclic_tag_values_are_refused():
    cyclic: list = []
    cyclic.append(cyclic)
    deep: list = []
    for _ in range(100):
        deep = [deep]
    for value in (cyclic, deep):
        with pytest.raises(InvalidMetadata, match="nested"):
            octue.validate_tags({"t": value})


def test_a_dict_with_another_type_marker_is_allowed():
    assert octue.validate_tags({"t": {"_type": "other"}}) == {"t": {"_type": "other"}}


@pytest.mark.parametrize(
    "labels, expected",
    [
        (None, set()),
        ("", set()),
        ("a b  c", {"a", "b", "c"}),
        (" raw\tqc-passed\n", {"raw", "qc-passed"}),
        ('["a", "b-2"]', {"a", "b-2"}),
        ({"Vestas"}, {"vestas"}),
        ("Vestas NEW", {"vestas", "new"}),
        (["x", "x", "X"], {"x"}),
        ((label for label in ["a", "b"]), {"a", "b"}),
    ],
)
def test_labels_accepted_and_folded(labels, expected):
    assert octue.validate_labels(labels) == frozenset(expected)


@pytest.mark.parametrize("labels", [["a-"], ["-a"], ["a_b"], ["a b"], [""], ["a!"], "a- b", "[1]", "[bad", '["ok", 2]'])
def test_invalid_labels_refused_naming_field_and_rule(labels):
    with pytest.raises(InvalidMetadata) as info:
        octue.validate_labels(labels)
    assert info.value.field == "labels"


def test_label_rule_is_stated():
    with pytest.raises(InvalidMetadata, match="folded to lower case.*not ending in '-'"):
        octue.validate_labels(["bad-"])


@pytest.mark.parametrize("labels", [b"a b", 5, {"a": 1}])
def test_labels_of_the_wrong_type_refused(labels):
    with pytest.raises(InvalidMetadata, match="space-separated string or an iterable"):
        octue.validate_labels(labels)


class Index:
    def __index__(self):
        return 7


@pytest.mark.parametrize("value, expected", [(0, 0), (5, 5), (-1, -1), (Index(), 7)])
def test_cluster_accepts_integers(value, expected):
    result = octue.validate_cluster(value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize(
    "value, rule", [(True, "not a bool"), (False, "not a bool"), (1.0, "integer"), ("3", "integer"), (None, "integer")]
)
def test_cluster_refuses_non_integers(value, rule):
    with pytest.raises(InvalidMetadata, match=rule) as info:
        octue.validate_cluster(value)
    assert info.value.field == "cluster"


def test_sequence_accepts_none_and_integers_only():
    assert octue.validate_sequence(None) is None
    assert octue.validate_sequence(4) == 4
    with pytest.raises(InvalidMetadata, match="not a bool") as info:
        octue.validate_sequence(True)
    assert info.value.field == "sequence"


def test_timestamp_keeps_datetimes_as_given():
    naive = dt.datetime(2024, 1, 1, 12)
    assert octue.validate_timestamp(naive) is naive
    assert octue.validate_timestamp(None) is None


@pytest.mark.parametrize(
    "value, expected",
    [
        (1704067200, dt.datetime(2024, 1, 1, tzinfo=UTC)),
        (1704067200.123456, dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("1704067200.5", dt.datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        (" 1704067200 \n", dt.datetime(2024, 1, 1, tzinfo=UTC)),
        ("-1.5", dt.datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=UTC)),
        ("1.7040672e9", dt.datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T00:00:00Z", dt.datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T05:30:00+05:30", dt.datetime(2024, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamp_from_posix_seconds_and_iso_8601(value, expected):
    result = octue.validate_timestamp(value)
    assert result == expected and result.utcoffset() is not None


def test_timestamp_iso_without_offset_stays_naive():
    assert octue.validate_timestamp("2024-01-01T12:30:00") == dt.datetime(2024, 1, 1, 12, 30)


@pytest.mark.parametrize(
    "value", ["yesterday", "", True, math.nan, math.inf, 1e20, "1e999999999", [], dt.date(2024, 1, 1)]
)
def test_bad_timestamps_refused(value):
    with pytest.raises(InvalidMetadata) as info:
        octue.validate_timestamp(value)
    assert info.value.field == "timestamp"


class Timestamp(dt.datetime):
    """Stands for a datetime subclass such as pandas' Timestamp, whose isoformat may differ."""

    def isoformat(self, *args, **kwargs):
        return super().isoformat(*args, **kwargs) + "000"  # nanoseconds


def test_datetime_subclasses_become_plain_datetimes():
    value = Timestamp(2024, 1, 1, 0, 0, 0, 5, tzinfo=UTC)
    meta = OctueMetadata(id=ID, timestamp=value, tags={"t": value, "s": {value}})
    assert type(meta.timestamp) is dt.datetime and type(meta.tags["t"]) is dt.datetime
    assert octue.decode_object_metadata(octue.encode_object_metadata(meta)) == meta


def test_timestamp_whose_instant_is_outside_utc_range_is_refused():
    plus_one = dt.timezone(dt.timedelta(hours=1))
    with pytest.raises(InvalidMetadata, match="UTC"):
        octue.validate_timestamp(dt.datetime(1, 1, 1, tzinfo=plus_one))


@pytest.mark.parametrize(
    "value", [uuid.UUID(ID), ID, ID.upper(), "{" + ID + "}", ID.replace("-", ""), "urn:uuid:" + ID]
)
def test_id_normalised(value):
    assert octue.validate_id(value) == ID


@pytest.mark.parametrize("value", ["abc", ID + "\n", 42, None])
def test_bad_ids_refused(value):
    with pytest.raises(InvalidMetadata, match="UUID") as info:
        octue.validate_id(value)
    assert info.value.field == "id"


@pytest.mark.parametrize(
    "ts, text",
    [
        (dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC), "1704067200.123456"),
        (dt.datetime(2024, 1, 1, tzinfo=UTC), "1704067200"),
        (dt.datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC), "1704067200.5"),
        (dt.datetime(2024, 1, 1), "1704067200"),  # naive is UTC
        (dt.datetime(2024, 1, 1, 5, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))), "1704067200"),
        (dt.datetime(1969, 12, 31, 23, 59, 58, 500000), "-1.5"),
        (dt.datetime(1970, 1, 1, 0, 0, 0, 1), "0.000001"),
    ],
)
def test_format_timestamp(ts, text):
    assert octue.format_timestamp(ts) == text
    assert octue.validate_timestamp(text) == ts.replace(tzinfo=ts.tzinfo or UTC)


# --- the model --------------------------------------------------------------------------


def test_defaults():
    meta = OctueMetadata()
    assert (meta.id, meta.timestamp, dict(meta.tags), meta.labels, meta.cluster, meta.sequence) == (
        None, None, {}, frozenset(), 0, None,
    )


def test_model_validates_and_normalises_on_construction():
    meta = OctueMetadata(id=ID.upper(), timestamp=1704067200, tags={"a": (1,)}, labels="B a", cluster=Index())
    assert meta.id == ID and meta.timestamp == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert meta.tags == {"a": [1]} and meta.labels == {"a", "b"} and meta.cluster == 7
    with pytest.raises(InvalidMetadata) as info:
        OctueMetadata(cluster=True)
    assert info.value.field == "cluster"


def test_model_is_immutable_and_does_not_share_the_callers_tags():
    tags = {"a": [1]}
    meta = OctueMetadata(tags=tags)
    tags["b"] = 2
    tags["a"].append(2)
    assert meta.tags == {"a": [1]}
    with pytest.raises(TypeError):
        meta.tags["c"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.cluster = 3  # type: ignore[misc]


def test_equality_treats_nan_as_equal_and_keeps_types_apart():
    assert OctueMetadata(tags={"x": math.nan}) == OctueMetadata(tags={"x": math.nan})
    assert OctueMetadata(tags={"x": 1}) != OctueMetadata(tags={"x": True})
    assert OctueMetadata(tags={"x": 1}) != OctueMetadata(tags={"x": 1.0})
    assert OctueMetadata(tags={"a": 1, "b": 2}) == OctueMetadata(tags={"b": 2, "a": 1})
    assert hash(OctueMetadata(tags={"x": math.nan})) == hash(OctueMetadata(tags={"x": math.nan}))
    assert OctueMetadata() != "not metadata"


def test_timestamps_equal_only_with_the_same_offset():
    aware = dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert OctueMetadata(timestamp=aware) != OctueMetadata(timestamp=aware.replace(tzinfo=None))
    shifted = aware.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert OctueMetadata(timestamp=aware) != OctueMetadata(timestamp=shifted)


def test_replace_validates():
    meta = full_meta()
    assert meta.replace(labels="New").labels == {"new"}
    with pytest.raises(InvalidMetadata):
        meta.replace(tags={"Bad": 1})


def test_with_id():
    meta = full_meta()
    assert meta.with_id() is meta
    fresh = OctueMetadata().with_id()
    assert uuid.UUID(fresh.id).version == 4 and fresh.id == fresh.id.lower()
    assert OctueMetadata().with_id().id != fresh.id


def test_to_dict_gives_plain_copies():
    meta = full_meta(tags={"a": [1]})
    out = meta.to_dict()
    assert set(out) == {"id", "timestamp", "tags", "labels", "cluster", "sequence"}
    assert type(out["tags"]) is dict and type(out["labels"]) is set
    out["tags"]["a"].append(2)
    assert meta.tags == {"a": [1]}


# --- the object codec -------------------------------------------------------------------


def test_encode_needs_an_id():
    with pytest.raises(ValueError, match="with_id"):
        octue.encode_object_metadata(OctueMetadata(labels={"a"}))
    with pytest.raises(ValueError, match="with_id"):  # dropping a stored field is writing it too
        octue.encode_object_metadata(OctueMetadata(), {"octue__labels": '["a"]'})
    # Nothing Octue to write (a change of other user attributes alone): no id is needed, none is made.
    assert octue.encode_object_metadata(OctueMetadata(xattrs={"mine": b"x"})) == {"octuefs.user.mine": "x"}


def test_encode_writes_every_key_in_the_sdk_text():
    encoded = octue.encode_object_metadata(full_meta(tags={"name": "caf\u00e9", "v": math.inf}))
    assert encoded == {
        "octue__id": f'"{ID}"',
        "octue__timestamp": '{"_type": "datetime", "value": "2024-01-01T00:00:00.123456+00:00"}',
        "octue__tags": '{"name": "caf\\u00e9", "v": Infinity}',
        "octue__labels": '{"_type": "set", "items": ["qc-passed", "raw"]}',
        "octue__sdk_version": '"0.69.1"',
        "octue__cluster": "2",
        "octue__sequence": "3",
    }


def test_encode_keeps_other_keys_untouched():
    existing = {"owner": "x", "octue__future_field": '"kept"', "mtime": "", "Ünïcode": "välue"}
    encoded = octue.encode_object_metadata(full_meta(), existing)
    assert {k: encoded[k] for k in existing} == existing
    assert set(octue.metadata_patch(existing, full_meta())).isdisjoint(existing)


def test_empty_stored_values_are_overwritten_when_writing():
    existing = {"octue__id": f'"{ID}"', "octue__sequence": ""}
    patch = octue.metadata_patch(existing, OctueMetadata(id=ID, sequence=4))
    assert patch["octue__sequence"] == "4"


def test_stored_value_meaning_the_same_is_kept_byte_for_byte():
    existing = octue.encode_object_metadata(full_meta())
    existing["octue__timestamp"] = '{"_type": "datetime",  "value": "2024-01-01T00:00:00.123456+00:00"}'
    existing["octue__labels"] = '["raw", "QC-passed"]'
    existing["octue__sdk_version"] = '"0.60.0"'
    assert octue.encode_object_metadata(full_meta(), existing) == existing
    changed = octue.encode_object_metadata(full_meta(cluster=9), existing)
    assert changed["octue__labels"] == '["raw", "QC-passed"]' and changed["octue__cluster"] == "9"
    assert changed["octue__sdk_version"] == '"0.69.1"'


def test_patch_is_empty_when_nothing_changed_and_holds_only_changed_keys():
    existing = {**octue.encode_object_metadata(full_meta()), "owner": "x"}
    assert octue.metadata_patch(existing, full_meta()) == {}
    assert octue.metadata_patch(existing, full_meta(sequence=None)) == {"octue__sequence": "null"}
    patch = octue.metadata_patch(existing, full_meta(tags={}, labels=()))
    assert patch == {"octue__tags": "{}", "octue__labels": '{"_type": "set", "items": []}'}


def test_patch_of_an_object_without_octue_metadata_writes_everything():
    patch = octue.metadata_patch({"owner": "x"}, OctueMetadata(id=ID))
    assert set(patch) == {f"octue__{k}" for k in octue.FIELDS} | {"octue__sdk_version"}


def test_size_limits():
    octue.check_size_limits({"k": "v" * 4096})
    with pytest.raises(MetadataTooLarge, match="4096 bytes per value") as info:
        octue.check_size_limits({"octue__tags": "v" * 4097})
    assert info.value.field == "octue__tags"
    with pytest.raises(MetadataTooLarge, match="bytes per value"):
        octue.check_size_limits({"k": "\u00e9" * 2049})  # UTF-8 bytes count
    octue.check_size_limits({"a": "v" * 4095, "b": "v" * 4095})
    with pytest.raises(MetadataTooLarge, match="8192 bytes of custom metadata per object") as info:
        octue.check_size_limits({"a": "v" * 4095, "b": "v" * 4095, "cc": "x"})
    assert info.value.field == "custom metadata"
    with pytest.raises(MetadataTooLarge, match="1024 bytes per key"):
        octue.check_size_limits({"k" * 1025: ""})
    octue.check_size_limits({"a": None, "b": "x"})


def test_size_errors_map_to_e2big():
    with pytest.raises(MetadataTooLarge) as info:
        octue.check_size_limits({"k": "v" * 5000})
    assert errno_for(info.value)[0] == errno.E2BIG


# --- the xattr surface ------------------------------------------------------------------


def test_is_octue_xattr():
    assert octue.is_octue_xattr("user.octue.tags.a") and octue.is_octue_xattr("user.octue.anything")
    assert not octue.is_octue_xattr("user.gcs.generation") and not octue.is_octue_xattr("user.octue")
    assert not octue.is_octue_xattr("security.capability")


def test_list_names_of_an_empty_model():
    assert octue.list_xattr_names(OctueMetadata()) == [P + "tags", P + "labels", P + "cluster"]


def test_list_names_of_a_full_model():
    assert octue.list_xattr_names(full_meta()) == [
        P + "id", P + "timestamp", P + "tags",
        P + "tags.calibrated", P + "tags.height_m", P + "tags.instrument",
        P + "labels", P + "cluster", P + "sequence",
    ]


def test_get_every_field():
    meta = full_meta()
    assert octue.get_xattr(meta, P + "id") == ID.encode()
    assert octue.get_xattr(meta, P + "timestamp") == b"1704067200.123456"
    assert octue.get_xattr(meta, P + "tags") == b'{"instrument": "anemometer", "height_m": 80.5, "calibrated": true}'
    assert octue.get_xattr(meta, P + "labels") == b"qc-passed raw"
    assert octue.get_xattr(meta, P + "cluster") == b"2"
    assert octue.get_xattr(meta, P + "sequence") == b"3"


def test_get_of_an_empty_model():
    meta = OctueMetadata()
    assert octue.get_xattr(meta, P + "tags") == b"{}"
    assert octue.get_xattr(meta, P + "labels") == b""
    assert octue.get_xattr(meta, P + "cluster") == b"0"
    for name in ("id", "timestamp", "sequence", "tags.missing", "tags.", "unknown", "tagsx"):
        with pytest.raises(NoSuchAttribute):
            octue.get_xattr(meta, P + name)


@pytest.mark.parametrize("name", ["security.capability", "user.other", "trusted.x", "user.gcs.crc32c"])
def test_get_of_foreign_names_is_enodata(name):
    with pytest.raises(NoSuchAttribute) as info:
        octue.get_xattr(full_meta(), name)
    assert errno_for(info.value)[0] == errno.ENODATA


@pytest.mark.parametrize(
    "value, shown",
    [
        ("Vestas", b"Vestas"),
        ("1MW", b"1MW"),
        ("", b""),
        ("caf\u00e9 \u2603", "caf\u00e9 \u2603".encode()),
        ("true", b'"true"'),
        ("80.5", b'"80.5"'),
        ("NaN", b'"NaN"'),
        ('"quoted"', b'"\\"quoted\\""'),
        ("\ud800", b'"\\ud800"'),
        (80.5, b"80.5"),
        (True, b"true"),
        (None, b"null"),
        (math.nan, b"NaN"),
        ({"a": 1}, b'{"a": 1}'),
        ([1, "x"], b'[1, "x"]'),
        ({"b", "a"}, b'{"_type": "set", "items": ["a", "b"]}'),
        (dt.datetime(2024, 1, 1), b'{"_type": "datetime", "value": "2024-01-01T00:00:00"}'),
    ],
)
def test_one_tag_value_is_shown_unambiguously_and_set_back_unchanged(value, shown):
    meta = OctueMetadata(tags={"t": value})
    assert octue.get_xattr(meta, P + "tags.t") == shown
    assert octue.set_xattr(meta, P + "tags.t", shown) == meta


@pytest.mark.parametrize(
    "text, value",
    [(b"Vestas", "Vestas"), (b"80.5", 80.5), (b"007", "007"), (b'"80.5"', "80.5"), (b"[1, 2]", [1, 2]),
     (b'{"_type": "set", "items": [2, 1]}', {1, 2}), (b"Vestas\n", "Vestas\n"), (b"{broken", "{broken")],
)
def test_set_one_tag(text, value):
    meta = octue.set_xattr(full_meta(), P + "tags.new_tag", text)
    assert meta.tags["new_tag"] == value and meta.tags["height_m"] == 80.5


def test_set_tags_replaces_all():
    meta = octue.set_xattr(full_meta(), P + "tags", b'{"a": 1, "b": {"_type": "set", "items": ["x"]}}')
    assert meta.tags == {"a": 1, "b": {"x"}}


@pytest.mark.parametrize("text", [b"[1]", b"{broken", b"", b'"str"', b'{"Bad": 1}', b'{"s": {"_type": "set"}}'])
def test_set_tags_refuses_anything_but_a_valid_object(text):
    with pytest.raises(InvalidMetadata) as info:
        octue.set_xattr(full_meta(), P + "tags", text)
    assert info.value.field in ("tags", "tag name")
    assert errno_for(info.value)[0] == errno.EINVAL


def test_set_tag_with_an_invalid_name():
    with pytest.raises(InvalidMetadata) as info:
        octue.set_xattr(full_meta(), P + "tags.Bad", b"1")
    assert info.value.field == "tag name"
    with pytest.raises(InvalidMetadata):
        octue.set_xattr(full_meta(), P + "tags.", b"1")


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"1704067200", dt.datetime(2024, 1, 1, tzinfo=UTC)),
        (b"1704067200.25\n", dt.datetime(2024, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)),
        (b"2024-01-01T01:00:00+01:00", dt.datetime(2024, 1, 1, tzinfo=UTC)),
        (b"2024-06-01T12:00:00", dt.datetime(2024, 6, 1, 12)),
    ],
)
def test_set_timestamp(text, expected):
    assert octue.set_xattr(OctueMetadata(), P + "timestamp", text).timestamp == expected


def test_set_timestamp_to_the_same_instant_keeps_the_current_datetime():
    naive = OctueMetadata(timestamp=dt.datetime(2024, 1, 1, 0, 0, 0, 5))
    again = octue.set_xattr(naive, P + "timestamp", octue.get_xattr(naive, P + "timestamp"))
    assert again == naive and again.timestamp.tzinfo is None
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    offset = OctueMetadata(timestamp=dt.datetime(2024, 1, 1, 5, 30, tzinfo=india))
    assert octue.set_xattr(offset, P + "timestamp", b"2024-01-01T00:00:00Z") == offset


def test_set_labels():
    meta = full_meta()
    assert octue.set_xattr(meta, P + "labels", b"Vestas new").labels == {"vestas", "new"}
    assert octue.set_xattr(meta, P + "labels", b'["a", "b"]').labels == {"a", "b"}
    assert octue.set_xattr(meta, P + "labels", b"").labels == frozenset()
    with pytest.raises(InvalidMetadata) as info:
        octue.set_xattr(meta, P + "labels", b"ok not_ok")
    assert info.value.field == "labels"


@pytest.mark.parametrize("field", ["cluster", "sequence"])
def test_set_integers(field):
    assert getattr(octue.set_xattr(OctueMetadata(), P + field, b" 12\n"), field) == 12
    assert getattr(octue.set_xattr(OctueMetadata(), P + field, b"-3"), field) == -3
    for bad in (b"", b"1.0", b"three", b"1_000", b"true", "\u0661".encode()):
        with pytest.raises(InvalidMetadata) as info:
            octue.set_xattr(OctueMetadata(), P + field, bad)
        assert info.value.field == field and "integer" in info.value.rule


def test_set_refuses_non_utf8():
    with pytest.raises(InvalidMetadata, match="UTF-8") as info:
        octue.set_xattr(full_meta(), P + "tags.t", b"\xff\xfe")
    assert info.value.field == "tags.t"


def test_id_is_read_only():
    meta = full_meta()
    with pytest.raises(ReadOnlyAttribute) as info:
        octue.set_xattr(meta, P + "id", str(uuid.uuid4()).encode())
    assert errno_for(info.value)[0] == errno.EPERM
    with pytest.raises(ReadOnlyAttribute):
        octue.set_xattr(OctueMetadata(), P + "id", ID.encode())
    assert octue.set_xattr(meta, P + "id", ID.encode()) is meta  # setting what is there: nothing to do
    with pytest.raises(ReadOnlyAttribute):
        octue.remove_xattr(meta, P + "id")
    with pytest.raises(NoSuchAttribute):
        octue.remove_xattr(OctueMetadata(), P + "id")


@pytest.mark.parametrize("name", [P + "unknown", P + "sdk_version", P + "tagsx", "trusted.other", "security.capability"])
def test_set_and_remove_of_names_not_stored_are_enotsup(name):
    with pytest.raises(AttributeNotSupported) as info:
        octue.set_xattr(full_meta(), name, b"1")
    assert errno_for(info.value)[0] == errno.ENOTSUP
    with pytest.raises(AttributeNotSupported):
        octue.remove_xattr(full_meta(), name)


def test_xattr_create_flag():
    meta = full_meta(sequence=None)
    for name in ("cluster", "labels", "tags", "tags.height_m", "timestamp", "id"):
        with pytest.raises(AttributeExists) as info:
            octue.set_xattr(meta, P + name, octue.get_xattr(meta, P + name), octue.XATTR_CREATE)
        assert errno_for(info.value)[0] == errno.EEXIST
    assert octue.set_xattr(meta, P + "sequence", b"1", octue.XATTR_CREATE).sequence == 1
    assert octue.set_xattr(meta, P + "tags.new", b"1", octue.XATTR_CREATE).tags["new"] == 1


def test_xattr_replace_flag():
    meta = full_meta(sequence=None, timestamp=None)
    for name in ("sequence", "timestamp", "tags.absent"):
        with pytest.raises(NoSuchAttribute):
            octue.set_xattr(meta, P + name, b"1", octue.XATTR_REPLACE)
    assert octue.set_xattr(meta, P + "cluster", b"5", octue.XATTR_REPLACE).cluster == 5
    assert octue.set_xattr(meta, P + "tags.height_m", b"90", octue.XATTR_REPLACE).tags["height_m"] == 90


def test_set_too_large_a_value():
    with pytest.raises(AttributeValueTooLarge, match="4096") as info:
        octue.set_xattr(full_meta(), P + "tags.big", b"x" * 4100)
    assert errno_for(info.value)[0] == errno.E2BIG
    with pytest.raises(AttributeValueTooLarge):  # small text, but six bytes per char once escaped
        octue.set_xattr(full_meta(), P + "tags.big", "\u00e9".encode() * 700)
    labels = " ".join(f"label-{i}" for i in range(500)).encode()
    with pytest.raises(AttributeValueTooLarge):
        octue.set_xattr(full_meta(), P + "labels", labels)


def test_set_does_not_mutate_the_model():
    meta = full_meta()
    before = octue.encode_object_metadata(meta)
    octue.set_xattr(meta, P + "tags.height_m", b"1")
    octue.set_xattr(meta, P + "cluster", b"9")
    assert octue.encode_object_metadata(meta) == before


def test_remove():
    meta = full_meta()
    assert octue.remove_xattr(meta, P + "tags.height_m").tags == {"instrument": "anemometer", "calibrated": True}
    assert octue.remove_xattr(meta, P + "tags").tags == {}
    assert octue.remove_xattr(meta, P + "labels").labels == frozenset()
    assert octue.remove_xattr(meta, P + "cluster").cluster == 0
    assert octue.remove_xattr(meta, P + "sequence").sequence is None
    assert octue.remove_xattr(meta, P + "timestamp").timestamp is None
    empty = OctueMetadata()
    for name in ("sequence", "timestamp", "tags.absent", "tags.Bad"):
        with pytest.raises(NoSuchAttribute):
            octue.remove_xattr(empty, P + name)
    assert octue.remove_xattr(empty, P + "labels") == empty


# --- round-trip properties --------------------------------------------------------------



def names(first: str, rest: str):
    """Valid names: a character of ``first``, then up to 8 of ``rest``, not ending in a separator."""
    return st.tuples(st.sampled_from(first), st.text(rest, max_size=8)).map(lambda t: t[0] + t[1].rstrip(rest[-1]))


ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
tag_names = names(ALNUM, ALNUM + "_")
label_strings = names(ALNUM + "ABCZ", ALNUM + "ABCZ-")  # capitals fold to lower case
offsets = st.integers(-23 * 60, 23 * 60).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
datetimes = st.datetimes(dt.datetime(2, 1, 1), dt.datetime(9998, 12, 31), timezones=st.none() | offsets)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | datetimes
sets = (
    st.sets(st.text(max_size=5), max_size=4)
    | st.sets(st.integers() | st.floats(allow_nan=False), max_size=4)
    | st.sets(st.datetimes(timezones=st.just(UTC)), max_size=3)
)
json_keys = st.text(max_size=6).filter(lambda key: key != "_type")
tag_values = st.recursive(
    scalars | sets,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(json_keys, children, max_size=3),
    max_leaves=6,
)
metadatas = st.builds(
    OctueMetadata,
    id=st.uuids().map(str),
    timestamp=st.none() | datetimes,
    tags=st.dictionaries(tag_names, tag_values, max_size=4),
    labels=st.sets(label_strings, max_size=4),
    cluster=st.integers(),
    sequence=st.none() | st.integers(),
)
others = st.dictionaries(  # custom metadata that belongs to someone else
    st.text(min_size=1, max_size=8).filter(lambda key: not key.startswith("octue__")), st.text(max_size=8), max_size=3
)


@given(metadatas)
def test_decode_of_encode_is_identity(meta):
    assert octue.decode_object_metadata(octue.encode_object_metadata(meta)) == meta


@given(metadatas, others)
def test_encoding_what_was_decoded_changes_nothing(meta, extra):
    stored = octue.encode_object_metadata(meta, extra)
    assert octue.encode_object_metadata(octue.decode_object_metadata(stored), stored) == stored
    assert octue.metadata_patch(stored, octue.decode_object_metadata(stored)) == {}


@given(metadatas)
def test_every_listed_xattr_set_to_what_get_printed_leaves_the_model_equal(meta):
    for name in octue.list_xattr_names(meta):
        assert octue.set_xattr(meta, name, octue.get_xattr(meta, name)) == meta, name


@given(metadatas, others)
def test_object_to_model_to_xattr_text_to_model_to_object_is_identical(meta, extra):
    """What ``getfattr -d`` dumps, ``setfattr --restore`` on the same file puts back without a change."""
    stored = octue.encode_object_metadata(meta, extra)
    model = octue.decode_object_metadata(stored)
    dump = {name: octue.get_xattr(model, name) for name in octue.list_xattr_names(model)}
    restored = model
    for name, text in dump.items():
        restored = octue.set_xattr(restored, name, text)
    assert octue.encode_object_metadata(restored, stored) == stored


@given(metadatas)
def test_xattr_texts_alone_rebuild_every_field_and_the_timestamps_instant(meta):
    """On a file without metadata the dump gives the same values; the timestamp text is POSIX
    seconds, so it carries the instant, not whether the datetime was naive or its offset."""
    dump = {name: octue.get_xattr(meta, name) for name in octue.list_xattr_names(meta)}
    rebuilt = OctueMetadata(id=meta.id)
    for name, text in dump.items():
        if name != P + "id":
            rebuilt = octue.set_xattr(rebuilt, name, text)
    assert rebuilt.replace(timestamp=meta.timestamp) == meta
    if meta.timestamp is not None:
        assert octue.format_timestamp(rebuilt.timestamp) == octue.format_timestamp(meta.timestamp)


@given(metadatas, metadatas, others)
def test_patch_holds_exactly_the_changed_keys_and_never_other_keys(old, new, extra):
    stored = octue.encode_object_metadata(old, extra)
    patch = octue.metadata_patch(stored, new)
    target = octue.encode_object_metadata(new, stored)
    assert {**stored, **patch} == target
    assert all(stored.get(key) != value for key, value in patch.items())
    assert all(key.startswith(octue.OCTUE_PREFIX) for key in patch)
    assert {k: target[k] for k in extra} == extra
    assert octue.decode_object_metadata(target) == new


@given(metadatas, st.sampled_from(octue.FIELDS[1:]), st.text(min_size=1, max_size=10))
def test_an_untouched_stored_value_is_kept_byte_for_byte_even_if_malformed(meta, field, raw):
    key = octue.OCTUE_PREFIX + field
    stored = {**octue.encode_object_metadata(meta), key: raw}
    other = "sequence" if field == "cluster" else "cluster"
    changed = octue.decode_object_metadata(stored).replace(**{other: 12345})
    assert octue.encode_object_metadata(changed, stored)[key] == raw


# --- other user.* attributes (kept as octuefs.user.* keys) -----------------------------------


def test_user_attributes_round_trip_through_custom_metadata():
    stored = {"octuefs.user.text": "caf\u00e9", "octuefs.user.bin": "base64:AP8=", "octuefs.user.gone": "",
              "someone-else": "kept"}
    meta = octue.decode_object_metadata(stored)
    assert dict(meta.xattrs) == {"text": "caf\u00e9".encode(), "bin": b"\x00\xff"}  # "" is a deleted key
    assert octue.list_xattr_names(meta)[-2:] == ["user.bin", "user.text"]
    assert octue.get_xattr(meta, "user.bin") == b"\x00\xff"
    changed = octue.set_xattr(octue.remove_xattr(meta, "user.text"), "user.new", b"base64:looks encoded")
    patch = octue.metadata_patch(stored, changed)
    assert patch == {"octuefs.user.text": None, "octuefs.user.new": "base64:YmFzZTY0Omxvb2tzIGVuY29kZWQ="}
    assert octue.get_xattr(octue.decode_object_metadata({**stored, **patch}), "user.new") == b"base64:looks encoded"
    assert octue.metadata_patch(stored, meta) == {}  # nothing changed, nothing sent (no Octue id made either)


def test_a_model_that_does_not_know_the_user_attributes_keeps_them():
    stored = {"octuefs.user.mine": "x", "octue__id": f'"{ID}"'}
    datafile_model = OctueMetadata(id=ID, labels={"new"})  # as the Datafile API builds it: xattrs None
    assert octue.encode_object_metadata(datafile_model, stored)["octuefs.user.mine"] == "x"
    assert OctueMetadata(id=ID) == octue.decode_object_metadata(stored)  # not a metadata change


@pytest.mark.parametrize("name", ["user.", "user.a\tb", "user.\udcff"])
def test_user_attribute_names_that_cannot_be_keys_are_einval(name):
    with pytest.raises(InvalidMetadata) as info:
        octue.set_xattr(OctueMetadata(), name, b"v")
    assert errno_for(info.value)[0] == errno.EINVAL


def test_user_attribute_sizes_follow_the_gcs_limits():
    with pytest.raises(AttributeValueTooLarge):  # base64 makes 3100 binary bytes 4140 stored ones
        octue.set_xattr(OctueMetadata(), "user.bin", b"\xff" * 3100)
    meta = octue.set_xattr(OctueMetadata(), "user.a", b"y" * 4000)
    meta = octue.set_xattr(meta, "user.b", b"y" * 4000)
    with pytest.raises(MetadataTooLarge) as info:
        octue.check_size_limits(octue.encode_object_metadata(octue.set_xattr(meta, "user.c", b"y" * 300)))
    assert errno_for(info.value)[0] == errno.E2BIG


def test_concurrent_changes_of_different_user_attributes_merge():
    from octuefs.octue.merge import merge_metadata

    base = {"octuefs.user.a": "1", "octuefs.user.b": "1"}
    ours = octue.encode_object_metadata(octue.set_xattr(octue.decode_object_metadata(base), "user.a", b"2"), base)
    theirs = {"octuefs.user.a": "1"}  # user.b removed elsewhere
    assert merge_metadata(base, ours, theirs) == {"octuefs.user.a": "2"}


def test_a_default_spelled_out_elsewhere_is_no_change_in_a_merge():
    """Another writer that stores every field (octuefs's Datafile, say) writes ``octue__cluster``
    "0" where the base had none: no change, so our cluster is no conflict with it, in the strict
    merge of an upload and in the re-apply of a metadata update alike."""
    from octuefs.octue.merge import merge_metadata, reapply

    base = {"octue__labels": '{"_type": "set", "items": ["a"]}'}
    theirs = {**base, "octue__cluster": "0", "octue__sequence": "null"}
    ours = {**base, "octue__cluster": "4"}
    assert merge_metadata(base, ours, theirs) == {**base, "octue__cluster": "4", "octue__sequence": "null"}
    assert reapply(base, ours, theirs) == ({**base, "octue__cluster": "4", "octue__sequence": "null"}, set())
    really = {**base, "octue__cluster": "2"}
    assert merge_metadata(base, ours, really) is None
    assert reapply(base, ours, really) == (ours, {"octue__cluster"})


def test_labels_nested_past_the_parsers_depth_are_refused_not_a_crash():
    """setfattr -v '[[[[...' (found by the xattr fuzz test): a JSON list nested deeper than the
    parser goes is invalid labels (EINVAL for setfattr), not a RecursionError (EIO and a traceback)."""
    from octuefs.octue.fields import validate_labels

    with pytest.raises(InvalidMetadata, match="JSON list of labels"):
        validate_labels("[" * 100_000)
