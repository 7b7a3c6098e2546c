"""A directory's attributes are its dataset's (DIR/.octue, the SDK's record), on the in-memory
bucket: what they show, what setfattr writes, what it costs, and the race with another writer."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

import pytest

from octuefs.errors import (
    AttributeExists,
    AttributeNotSupported,
    Busy,
    Conflict,
    InvalidArgument,
    InvalidMetadata,
    NoSuchAttribute,
    ReadOnlyAttribute,
)
from octuefs.octue.dataset_record import decode_dataset_record, encode_dataset_record
from octuefs.storage.fake import FakeBucket

from .corekit import bucket, fs, make_fs  # noqa: F401 (bucket, fs: fixtures)

ID = "c59e22eb-fea9-5c80-80bb-845be985c70e"
SDK_RECORD = (b'{"dataset": {"id": "c59e22eb-fea9-5c80-80bb-845be985c70e", "name": "example-dataset", '
              b'"tags": {"project": "octuefs", "version": 2}, "labels": ["dataset", "example"], '
              b'"path": "gs://bk/wind"}}')


def stored(bucket, name="wind/.octue"):
    return json.loads(bucket.objects()[name])["dataset"]


def dump(fs, path):
    return {n: fs.getxattr(path, n) for n in fs.listxattr(path)}


def test_a_directory_shows_the_record_the_sdk_wrote(fs, bucket):
    bucket.upload_bytes("wind/a.csv", b"1")
    bucket.upload_bytes("wind/.octue", SDK_RECORD, {}, content_type="text/plain")
    assert dump(fs, "/wind") == {
        "user.octue.id": ID.encode(), "user.octue.name": b"example-dataset",
        "user.octue.tags": b'{"project": "octuefs", "version": 2}',
        "user.octue.tags.project": b"octuefs", "user.octue.tags.version": b"2",
        "user.octue.labels": b"dataset example"}
    with pytest.raises(NoSuchAttribute):
        fs.getxattr("/wind", "user.octue.timestamp")


def test_a_directory_without_a_record_has_no_attributes(fs, bucket):
    bucket.upload_bytes("plain/a.csv", b"1")
    assert fs.listxattr("/plain") == []
    with pytest.raises(NoSuchAttribute):
        fs.getxattr("/plain", "user.octue.name")
    with pytest.raises(NoSuchAttribute):
        fs.removexattr("/plain", "user.octue.labels")
    assert "plain/.octue" not in bucket.objects()


def test_setfattr_on_a_directory_writes_a_new_record_in_the_sdks_layout(fs, bucket):
    bucket.upload_bytes("runs/r1/a.csv", b"1")
    fs.setxattr("/runs/r1", "user.octue.labels", b"Raw checked")
    info = bucket.stat("runs/r1/.octue")
    assert dict(info.metadata) == {} and info.content_type == "text/plain"
    record = stored(bucket, "runs/r1/.octue")
    assert str(uuid.UUID(record["id"])) == record["id"]
    assert bucket.objects()["runs/r1/.octue"] == encode_dataset_record(record["id"], "r1", {}, ["checked", "raw"],
                                                                      "gs://bk/runs/r1")
    assert list(record) == ["id", "name", "tags", "labels", "path"]  # the SDK's own order
    fs.setxattr("/runs/r1", "user.octue.tags.height_m", b"80.5")
    fs.setxattr("/runs/r1", "user.octue.name", b"first run")
    record2 = stored(bucket, "runs/r1/.octue")
    assert (record2["id"], record2["name"], record2["tags"], record2["labels"]) == (
        record["id"], "first run", {"height_m": 80.5}, ["checked", "raw"])
    assert fs.getxattr("/runs/r1", "user.octue.tags.height_m") == b"80.5"
    fs.removexattr("/runs/r1", "user.octue.name")  # back to the directory's name
    assert stored(bucket, "runs/r1/.octue")["name"] == "r1"


def test_the_root_of_a_mount_is_a_dataset_too(fs, bucket):
    bucket.upload_bytes("a.csv", b"1")
    fs.setxattr("/", "user.octue.tags", b'{"site": "north"}')
    record = stored(bucket, ".octue")
    assert (record["name"], record["path"], record["tags"]) == ("bk", "gs://bk", {"site": "north"})


def test_a_rewrite_keeps_the_id_and_other_fields_and_same_values_send_nothing(fs, bucket):
    bucket.upload_bytes("wind/.octue", SDK_RECORD, {}, content_type="text/plain")
    before = bucket.stat("wind/.octue")
    bucket.reset_calls()
    fs.setxattr("/wind", "user.octue.labels", b"dataset example")  # what it shows, set back
    fs.setxattr("/wind", "user.octue.id", ID.encode())  # a read-only attribute set to its value (cp)
    assert bucket.stat("wind/.octue").generation == before.generation and bucket.calls["upload"] == 0
    fs.setxattr("/wind", "user.octue.labels", b"dataset example more")
    assert stored(bucket) == {"id": ID, "name": "example-dataset", "tags": {"project": "octuefs", "version": 2},
                              "labels": ["dataset", "example", "more"], "path": "gs://bk/wind"}


@pytest.mark.parametrize("name, value, error", [
    ("user.octue.labels", b"not_a_label!", InvalidMetadata),
    ("user.octue.tags", b"[1, 2]", InvalidMetadata),
    ("user.octue.tags.Bad-Name", b"1", InvalidMetadata),
    ("user.octue.name", b"", InvalidMetadata),
    ("user.octue.name", b"tab\there", InvalidMetadata),
    ("user.octue.timestamp", b"0", AttributeNotSupported),
    ("user.octue.cluster", b"1", AttributeNotSupported),
    ("user.myown", b"x", AttributeNotSupported),
])
def test_bad_values_on_a_directory_are_refused_and_change_nothing(fs, bucket, name, value, error, caplog):
    bucket.upload_bytes("wind/.octue", SDK_RECORD, {}, content_type="text/plain")
    bucket.upload_bytes("empty/a.csv", b"1")
    for path in ("/wind", "/empty"):
        with pytest.raises(error):
            fs.setxattr(path, name, value)
    assert bucket.objects()["wind/.octue"] == SDK_RECORD and "empty/.octue" not in bucket.objects()


def test_xattr_create_and_replace_flags_on_a_directory(fs, bucket):
    bucket.upload_bytes("wind/.octue", SDK_RECORD, {}, content_type="text/plain")
    with pytest.raises(AttributeExists):
        fs.setxattr("/wind", "user.octue.tags.project", b"x", 1)
    with pytest.raises(NoSuchAttribute):
        fs.setxattr("/wind", "user.octue.tags.other", b"x", 2)
    with pytest.raises(ReadOnlyAttribute):
        fs.removexattr("/wind", "user.octue.id")
    assert bucket.objects()["wind/.octue"] == SDK_RECORD


def test_a_record_that_is_not_the_sdks_json_is_shown_as_none_and_never_overwritten(fs, bucket, caplog):
    bucket.upload_bytes("notes/.octue", b"my own notes, not JSON")
    with caplog.at_level(logging.WARNING, logger="octuefs"):
        assert fs.listxattr("/notes") == []
    assert any("not a dataset record" in r.getMessage() for r in caplog.records)
    with pytest.raises(InvalidArgument):
        fs.setxattr("/notes", "user.octue.labels", b"a")
    assert bucket.objects()["notes/.octue"] == b"my own notes, not JSON"


def test_getfattr_d_over_many_unchanged_directories_reads_each_record_once(fs, bucket):
    for i in range(5):
        bucket.upload_bytes(f"d{i}/.octue", encode_dataset_record(str(uuid.uuid4()), f"d{i}", {"n": i}, ["x"],
                                                                  f"gs://bk/d{i}"))
    bucket.reset_calls()
    for i in range(5):
        assert dump(fs, f"/d{i}")["user.octue.tags.n"] == str(i).encode()
    assert bucket.calls["read"] + bucket.calls["download"] == 5  # one read per record, not one per attribute
    assert bucket.calls["stat"] == 0  # the records' generations come from the directories' listings
    bucket.reset_calls()
    for _ in range(2):
        for i in range(5):
            assert dump(fs, f"/d{i}")["user.octue.tags.n"] == str(i).encode()
    assert sum(bucket.calls.values()) == 0  # nothing changed, nothing asked (within --list-ttl)


def test_a_record_changed_elsewhere_shows_once_the_listing_is_stale(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path, stat_ttl=0.3, list_ttl=0.3, negative_ttl=0.3)
    try:
        bucket.upload_bytes("wind/.octue", SDK_RECORD)
        assert fs.getxattr("/wind", "user.octue.labels") == b"dataset example"
        elsewhere = FakeBucket(server=bucket.server)
        elsewhere.upload_bytes("wind/.octue", encode_dataset_record(ID, "x", {}, ["changed"], "gs://bk/wind"))
        time.sleep(0.4)
        assert fs.getxattr("/wind", "user.octue.labels") == b"changed"
    finally:
        fs.shutdown()


def _rewrite_first(bucket, times: int, label_of):
    """The next ``times`` uploads of a record through ``bucket`` are each preceded by another
    client's rewrite of that record (a label ``label_of(n)`` added), as if it landed between this
    mount's read and its write."""
    elsewhere = FakeBucket(server=bucket.server)
    real = bucket.upload_bytes
    done = []

    def racing(name, data, *args, **kwargs):
        if name.endswith(".octue") and len(done) < times:
            current = elsewhere.stat(name)
            theirs = decode_dataset_record(elsewhere.read_range(name, 0, current.size))
            elsewhere.upload_bytes(name, encode_dataset_record(theirs.id, theirs.name, dict(theirs.tags),
                                                               set(theirs.labels) | {label_of(len(done))},
                                                               theirs.path), {}, if_generation_match=current.generation)
            done.append(name)
        return real(name, data, *args, **kwargs)

    bucket.upload_bytes = racing
    return done


