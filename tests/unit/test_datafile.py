"""The Python Datafile API (octuefs.octue.datafile) on a FakeBucket: what it sends, and what the bucket holds.

Each test asserts on the bucket's raw custom metadata (the SDK's text) and on request counts, so
"one upload, no patch" and "nothing sent" are checked, not assumed.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import os
import pathlib

import pytest

import octuefs
import octuefs.octue.datafile as datafile_module
from octuefs import Datafile
from octuefs.errors import (
    Conflict,
    InvalidMetadata,
    MetadataTooLarge,
    NotFound,
    StaleFile,
)
from octuefs.storage.fake import FakeBucket

UTC = dt.timezone.utc
PROJECT = "my-project"
BUCKET = "my-bucket"
OBJECT = "path/to/data.csv"
DATA = b"time,speed\n0,7.5\n1,8.0\n"
ID = "02464c6f-0070-50ca-8a9b-ba1af5456601"
WRITES = ("upload", "patch", "copy", "delete")

# SDK dump (0.69.1), copied from tests/unit/test_metadata_sdk_layout.py.
AWARE_FRACTION = {
    "octue__id": r'"02464c6f-0070-50ca-8a9b-ba1af5456601"',
    "octue__timestamp": r'{"_type": "datetime", "value": "2024-01-01T00:00:00.123456+00:00"}',
    "octue__tags": r'{"instrument": "anemometer", "height_m": 80.5, "calibrated": true}',
    "octue__labels": r'{"_type": "set", "items": ["qc-passed", "raw"]}',
    "octue__sdk_version": r'"0.69.1"',
}


class RecordingBucket(FakeBucket):
    """A FakeBucket that also records the arguments of every write."""

    def __init__(self, name: str):
        super().__init__(name)
        self.uploads: list[dict] = []
        self.patches: list[dict] = []

    def upload_file(self, name, path, metadata, if_generation_match=None, content_type=None, **kwargs):
        self.uploads.append(dict(name=name, metadata=dict(metadata), if_generation_match=if_generation_match,
                                 if_metageneration_match=kwargs.get("if_metageneration_match")))
        return super().upload_file(name, path, metadata, if_generation_match, content_type, **kwargs)

    def patch_metadata(self, name, changes, if_metageneration_match=None, if_generation_match=None, content_type=None):
        self.patches.append(
            dict(name=name, changes=dict(changes), if_metageneration_match=if_metageneration_match, if_generation_match=if_generation_match)
        )
        return super().patch_metadata(name, changes, if_metageneration_match, if_generation_match, content_type)


@pytest.fixture(autouse=True)
def in_tmp_path(monkeypatch, tmp_path):
    """Every test runs in its own directory, so relative local paths land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def buckets(monkeypatch):
    """Buckets by name, served to every Datafile through the module's bucket_factory hook."""
    served: dict[str, RecordingBucket] = {}

    def factory(name, project):
        if name not in served:
            raise NotFound(f"bucket {name!r} does not exist")
        return served[name]

    monkeypatch.setattr(datafile_module, "bucket_factory", factory)
    served[BUCKET] = RecordingBucket(BUCKET)
    return served


@pytest.fixture
def bucket(buckets):
    return buckets[BUCKET]


def put(bucket, name=OBJECT, data=DATA, metadata=None):
    """An object as another writer left it; the call counts start from zero after it."""
    info = bucket.upload_bytes(name, data, metadata or {})
    bucket.reset_calls()
    bucket.uploads.clear()
    return info


def raw(bucket, name=OBJECT):
    """The object's custom metadata, read without counting a request."""
    with bucket._lock:
        return dict(bucket._objects[name].metadata)


def content(bucket, name=OBJECT):
    return bucket.objects()[name]


def writes(bucket):
    return {op: bucket.calls[op] for op in WRITES if bucket.calls[op]}


def md5_of(bucket, name=OBJECT):
    with bucket._lock:
        return bucket._objects[name].md5


# --- the seed's examples, as written (bucket and project names substituted) -------------------


def metadata_calculating_function(data):
    rows = data.strip().splitlines()[1:]
    return {
        "timestamp": dt.datetime(2024, 1, 1, tzinfo=UTC),
        "cluster": 1,
        "sequence": len(rows),
        "tags": {"rows": len(rows), "source": "anemometer"},
        "labels": "raw qc-passed",
    }


