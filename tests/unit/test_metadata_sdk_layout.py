"""octuefs reads and writes GCS custom metadata byte for byte as the Octue SDK does.

The fixtures marked "SDK dump" are the custom metadata the real SDK produced (``octue`` 0.69.1,
and 0.1.27 for the legacy ``cluster``/``sequence`` keys): ``Datafile(...).metadata()`` passed
through the SDK's own ``GoogleCloudStorageClient._encode_metadata``, pasted here as literals so
these tests need neither the SDK nor a network. Fixtures marked "hand-written" follow layouts
the spec says readers meet (labels as a JSON list or a space-separated string, malformed values).
"""

from __future__ import annotations

import datetime as dt
import logging
import math

import pytest

from octuefs.octue.metadata import (
    OctueMetadata,
    decode_object_metadata,
    encode_object_metadata,
    metadata_patch,
)

UTC = dt.timezone.utc
ANY_ID = "5d3c1e1a-9a59-4f0e-8f43-2b1f0c6a7e10"

# SDK dump (0.69.1): the seed's example D after folding "Vestas" (the SDK itself refuses capitals).
SEED_D = {
    "octue__id": r'"64be2ab1-c555-4cf9-b014-0c072e82945b"',
    "octue__timestamp": r"null",
    "octue__tags": r'{"cleaned": true, "type": "linear"}',
    "octue__labels": r'{"_type": "set", "items": ["vestas"]}',
    "octue__sdk_version": r'"0.69.1"',
}

# SDK dump (0.69.1): aware timestamp with a fraction; the spec's example values.
AWARE_FRACTION = {
    "octue__id": r'"02464c6f-0070-50ca-8a9b-ba1af5456601"',
    "octue__timestamp": r'{"_type": "datetime", "value": "2024-01-01T00:00:00.123456+00:00"}',
    "octue__tags": r'{"instrument": "anemometer", "height_m": 80.5, "calibrated": true}',
    "octue__labels": r'{"_type": "set", "items": ["qc-passed", "raw"]}',
    "octue__sdk_version": r'"0.69.1"',
}

# SDK dump (0.69.1): naive timestamp, whole seconds, no tags or labels.
NAIVE_WHOLE = {
    "octue__id": r'"8b9337d8-6b2a-4e3b-9a4b-9f1d2c3e4f50"',
    "octue__timestamp": r'{"_type": "datetime", "value": "2024-01-01T12:30:00"}',
    "octue__tags": r"{}",
    "octue__labels": r'{"_type": "set", "items": []}',
    "octue__sdk_version": r'"0.69.1"',
}

# SDK dump (0.69.1): +05:30 offset, NaN/Infinity, nested datetime and set wrappers, non-ASCII.
RICH = {
    "octue__id": r'"8b9337d8-6b2a-4e3b-9a4b-9f1d2c3e4f51"',
    "octue__timestamp": r'{"_type": "datetime", "value": "2023-06-15T08:00:00.000500+05:30"}',
    "octue__tags": (
        r'{"nan": NaN, "inf": Infinity, "ninf": -Infinity, "when": {"_type": "datetime", "value": '
        r'"2022-02-02T02:02:02"}, "kinds": {"_type": "set", "items": ["a", "b"]}, "nested": {"deep": '
        r'[1, {"at": {"_type": "datetime", "value": "2021-01-01T00:00:00+00:00"}, "s": {"_type": "set", '
        r'"items": [1, 2, 3]}}], "none": null}, "unicode": "Vestas \u2013 caf\u00e9 \u2603"}'
    ),
    "octue__labels": r'{"_type": "set", "items": ["a", "b-2", "z9"]}',
    "octue__sdk_version": r'"0.69.1"',
}

# SDK dump (0.69.1): the seed's example B tags, no timestamp.
SEED_B = {
    "octue__id": r'"8b9337d8-6b2a-4e3b-9a4b-9f1d2c3e4f52"',
    "octue__timestamp": r"null",
    "octue__tags": r'{"manufacturer": "Vestas", "output": "1MW"}',
    "octue__labels": r'{"_type": "set", "items": ["new"]}',
    "octue__sdk_version": r'"0.69.1"',
}