def test_a_rewrite_by_another_client_between_read_and_write_is_not_overwritten(fs, bucket):
    bucket.upload_bytes("wind/.octue", SDK_RECORD, {}, content_type="text/plain")
    assert fs.getxattr("/wind", "user.octue.labels") == b"dataset example"  # read (and cached) here
    raced = _rewrite_first(bucket, 1, lambda n: "theirs")
    fs.setxattr("/wind", "user.octue.tags.site", b"north")
    assert raced
    record = stored(bucket)
    assert record["labels"] == ["dataset", "example", "theirs"]  # their change kept
    assert record["tags"] == {"project": "octuefs", "version": 2, "site": "north"}  # ours re-applied
    assert fs.getxattr("/wind", "user.octue.labels") == b"dataset example theirs"


def test_a_record_created_elsewhere_before_ours_is_taken_not_replaced(fs, bucket):
    bucket.upload_bytes("new/a.csv", b"1")
    assert fs.listxattr("/new") == []  # no record, as this mount last saw it
    elsewhere = FakeBucket(server=bucket.server)
    elsewhere.upload_bytes("new/.octue", SDK_RECORD.replace(b"wind", b"new"))
    fs.setxattr("/new", "user.octue.labels", b"mine")
    record = stored(bucket, "new/.octue")
    assert (record["id"], record["name"], record["labels"]) == (ID, "example-dataset", ["mine"])