def test_example_a_downloads_once_and_patches_metadata_once(bucket, caplog):
    put(bucket, metadata={"owner": "ops"})
    md5 = md5_of(bucket)

    project_name = "my-project"
    bucket_name = "my-bucket",  # the seed's stray comma: a 1-tuple, unwrapped with a warning
    datafile_path = "path/to/data.csv"

    with Datafile.from_cloud(project_name, bucket_name, datafile_path, mode="r") as (datafile, f):
        data = f.read()
        new_metadata = metadata_calculating_function(data)

        datafile.timestamp = new_metadata["timestamp"]
        datafile.cluster = new_metadata["cluster"]
        datafile.sequence = new_metadata["sequence"]
        datafile.tags = new_metadata["tags"]
        datafile.labels = new_metadata["labels"]

    assert "1-tuple" in caplog.text
    assert data == DATA.decode()
    assert bucket.calls["stat"] == 1 and bucket.calls["download"] == 1
    assert writes(bucket) == {"patch": 1}
    assert content(bucket) == DATA and md5_of(bucket) == md5
    assert raw(bucket) == {
        "owner": "ops",
        "octue__id": json.dumps(datafile.id),
        "octue__timestamp": '{"_type": "datetime", "value": "2024-01-01T00:00:00+00:00"}',
        "octue__tags": '{"rows": 2, "source": "anemometer"}',
        "octue__labels": '{"_type": "set", "items": ["qc-passed", "raw"]}',
        "octue__cluster": "1",
        "octue__sequence": "2",
        "octue__sdk_version": '"0.69.1"',
    }


@pytest.mark.parametrize("finish", ["to_cloud", "update_cloud_metadata"])
def test_example_b_updates_metadata_without_downloading(bucket, finish):
    put(bucket)
    project_name = "my-project"
    bucket_name = "my-bucket"
    datafile_path = "path/to/data.csv"

    datafile = Datafile.from_cloud(project_name, bucket_name, datafile_path)  # the seed's stray ":" dropped

    datafile.timestamp = dt.datetime.now()
    datafile.cluster = 0
    datafile.sequence = 3
    datafile.tags = {"manufacturer": "Vestas", "output": "1MW"}
    datafile.labels = {"new"}

    result = getattr(datafile, finish)()

    assert bucket.calls["download"] == 0
    assert writes(bucket) == {"patch": 1}
    if finish == "to_cloud":
        assert result == "gs://my-bucket/path/to/data.csv"
    stored = raw(bucket)
    assert stored["octue__tags"] == '{"manufacturer": "Vestas", "output": "1MW"}'
    assert stored["octue__labels"] == '{"_type": "set", "items": ["new"]}'
    assert stored["octue__sequence"] == "3" and stored["octue__cluster"] == "0"
    assert stored["octue__timestamp"] == json.dumps({"_type": "datetime", "value": datafile.timestamp.isoformat()})
    assert stored["octue__id"] == json.dumps(datafile.id)
    assert content(bucket) == DATA