# SDK dumps (0.69.1): timestamps only, aware whole seconds and naive with a fraction.
AWARE_WHOLE_TIMESTAMP = r'{"_type": "datetime", "value": "2024-01-01T00:00:00+00:00"}'
NAIVE_FRACTION_TIMESTAMP = r'{"_type": "datetime", "value": "2024-03-05T14:07:09.250000"}'

# SDK dump (0.1.27): the legacy cluster and sequence keys; that SDK sorted tag names.
LEGACY = {
    "octue__id": r'"abff07bc-7c19-4ed5-be6d-a6546eae8e86"',
    "octue__timestamp": r'{"_type": "datetime", "value": "2021-05-03T18:15:58.298086"}',
    "octue__cluster": r"2",
    "octue__sequence": r"3",
    "octue__tags": r'{"height_m": 80, "manufacturer": "vestas"}',
    "octue__labels": r'{"_type": "set", "items": ["qc-passed", "raw"]}',
    "octue__sdk_version": r'"0.1.27"',
}

# SDK dump (0.1.27): a datafile with nothing set.
LEGACY_EMPTY = {
    "octue__id": r'"abff07bc-7c19-4ed5-be6d-a6546eae8e87"',
    "octue__timestamp": r"null",
    "octue__cluster": r"0",
    "octue__sequence": r"null",
    "octue__tags": r"{}",
    "octue__labels": r'{"_type": "set", "items": []}',
    "octue__sdk_version": r'"0.1.27"',
}

SDK_DUMPS = [SEED_D, AWARE_FRACTION, NAIVE_WHOLE, RICH, SEED_B, LEGACY, LEGACY_EMPTY]


# --- decoding ---------------------------------------------------------------------------


def test_decodes_the_spec_example():
    meta = decode_object_metadata(AWARE_FRACTION)
    assert meta == OctueMetadata(
        id="02464c6f-0070-50ca-8a9b-ba1af5456601",
        timestamp=dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        tags={"instrument": "anemometer", "height_m": 80.5, "calibrated": True},
        labels={"qc-passed", "raw"},
    )
    assert meta.cluster == 0 and meta.sequence is None


def test_decodes_seed_example_d():
    meta = decode_object_metadata(SEED_D)
    assert meta.tags == {"cleaned": True, "type": "linear"}
    assert meta.labels == {"vestas"}
    assert meta.timestamp is None


def test_decodes_naive_whole_second_timestamp_as_naive():
    meta = decode_object_metadata(NAIVE_WHOLE)
    assert meta.timestamp == dt.datetime(2024, 1, 1, 12, 30)
    assert meta.timestamp.tzinfo is None
    assert meta.tags == {} and meta.labels == frozenset()


@pytest.mark.parametrize(
    "raw, expected",
    [
        (AWARE_WHOLE_TIMESTAMP, dt.datetime(2024, 1, 1, tzinfo=UTC)),
        (NAIVE_FRACTION_TIMESTAMP, dt.datetime(2024, 3, 5, 14, 7, 9, 250000)),
        (RICH["octue__timestamp"], dt.datetime(2023, 6, 15, 2, 30, 0, 500, tzinfo=UTC)),
    ],
)
def test_decodes_timestamps(raw, expected):
    ts = decode_object_metadata({"octue__timestamp": raw}).timestamp
    assert ts == expected
    assert (ts.tzinfo is None) == (expected.tzinfo is None)
    assert encode_object_metadata(OctueMetadata(id=ANY_ID, timestamp=ts))["octue__timestamp"] == raw