def test_a_record_that_keeps_changing_elsewhere_fails_with_eio_and_keeps_their_changes(fs, bucket, caplog):
    bucket.upload_bytes("wind/.octue", SDK_RECORD, {}, content_type="text/plain")
    _rewrite_first(bucket, 100, lambda n: f"theirs-{n}")
    with caplog.at_level(logging.WARNING, logger="octuefs"), pytest.raises(Conflict):
        fs.setxattr("/wind", "user.octue.tags.site", b"north")
    record = stored(bucket)
    assert "site" not in record["tags"] and {f"theirs-{n}" for n in range(5)} <= set(record["labels"])
    assert any("kept changing" in r.getMessage() for r in caplog.records)


def test_a_record_open_for_writing_here_is_busy(fs, bucket):
    bucket.upload_bytes("wind/.octue", SDK_RECORD)
    fh = fs.open("/wind/.octue", os.O_WRONLY)
    fs.write(fh, b"{}", 0)
    try:
        with pytest.raises(Busy):
            fs.setxattr("/wind", "user.octue.labels", b"x")
    finally:
        fs.release(fh)


def test_a_directory_without_a_record_takes_the_id_cp_sets_on_it(fs, bucket):
    bucket.upload_bytes("copy/a.csv", b"1")
    bucket.upload_bytes("other/a.csv", b"1")
    fs.setxattr("/copy", "user.octue.id", ID.encode())  # cp -a of a dataset's directory
    assert stored(bucket, "copy/.octue")["id"] == ID and stored(bucket, "copy/.octue")["name"] == "copy"
    with pytest.raises(ReadOnlyAttribute):  # it has one now: read-only
        fs.setxattr("/copy", "user.octue.id", b"2464c6f0-0070-50ca-8a9b-ba1af5456601")
    with pytest.raises(ReadOnlyAttribute):
        fs.setxattr("/other", "user.octue.id", b"not-a-uuid")
    assert "other/.octue" not in bucket.objects()