def test_example_c_reads_content_and_metadata_and_sends_nothing(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    project_name = "my-project"
    bucket_name = "my-bucket"
    datafile_path = "path/to/data.csv"

    datafile = Datafile.from_cloud(project_name, bucket_name, datafile_path)

    with datafile.open("r") as f:
        data = f.read()

    metadata = datafile.metadata()

    assert data == DATA.decode()
    assert metadata["octue__id"] == ID
    assert metadata["octue__timestamp"] == dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert metadata["octue__tags"] == {"instrument": "anemometer", "height_m": 80.5, "calibrated": True}
    assert metadata["octue__labels"] == {"qc-passed", "raw"}
    assert metadata["octue__cluster"] == 0 and metadata["octue__sequence"] is None
    assert datafile.name == "data.csv" and datafile.path == "gs://my-bucket/path/to/data.csv"
    assert writes(bucket) == {}
    assert bucket.calls["download"] == 1
    assert raw(bucket) == AWARE_FRACTION


def _check_example_d(bucket, datafile):
    assert writes(bucket) == {"upload": 1}
    assert bucket.uploads[0]["if_generation_match"] == 0
    assert content(bucket, "path/to/data.dat") == b"This is some cleaned data."
    assert raw(bucket, "path/to/data.dat") == {
        "octue__id": json.dumps(datafile.id),
        "octue__timestamp": "null",
        "octue__tags": '{"cleaned": true, "type": "linear"}',
        "octue__labels": '{"_type": "set", "items": ["vestas"]}',
        "octue__cluster": "0",
        "octue__sequence": "2",
        "octue__sdk_version": '"0.69.1"',
    }


def test_example_d_new_local_file(bucket):
    sequence = 2
    tags = {"cleaned": True, "type": "linear"}
    labels = {"Vestas"}

    with Datafile(path="path/to/local/file.dat", sequence=sequence, tags=tags, labels=labels, mode="w") as (datafile, f):
        f.write("This is some cleaned data.")

    assert writes(bucket) == {}  # a local datafile sends nothing on close
    path = datafile.to_cloud(project_name="my-project", bucket_name="my-bucket", path_in_bucket="path/to/data.dat")

    assert path == "gs://my-bucket/path/to/data.dat"
    assert pathlib.Path("path/to/local/file.dat").read_text() == "This is some cleaned data."
    _check_example_d(bucket, datafile)


def test_example_d_existing_local_file(bucket):
    os.makedirs("path/to/local")
    pathlib.Path("path/to/local/file.dat").write_text("This is some cleaned data.")
    sequence = 2
    tags = {"cleaned": True, "type": "linear"}
    labels = {"Vestas"}

    datafile = Datafile(path="path/to/local/file.dat", sequence=sequence, tags=tags, labels=labels)
    datafile.to_cloud(project_name="my-project", bucket_name="my-bucket", path_in_bucket="path/to/data.dat")

    _check_example_d(bucket, datafile)
    assert datafile.exists_in_cloud and datafile.cloud_path == "gs://my-bucket/path/to/data.dat"


# --- writing: one request, with a precondition --------------------------------------------------


def test_write_mode_uploads_data_and_metadata_in_one_request(bucket):
    info = put(bucket, metadata={**AWARE_FRACTION, "owner": "ops"})
    with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="w") as (datafile, f):
        f.write("new,data\n")
        datafile.tags["calibrated"] = False

    assert writes(bucket) == {"upload": 1}
    assert bucket.calls["download"] == 0  # "w" truncates: the old content is not needed
    assert bucket.uploads[0]["if_generation_match"] == info.generation
    assert content(bucket) == b"new,data\n"
    stored = raw(bucket)
    assert stored["owner"] == "ops" and stored["octue__id"] == AWARE_FRACTION["octue__id"]
    assert stored["octue__tags"] == '{"instrument": "anemometer", "height_m": 80.5, "calibrated": false}'
    assert stored["octue__timestamp"] == AWARE_FRACTION["octue__timestamp"]


def test_append_mode_downloads_then_uploads_once(bucket):
    put(bucket)
    with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="a") as (_, f):
        f.write("2,9.1\n")
    assert bucket.calls["download"] == 1
    assert writes(bucket) == {"upload": 1}
    assert content(bucket) == DATA + b"2,9.1\n"


def test_write_mode_with_same_content_and_no_metadata_change_sends_nothing(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="wb") as (_, f):
        f.write(DATA)
    assert writes(bucket) == {}


def test_write_mode_with_same_content_and_new_metadata_patches_once(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    md5 = md5_of(bucket)
    with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="r+") as (datafile, f):
        assert f.read() == DATA.decode()
        datafile.sequence = 7
    assert writes(bucket) == {"patch": 1}
    assert md5_of(bucket) == md5
    assert raw(bucket)["octue__sequence"] == "7"


def test_read_mode_exit_without_changes_sends_nothing(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="r") as (datafile, f):
        f.read()
        datafile.labels = "raw qc-passed"  # the same labels again
        datafile.cluster = 0
    assert writes(bucket) == {}
    assert raw(bucket) == AWARE_FRACTION


def test_read_mode_exit_on_an_object_without_octue_metadata_sends_nothing(bucket):
    put(bucket, metadata={"owner": "ops"})
    with Datafile.from_cloud(PROJECT, BUCKET, OBJECT) as (_, f):
        f.read()
    assert writes(bucket) == {}
    assert raw(bucket) == {"owner": "ops"}


def test_metadata_only_change_is_one_patch_of_the_changed_keys(bucket):
    info = put(bucket, metadata={**AWARE_FRACTION, "owner": "ops"})
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    datafile.cluster = 2
    datafile.update_cloud_metadata()

    assert writes(bucket) == {"patch": 1}
    patch = bucket.patches[0]
    assert patch["changes"]["octue__cluster"] == "2"
    assert not {"owner", "octue__id", "octue__tags", "octue__labels", "octue__timestamp"} & set(patch["changes"])
    assert (patch["if_generation_match"], patch["if_metageneration_match"]) == (info.generation, info.metageneration)
    after = bucket.stat(OBJECT)
    assert (after.md5, after.crc32c, after.generation) == (info.md5, info.crc32c, info.generation)
    assert raw(bucket) == {**AWARE_FRACTION, "owner": "ops", "octue__cluster": "2", "octue__sequence": "null"}

    datafile.update_cloud_metadata()  # nothing changed since: nothing sent
    assert writes(bucket) == {"patch": 1}