def test_decodes_nan_infinity_and_nested_wrappers():
    meta = decode_object_metadata(RICH)
    tags = meta.tags
    assert math.isnan(tags["nan"]) and tags["inf"] == math.inf and tags["ninf"] == -math.inf
    assert tags["when"] == dt.datetime(2022, 2, 2, 2, 2, 2)
    assert tags["kinds"] == {"a", "b"}
    assert tags["nested"] == {"deep": [1, {"at": dt.datetime(2021, 1, 1, tzinfo=UTC), "s": {1, 2, 3}}], "none": None}
    assert tags["unicode"] == "Vestas \u2013 caf\u00e9 \u2603"
    assert meta.timestamp.utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_decodes_legacy_cluster_and_sequence():
    meta = decode_object_metadata(LEGACY)
    assert (meta.cluster, meta.sequence) == (2, 3)
    assert meta.timestamp == dt.datetime(2021, 5, 3, 18, 15, 58, 298086)
    empty = decode_object_metadata(LEGACY_EMPTY)
    assert (empty.cluster, empty.sequence, empty.tags, empty.labels) == (0, None, {}, frozenset())


@pytest.mark.parametrize(
    "labels_raw",
    [
        r'{"_type": "set", "items": ["qc-passed", "raw"]}',  # the SDK's wrapper
        r'["raw", "qc-passed"]',  # hand-written: a JSON list
        r"raw qc-passed",  # hand-written: space-separated, not JSON (kept raw, then split)
        r'"raw  qc-passed"',  # hand-written: a JSON string of space-separated labels
        r'["Raw", "QC-passed"]',  # hand-written: capitals fold
    ],
)
def test_decodes_every_labels_layout(labels_raw):
    assert decode_object_metadata({"octue__labels": labels_raw}).labels == {"qc-passed", "raw"}


@pytest.mark.parametrize("custom", [None, {}, {"owner": "someone"}, {"octue__tags": "", "octue__id": ""}])
def test_object_without_octue_metadata_reads_as_defaults(custom, caplog):
    meta = decode_object_metadata(custom)
    assert meta == OctueMetadata()
    assert (meta.id, meta.timestamp, meta.tags, meta.labels, meta.cluster, meta.sequence) == (
        None, None, {}, frozenset(), 0, None,
    )
    assert not caplog.records


def test_empty_values_count_as_absent():
    """fake-gcs-server stores "" for a key a PATCH set to null."""
    custom = {**LEGACY, "octue__sequence": "", "octue__timestamp": ""}
    meta = decode_object_metadata(custom)
    assert meta.sequence is None and meta.timestamp is None and meta.cluster == 2


MALFORMED = [
    ("octue__id", r'"not-a-uuid"', "id", None),
    ("octue__id", r"42", "id", None),
    ("octue__timestamp", r'{"_type": "datetime", "value": "yesterday"}', "timestamp", None),
    ("octue__timestamp", r"[1, 2]", "timestamp", None),
    ("octue__tags", r"{not json", "tags", {}),
    ("octue__tags", r'{"Bad Name": 1}', "tags", {}),
    ("octue__tags", r'{"ok": 1, "trailing_": 2}', "tags", {}),
    ("octue__tags", r"[1, 2]", "tags", {}),
    ("octue__tags", r'{"s": {"_type": "set", "items": [[1], [2]]}}', "tags", {}),
    ("octue__labels", r'{"_type": "set", "items": ["ok", "not ok!"]}', "labels", frozenset()),
    ("octue__labels", r"{not json", "labels", frozenset()),
    ("octue__labels", r"7", "labels", frozenset()),
    ("octue__cluster", r"true", "cluster", 0),
    ("octue__cluster", r'"three"', "cluster", 0),
    ("octue__cluster", r"1.5", "cluster", 0),
    ("octue__sequence", r"{}", "sequence", None),
]


@pytest.mark.parametrize("key, raw, field, default", MALFORMED)
def test_malformed_value_logs_one_warning_and_reads_as_default(key, raw, field, default, caplog):
    custom = {**AWARE_FRACTION, key: raw}
    with caplog.at_level(logging.WARNING, logger="octuefs.octue.metadata"):
        meta = decode_object_metadata(custom)
    assert getattr(meta, field) == default
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and key in warnings[0].getMessage()
    # the other fields are unaffected
    good = decode_object_metadata(AWARE_FRACTION)
    assert meta == good.replace(**{field: default})