def test_a_record_open_for_reading_here_shows_the_change_made_through_the_directory(fs, bucket):
    bucket.upload_bytes("wind/.octue", SDK_RECORD)
    fh = fs.open("/wind/.octue", os.O_RDONLY)
    try:
        assert fs.read(fh, 1 << 20, 0) == SDK_RECORD
        fs.setxattr("/wind", "user.octue.labels", b"new")
        assert fs.getxattr("/wind", "user.octue.labels") == b"new"
        assert fs.read(fh, 1 << 20, 0) == SDK_RECORD  # the open file stays on the version it opened
    finally:
        fs.release(fh)
    assert stored(bucket)["labels"] == ["new"]


def test_malformed_tags_are_kept_refused_to_merge_into_and_replaced_only_whole(fs, bucket, caplog):
    """Tags the validator refuses read as none; a change of another field keeps them as stored
    (test_review_dirx), one tag set into them is EINVAL with a WARNING saying why, and setting
    user.octue.tags whole replaces them (the user sets every tag the dataset is to have)."""
    stored = {"dataset": {"id": ID, "name": "wind", "tags": {"Site": "north"}, "labels": [], "path": "gs://bk/wind"}}
    bucket.upload_bytes("wind/.octue", json.dumps(stored).encode(), {}, content_type="text/plain")
    with caplog.at_level(logging.WARNING, logger="octuefs"), pytest.raises(InvalidMetadata):
        fs.setxattr("/wind", "user.octue.tags.height_m", b"80")
    assert any("malformed" in r.getMessage() and "user.octue.tags.height_m" in r.getMessage() for r in caplog.records)
    assert json.loads(bucket.objects()["wind/.octue"]) == stored
    fs.setxattr("/wind", "user.octue.tags", b'{"site": "north"}')
    assert json.loads(bucket.objects()["wind/.octue"])["dataset"]["tags"] == {"site": "north"}


def test_xattr_replace_of_the_name_on_a_directory_without_a_record_is_enodata(fs, bucket):
    bucket.upload_bytes("plain/a.csv", b"1")
    with pytest.raises(NoSuchAttribute):
        fs.setxattr("/plain", "user.octue.name", b"mine", 2)  # XATTR_REPLACE: getxattr says ENODATA too
    assert "plain/.octue" not in bucket.objects()
    fs.setxattr("/plain", "user.octue.name", b"mine")
    with pytest.raises(AttributeExists):  # now it has one
        fs.setxattr("/plain", "user.octue.name", b"other", 1)