def test_new_cloud_object_is_created_with_generation_zero(bucket):
    with Datafile.from_cloud(PROJECT, BUCKET, "new/file.txt", mode="x", labels="fresh") as (datafile, f):
        f.write("hello")
    assert bucket.uploads[0]["if_generation_match"] == 0
    assert content(bucket, "new/file.txt") == b"hello"
    assert raw(bucket, "new/file.txt")["octue__labels"] == '{"_type": "set", "items": ["fresh"]}'
    assert raw(bucket, "new/file.txt")["octue__id"] == json.dumps(datafile.id)


def test_open_without_a_with_block_syncs_on_close(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    f = datafile.open("w")
    f.write("replaced")
    assert writes(bucket) == {}
    f.close()
    f.close()  # closing twice sends nothing more
    assert writes(bucket) == {"upload": 1}
    assert content(bucket) == b"replaced"


def test_an_exception_in_the_with_block_sends_nothing(bucket):
    put(bucket)
    with pytest.raises(RuntimeError):
        with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="w") as (datafile, f):
            f.write("half")
            datafile.cluster = 5
            raise RuntimeError("boom")
    assert writes(bucket) == {}
    assert content(bucket) == DATA
    datafile.to_cloud()  # the pending changes can still be sent
    assert writes(bucket) == {"upload": 1}
    assert content(bucket) == b"half" and raw(bucket)["octue__cluster"] == "5"