@pytest.mark.parametrize("key, raw, field, default", MALFORMED)
def test_malformed_value_is_kept_byte_for_byte_when_another_field_changes(key, raw, field, default):
    custom = {**AWARE_FRACTION, "owner": "x", key: raw}
    meta = decode_object_metadata(custom)
    changed = meta.replace(cluster=7) if field != "cluster" else meta.replace(sequence=7)
    if changed.id is None:
        changed = changed.replace(id="02464c6f-0070-50ca-8a9b-ba1af5456601")
    encoded = encode_object_metadata(changed, custom)
    if field != "id":
        assert encoded[key] == raw
    assert encoded["owner"] == "x"


def test_legacy_string_cluster_and_sequence_are_read():
    """SDK 0.1.x read these with int(); a JSON string of digits reads too."""
    meta = decode_object_metadata({"octue__cluster": '"4"', "octue__sequence": "5.0"})
    assert (meta.cluster, meta.sequence) == (4, 5)


# --- encoding ---------------------------------------------------------------------------


def _model_of(custom):
    return decode_object_metadata(custom)


@pytest.mark.parametrize("dump", SDK_DUMPS)
def test_encoding_a_fresh_object_writes_the_sdk_text_key_by_key(dump):
    """With nothing stored, every field octuefs writes is the SDK's text for the same value."""
    encoded = encode_object_metadata(_model_of(dump))
    for key in ("octue__id", "octue__timestamp", "octue__labels"):
        assert encoded[key] == dump[key], key
    if dump is not LEGACY:  # SDK 0.1.27 sorted tag names; the current SDK keeps their order
        assert encoded["octue__tags"] == dump["octue__tags"]
    assert encoded["octue__sdk_version"] == '"0.69.1"'
    if "octue__cluster" in dump:
        assert encoded["octue__cluster"] == dump["octue__cluster"]
        assert encoded["octue__sequence"] == dump["octue__sequence"]


def test_encoding_the_seed_examples_from_python_values():
    meta = OctueMetadata(
        id="64be2ab1-c555-4cf9-b014-0c072e82945b", tags={"cleaned": True, "type": "linear"}, labels={"Vestas"}
    )
    encoded = encode_object_metadata(meta)
    assert {k: encoded[k] for k in SEED_D} == SEED_D
    assert encoded["octue__cluster"] == "0" and encoded["octue__sequence"] == "null"
    assert set(encoded) == set(SEED_D) | {"octue__cluster", "octue__sequence"}


def test_encoding_the_spec_example_from_python_values():
    meta = OctueMetadata(
        id="02464C6F-0070-50CA-8A9B-BA1AF5456601",
        timestamp=dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC),
        tags={"instrument": "anemometer", "height_m": 80.5, "calibrated": True},
        labels="raw qc-passed",
        sequence=3,
    )
    encoded = encode_object_metadata(meta)
    assert {k: encoded[k] for k in AWARE_FRACTION} == AWARE_FRACTION
    assert encoded["octue__sequence"] == "3"


@pytest.mark.parametrize("dump", SDK_DUMPS)
def test_sdk_objects_are_not_rewritten_when_nothing_changed(dump):
    custom = {**dump, "owner": "someone", "source": "sensor-7"}
    meta = decode_object_metadata(custom)
    assert encode_object_metadata(meta, custom) == custom
    assert metadata_patch(custom, meta) == {}


def test_a_change_writes_the_full_layout_and_keeps_other_fields_byte_for_byte():
    meta = decode_object_metadata(LEGACY).replace(labels={"raw"})
    patch = metadata_patch(LEGACY, meta)
    assert patch == {
        "octue__labels": r'{"_type": "set", "items": ["raw"]}',
        "octue__sdk_version": '"0.69.1"',
    }
    # the legacy tag order (sorted by 0.1.27) is kept: the tags did not change
    assert encode_object_metadata(meta, LEGACY)["octue__tags"] == LEGACY["octue__tags"]


def test_a_change_on_a_current_sdk_object_adds_cluster_and_sequence():
    meta = decode_object_metadata(SEED_B).replace(sequence=2)
    assert metadata_patch(SEED_B, meta) == {"octue__cluster": "0", "octue__sequence": "2"}
    # sdk_version was already the layout's version, so it is not in the patch