def test_a_record_made_in_a_subdirectory_during_its_parents_rename_moves_with_it(fs, bucket):
    """A setfattr on wind/sub (no record yet) landing between the rename's copy and its deletes
    makes wind/sub/.octue, which the rename did not list: it is moved too, not left behind."""
    import threading

    bucket.upload_bytes("wind/sub/a.csv", b"1")
    real = fs.dir_renames._copy_all
    done = []

    def copy_then_race(*args, **kwargs):
        moved = real(*args, **kwargs)
        t = threading.Thread(target=lambda: done.append(fs.setxattr("/wind/sub", "user.octue.labels", b"x")))
        t.start()
        t.join(10)
        return moved

    fs.dir_renames._copy_all = copy_then_race
    fs.rename("/wind", "/wind2")
    assert done == [None]
    assert not [n for n in bucket.objects() if n.startswith("wind/")]
    assert json.loads(bucket.objects()["wind2/sub/.octue"])["dataset"]["labels"] == ["x"]


def test_a_setfattr_waiting_for_a_rename_of_its_directory_answers_enoent_after_it(fs, bucket):
    """One that reaches the record's lock only after the rename moved everything finds the
    directory gone (as on a local disk) and writes nothing there."""
    import threading

    bucket.upload_bytes("wind/a.csv", b"1")
    bucket.upload_bytes("wind/.octue", encode_dataset_record(ID, "wind", {}, ["v1"], "gs://bk/wind"))
    real_delete = bucket.delete
    errors, started = [], threading.Event()

    def setfattr():
        started.set()
        try:
            fs.setxattr("/wind", "user.octue.labels", b"v2")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=setfattr)

    def delete(name, *args, **kwargs):
        if not started.is_set():  # the rename holds the record's lock: the setfattr waits for it
            t.start()
            started.wait(5)
            time.sleep(0.2)
        return real_delete(name, *args, **kwargs)

    fs.bucket.delete = delete
    try:
        fs.rename("/wind", "/wind2")
    finally:
        fs.bucket.delete = real_delete
    t.join(10)
    assert [type(e).__name__ for e in errors] == ["FileNotFound"]
    assert not [n for n in bucket.objects() if n.startswith("wind/")]
    assert json.loads(bucket.objects()["wind2/.octue"])["dataset"]["labels"] == ["v1"]


def test_getfattr_of_a_directory_whose_record_is_being_written_warns_not_on_every_call(fs, bucket, caplog):
    """A half-written DIR/.octue open for writing is expected: said at DEBUG, not a WARNING per call."""
    bucket.upload_bytes("wind/a.csv", b"1")
    fh = fs.create("/wind/.octue", os.O_WRONLY | os.O_CREAT)
    try:
        fs.write(fh, b'{"dataset": {"id": ', 0)
        with caplog.at_level(logging.DEBUG, logger="octuefs"):
            for _ in range(5):
                assert fs.listxattr("/wind") == []
        said = [r for r in caplog.records if "not a dataset record" in r.getMessage()]
        assert said and all(r.levelno == logging.DEBUG for r in said)
    finally:
        fs.release(fh)


def test_a_malformed_name_left_alone_is_kept_and_set_whole_replaces_it(fs, bucket):
    stored = {"dataset": {"id": ID, "name": 5, "tags": {}, "labels": [], "path": "gs://bk/wind"}}
    bucket.upload_bytes("wind/.octue", json.dumps(stored).encode(), {}, content_type="text/plain")
    assert fs.getxattr("/wind", "user.octue.name") == b"wind"  # read as none: the directory's
    fs.setxattr("/wind", "user.octue.labels", b"x")
    assert json.loads(bucket.objects()["wind/.octue"])["dataset"]["name"] == 5
    fs.setxattr("/wind", "user.octue.name", b"wind")  # set whole, even to what it read as
    assert json.loads(bucket.objects()["wind/.octue"])["dataset"]["name"] == "wind"