def test_to_cloud_of_an_unchanged_cloud_datafile_sends_nothing(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    datafile.download()
    assert datafile.to_cloud() == f"gs://{BUCKET}/{OBJECT}"
    assert writes(bucket) == {}


def test_to_cloud_after_a_local_edit_uploads_once(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    pathlib.Path(datafile.local_path).write_bytes(b"edited")
    datafile.labels.add("edited")
    datafile.to_cloud()
    assert writes(bucket) == {"upload": 1}
    assert content(bucket) == b"edited"
    assert raw(bucket)["octue__labels"] == '{"_type": "set", "items": ["edited", "qc-passed", "raw"]}'


def test_to_cloud_replaces_an_existing_object_keeping_the_datafiles_id_and_foreign_keys(bucket):
    """As the SDK does (octue 0.69.1 uploads, then overwrites the metadata with the datafile's own)."""
    info = put(bucket, "dest.txt", b"old", {**AWARE_FRACTION, "owner": "ops"})
    pathlib.Path("local.txt").write_text("new")
    datafile = Datafile("local.txt", cluster=4)
    own_id = datafile.id
    datafile.to_cloud(bucket_name=BUCKET, path_in_bucket="dest.txt")
    assert bucket.uploads[0]["if_generation_match"] == info.generation
    assert writes(bucket) == {"upload": 1}
    assert datafile.id == own_id != ID
    assert raw(bucket, "dest.txt")["octue__id"] == json.dumps(own_id)
    assert raw(bucket, "dest.txt")["owner"] == "ops" and raw(bucket, "dest.txt")["octue__cluster"] == "4"
    assert datafile.path == "gs://my-bucket/dest.txt" and datafile.name == "dest.txt"


def test_to_cloud_with_an_explicit_id_replaces_the_objects(bucket):
    put(bucket, "dest.txt", b"old", AWARE_FRACTION)
    pathlib.Path("local.txt").write_text("new")
    given = "8b9337d8-6b2a-4e3b-9a4b-9f1d2c3e4f50"
    datafile = Datafile("local.txt", id=given)
    datafile.to_cloud(bucket_name=BUCKET, path_in_bucket="dest.txt")
    assert datafile.id == given and raw(bucket, "dest.txt")["octue__id"] == json.dumps(given)
    assert content(bucket, "dest.txt") == b"new"


def test_to_cloud_of_a_local_datafile_needs_a_location(bucket):
    pathlib.Path("local.txt").write_text("x")
    with pytest.raises(ValueError, match="bucket_name and path_in_bucket"):
        Datafile("local.txt").to_cloud()
    with pytest.raises(ValueError, match="not in the cloud"):
        Datafile("local.txt").update_cloud_metadata()


def test_to_cloud_moves_a_cloud_datafile_to_another_bucket(buckets, bucket):
    put(bucket, metadata=AWARE_FRACTION)
    other = buckets["other-bucket"] = RecordingBucket("other-bucket")
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    assert datafile.to_cloud(bucket_name="other-bucket", path_in_bucket="copy.csv") == "gs://other-bucket/copy.csv"
    assert content(other, "copy.csv") == DATA
    assert raw(other, "copy.csv")["octue__id"] == AWARE_FRACTION["octue__id"]
    assert writes(other) == {"upload": 1} and writes(bucket) == {}


# --- the id --------------------------------------------------------------------------------------


def test_an_object_without_an_id_gets_one_on_first_write_and_keeps_it(bucket):
    put(bucket)
    first = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    first.cluster = 1
    first.update_cloud_metadata()
    assert raw(bucket)["octue__id"] == json.dumps(first.id)

    second = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    assert second.id == first.id
    with second.open("w") as f:
        f.write("new content")
    assert raw(bucket)["octue__id"] == json.dumps(first.id)


def test_the_id_is_read_only_and_an_existing_id_cannot_be_replaced(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    with pytest.raises(AttributeError):
        datafile.id = "8b9337d8-6b2a-4e3b-9a4b-9f1d2c3e4f50"
    with pytest.raises(InvalidMetadata, match="id"):
        Datafile.from_cloud(PROJECT, BUCKET, OBJECT, id="8b9337d8-6b2a-4e3b-9a4b-9f1d2c3e4f50")
    assert Datafile.from_cloud(PROJECT, BUCKET, OBJECT, id=ID.upper()).id == ID
    assert writes(bucket) == {}


def test_a_given_id_is_used_for_an_object_without_one(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT, id=ID, cluster=3)
    datafile.to_cloud()
    assert raw(bucket)["octue__id"] == json.dumps(ID) and raw(bucket)["octue__cluster"] == "3"


# --- conflicts -----------------------------------------------------------------------------------


def test_a_content_conflict_raises_and_does_not_overwrite(bucket):
    put(bucket)
    with pytest.raises(Conflict, match="changed in the bucket") as caught:
        with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="w") as (_, f):
            f.write("mine")
            bucket.upload_bytes(OBJECT, b"theirs", {"octue__cluster": "9"})
    assert content(bucket) == b"theirs" and raw(bucket) == {"octue__cluster": "9"}
    assert "from_cloud" in str(caught.value)


def test_a_content_upload_after_a_metadata_change_elsewhere_raises_and_keeps_it(bucket):
    """On GCS a metadata change moves only the metageneration: the upload checks it too."""
    put(bucket, metadata=AWARE_FRACTION)
    with pytest.raises(Conflict, match="changed in the bucket"):
        with Datafile.from_cloud(PROJECT, BUCKET, OBJECT, mode="w") as (_, f):
            f.write("mine")
            bucket.patch_metadata(OBJECT, {"octue__tags": '{"by": "someone else"}'})
    assert raw(bucket)["octue__tags"] == '{"by": "someone else"}'
    assert content(bucket) != b"mine"


def test_a_metadata_conflict_raises_and_does_not_overwrite(bucket):
    """The same tag changed here and elsewhere: the one rule for a race (octue/merge.py) tells the
    caller, who is still there, and writes nothing."""
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    bucket.patch_metadata(OBJECT, {"octue__tags": '{"by": "someone else"}'})
    datafile.tags = {"by": "me"}
    with pytest.raises(Conflict, match=r"\['octue__tags'\] changed both here and in the bucket"):
        datafile.update_cloud_metadata()
    assert raw(bucket)["octue__tags"] == '{"by": "someone else"}'


def test_a_metadata_change_elsewhere_to_other_keys_is_kept_and_ours_applied(bucket):
    """As a setfattr through the mount: a change elsewhere meanwhile to another field (and to
    another tag) is kept, this datafile's is applied over it, and the datafile then holds both."""
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    elsewhere = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    elsewhere.labels = {"from-elsewhere"}
    elsewhere.tags["site"] = "north"
    elsewhere.update_cloud_metadata()
    datafile.cluster = 4
    datafile.tags["height_m"] = 100
    bucket.reset_calls()
    datafile.update_cloud_metadata()
    assert bucket.calls["patch"] == 2 and bucket.calls["stat"] == 1  # refused, read again, re-applied
    after = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    assert after.labels == {"from-elsewhere"} and after.cluster == 4
    assert after.tags == {"instrument": "anemometer", "height_m": 100, "calibrated": True, "site": "north"}
    assert datafile.labels == {"from-elsewhere"} and datafile.tags == after.tags  # the datafile holds both
    assert content(bucket) == DATA
    bucket.reset_calls()
    datafile.update_cloud_metadata()
    assert sum(bucket.calls[w] for w in WRITES) == 0  # nothing left to send: it holds what is there


def test_a_metadata_change_to_content_replaced_elsewhere_raises(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    bucket.upload_bytes(OBJECT, b"new content", {"octue__cluster": "9"})
    datafile.cluster = 4
    with pytest.raises(Conflict, match="changed in the bucket"):
        datafile.update_cloud_metadata()
    assert raw(bucket) == {"octue__cluster": "9"} and content(bucket) == b"new content"


def test_a_create_conflict_raises_and_does_not_overwrite(bucket):
    datafile = Datafile(f"gs://{BUCKET}/new.txt", mode="w")
    with pytest.raises(Conflict):
        with datafile as (_, f):
            f.write("mine")
            bucket.upload_bytes("new.txt", b"theirs")
    assert content(bucket, "new.txt") == b"theirs"


def test_reading_a_replaced_generation_is_stale(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    bucket.upload_bytes(OBJECT, b"replaced")
    with pytest.raises(StaleFile, match="from_cloud"):
        datafile.open("r")


# --- validation: named field and rule, before any request -----------------------------------------


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("tags", {"Manufacturer": "Vestas"}, "tag name"),
        ("tags", {"ok_": 1}, "tag name"),
        ("tags", ["not", "a", "mapping"], "tags"),
        ("tags", {"when": object()}, "tags.when"),
        ("labels", "good bad_label", "labels"),
        ("labels", {"ends-"}, "labels"),
        ("labels", 42, "labels"),
        ("cluster", "3", "cluster"),
        ("cluster", True, "cluster"),
        ("sequence", 1.5, "sequence"),
        ("timestamp", "yesterday", "timestamp"),
        ("timestamp", float("nan"), "timestamp"),
    ],
)
def test_setters_refuse_invalid_values_naming_the_field(bucket, field, value, named):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    with pytest.raises(InvalidMetadata) as caught:
        setattr(datafile, field, value)
    assert isinstance(caught.value, ValueError)
    assert f"invalid {named}" in str(caught.value) and caught.value.rule in str(caught.value)
    datafile.update_cloud_metadata()
    assert writes(bucket) == {} and raw(bucket) == AWARE_FRACTION


@pytest.mark.parametrize(
    "kwargs",
    [{"tags": {"Bad": 1}}, {"labels": "no_underscores"}, {"cluster": "x"}, {"sequence": "1"}, {"id": "not-a-uuid"}],
)
def test_constructor_and_from_cloud_validate_before_any_request(bucket, kwargs):
    with pytest.raises(InvalidMetadata):
        Datafile.from_cloud(PROJECT, BUCKET, OBJECT, **kwargs)
    with pytest.raises(InvalidMetadata):
        Datafile(f"gs://{BUCKET}/{OBJECT}", **kwargs)
    assert sum(bucket.calls.values()) == 0


def test_in_place_changes_are_validated(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    datafile.labels.add("Vestas")
    datafile.labels.update("Two Words", ["third"])
    datafile.labels |= {"Fourth"}
    datafile.tags["height_m"] = 80
    datafile.tags.update(site="north")
    assert datafile.labels == {"vestas", "two", "words", "third", "fourth"}
    with pytest.raises(InvalidMetadata, match="labels"):
        datafile.labels.add("two words")
    with pytest.raises(InvalidMetadata, match="tag name"):
        datafile.tags["Height"] = 1
    with pytest.raises(InvalidMetadata, match="tag name"):
        datafile.tags.setdefault("Bad", 1)
    datafile.update_cloud_metadata()
    assert raw(bucket)["octue__tags"] == '{"height_m": 80, "site": "north"}'
    assert raw(bucket)["octue__labels"] == '{"_type": "set", "items": ["fourth", "third", "two", "vestas", "words"]}'


def test_metadata_over_the_gcs_limit_is_refused_before_any_request(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    datafile.tags = {"big": "x" * 5000}
    with pytest.raises(MetadataTooLarge, match="4096"):
        datafile.update_cloud_metadata()
    with pytest.raises(MetadataTooLarge):
        with datafile.open("w") as f:
            f.write("new")
    assert writes(bucket) == {} and content(bucket) == DATA


# --- labels, timestamps, tags ----------------------------------------------------------------------


@pytest.mark.parametrize("labels", ["a b", "  b   a ", {"a", "b"}, ["A", "B"], ("b", "a"), '["a", "b"]', frozenset("ab")])
def test_labels_from_text_or_any_iterable(labels):
    assert Datafile("local.txt", labels=labels).labels == {"a", "b"}
    datafile = Datafile("local.txt")
    datafile.labels = labels
    assert datafile.labels == {"a", "b"}


def test_labels_are_folded_to_lower_case(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT, labels={"Vestas"})
    assert datafile.labels == {"vestas"}
    datafile.labels = {"a"}
    datafile.labels = "Vestas"
    datafile.to_cloud()
    assert raw(bucket)["octue__labels"] == '{"_type": "set", "items": ["vestas"]}'


@pytest.mark.parametrize(
    "value, expected, text",
    [
        (dt.datetime(2024, 1, 1, 12, 30), dt.datetime(2024, 1, 1, 12, 30), "2024-01-01T12:30:00"),
        (dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 1, tzinfo=UTC), "2024-01-01T00:00:00+00:00"),
        (1704067200, dt.datetime(2024, 1, 1, tzinfo=UTC), "2024-01-01T00:00:00+00:00"),
        (1704067200.123456, dt.datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC), "2024-01-01T00:00:00.123456+00:00"),
    ],
)
def test_timestamp_from_datetime_or_posix_seconds(bucket, value, expected, text):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    datafile.timestamp = value
    assert datafile.timestamp == expected and (datafile.timestamp.tzinfo is None) == (expected.tzinfo is None)
    assert isinstance(datafile.timestamp, dt.datetime)
    datafile.update_cloud_metadata()
    assert raw(bucket)["octue__timestamp"] == json.dumps({"_type": "datetime", "value": text})
    assert Datafile.from_cloud(PROJECT, BUCKET, OBJECT).timestamp == expected


def test_posix_timestamp_and_clearing_the_timestamp(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    assert datafile.posix_timestamp == 1704067200.123456
    datafile.timestamp = None
    datafile.update_cloud_metadata()
    assert raw(bucket)["octue__timestamp"] == "null" and datafile.posix_timestamp is None


def test_tag_values_keep_their_types(bucket):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    when = dt.datetime(2022, 2, 2, 2, 2, 2)
    datafile.tags = {"n": 1, "f": 1.0, "b": True, "s": "1", "none": None, "when": when, "kinds": {"b", "a"}, "l": (1, 2)}
    datafile.update_cloud_metadata()
    assert raw(bucket)["octue__tags"] == (
        '{"n": 1, "f": 1.0, "b": true, "s": "1", "none": null, "when": {"_type": "datetime", "value": '
        '"2022-02-02T02:02:02"}, "kinds": {"_type": "set", "items": ["a", "b"]}, "l": [1, 2]}'
    )
    again = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    assert again.tags == {"n": 1, "f": 1.0, "b": True, "s": "1", "none": None, "when": when, "kinds": {"a", "b"}, "l": [1, 2]}


# --- reading -----------------------------------------------------------------------------------------


def test_from_cloud_stats_only_and_downloads_lazily_once(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    assert dict(bucket.calls) == {"stat": 1}
    for _ in range(2):
        with datafile.open() as f:
            assert f.read() == DATA.decode()
    with datafile.open("rb") as f:
        assert list(f) == DATA.splitlines(keepends=True)
    assert bucket.calls["download"] == 1
    assert datafile.exists_locally and pathlib.Path(datafile.local_path).read_bytes() == DATA


def test_download_to_a_given_path(bucket, tmp_path):
    put(bucket)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    target = tmp_path / "out" / "copy.csv"
    assert datafile.download(target) == str(target)
    assert target.read_bytes() == DATA and datafile.local_path == str(target)
    assert datafile.download(target) == str(target) and bucket.calls["download"] == 1


@pytest.mark.parametrize(
    "how",
    [
        lambda: Datafile.from_cloud(PROJECT, BUCKET, OBJECT),
        lambda: Datafile.from_cloud(cloud_path=f"gs://{BUCKET}/{OBJECT}"),
        lambda: Datafile.from_cloud(f"gs://{BUCKET}/{OBJECT}"),
        lambda: Datafile(f"gs://{BUCKET}/{OBJECT}"),
        lambda: Datafile.from_cloud(bucket_name=(BUCKET,), datafile_path=OBJECT),
    ],
)
def test_ways_to_name_a_cloud_object(bucket, how):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = how()
    assert datafile.path == datafile.cloud_path == "gs://my-bucket/path/to/data.csv"
    assert (datafile.bucket_name, datafile.path_in_bucket, datafile.name) == (BUCKET, OBJECT, "data.csv")
    assert datafile.exists_in_cloud and datafile.id == ID
    assert bucket.calls["stat"] == 1 and bucket.calls["download"] == 0


def test_a_bucket_can_be_passed_instead_of_the_factory(monkeypatch):
    monkeypatch.setattr(datafile_module, "bucket_factory", None)  # must not be used
    own = FakeBucket("own")
    own.upload_bytes("a.txt", b"x", AWARE_FRACTION)
    datafile = Datafile.from_cloud(bucket=own, datafile_path="a.txt")
    assert datafile.cloud_path == "gs://own/a.txt" and datafile.id == ID
    with pytest.raises(ValueError, match="own"):
        Datafile("gs://other/a.txt", bucket=own)


def test_a_local_datafile(tmp_path):
    datafile = Datafile("data/file.txt", cluster=1)
    assert datafile.path == "data/file.txt" and datafile.name == "file.txt"
    assert datafile.local_path == str(tmp_path / "data" / "file.txt")
    assert not datafile.exists_in_cloud and datafile.cloud_path is None
    assert datafile.bucket_name is None and datafile.path_in_bucket is None
    with datafile.open("w") as f:
        f.write("local")
    assert datafile.exists_locally and (tmp_path / "data" / "file.txt").read_text() == "local"
    with pytest.raises(ValueError, match="not in the cloud"):
        datafile.download()


def test_missing_objects(bucket):
    with pytest.raises(NotFound, match="no such object"):
        Datafile.from_cloud(PROJECT, BUCKET, "missing.txt")
    datafile = Datafile(f"gs://{BUCKET}/missing.txt")  # the constructor allows a new object
    with pytest.raises(NotFound):
        datafile.open("r")
    put(bucket, "present.txt")
    with pytest.raises(FileExistsError):
        Datafile.from_cloud(PROJECT, BUCKET, "present.txt").open("x")


def test_malformed_or_empty_stored_values_read_as_defaults_and_send_nothing(bucket, caplog):
    put(bucket, metadata={"octue__tags": "{not json", "octue__labels": "", "octue__cluster": "", "octue__id": ""})
    with caplog.at_level(logging.WARNING):
        with Datafile.from_cloud(PROJECT, BUCKET, OBJECT) as (datafile, f):
            f.read()
    assert datafile.tags == {} and datafile.labels == set() and datafile.cluster == 0
    assert writes(bucket) == {}


def test_metadata_dict(bucket):
    put(bucket, metadata=AWARE_FRACTION)
    datafile = Datafile.from_cloud(PROJECT, BUCKET, OBJECT)
    plain = datafile.metadata(use_octue_namespace=False)
    assert set(plain) == {"id", "timestamp", "tags", "labels", "cluster", "sequence", "sdk_version"}
    plain["tags"]["changed"] = 1
    plain["labels"].add("changed")
    assert "changed" not in datafile.tags and "changed" not in datafile.labels
    namespaced = datafile.metadata(include_id=False, include_sdk_version=False, use_octue_namespace=True)
    assert set(namespaced) == {"octue__timestamp", "octue__tags", "octue__labels", "octue__cluster", "octue__sequence"}


def test_open_refuses_unknown_keywords(bucket):
    with pytest.raises(TypeError, match="colour"):
        Datafile("local.txt", colour="red")
    with pytest.raises(TypeError, match="colour"):
        Datafile("local.txt").open("w", colour="red")
    with Datafile("local.txt", mode="w", encoding="utf-16") as (_, f):
        f.write("é")
    assert pathlib.Path("local.txt").read_bytes().decode("utf-16") == "é"


def test_package_exports_datafile():
    assert octuefs.Datafile is Datafile and "Datafile" in octuefs.__all__ and octuefs.__version__


def test_datafile_sits_on_storage_and_metadata_only():
    """STYLE.md: datafile.py builds on storage + metadata (and errors), never on the FUSE layers."""
    tree = ast.parse(pathlib.Path(datafile_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    ours = {name for name in imported if name.split(".")[0] == "octuefs"}
    assert ours <= {"octuefs.errors", "octuefs.octue.metadata", "octuefs.storage", "octuefs.storage.retry",
                    "octuefs.octue.local_metadata", "octuefs.storage.checksums", "octuefs.octue.cloud_paths",
                    "octuefs.octue.containers", "octuefs.octue.datafile_cloud", "octuefs.octue.datafile_io"}
    assert not any(name.split(".")[0] in ("google", "mfusepy", "fuse") for name in imported)
