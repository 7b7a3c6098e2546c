"""Never lose what was closed, never overwrite a change made elsewhere: each finding of issue 12
that the filesystem core can show, against the in-memory bucket (which enforces GCS's
generation and metageneration preconditions). Each test failed on the code before its fix."""

from __future__ import annotations

import json
import os
import threading

import pytest

from octuefs.errors import (
    BucketUnreachable,
    Conflict,
    InvalidArgument,
    NameTooLong,
    PermissionDenied,
    TransientError,
    UploadFailed,
)
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import HeldUpload, close_write, heal, labels, make_fs, read, stall


@pytest.fixture
def bucket():
    return FakeBucket("trust-test")


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path, op_timeout=3.0)
    yield fs
    fs.uploader.shutdown(drain=False)


# --- 1: a failed mv or rm onto a file whose upload is pending loses nothing -------------------


def test_a_failed_rename_onto_a_pending_file_keeps_its_newest_closed_version(fs, bucket):
    close_write(fs, "/A", b"a")
    assert fs.uploader.sync(timeout=10) == 0
    stall(bucket, "upload", "copy")
    close_write(fs, "/B", b"v1")
    close_write(fs, "/B", b"version two")
    with pytest.raises(BucketUnreachable):
        fs.rename("/A", "/B")
    assert read(fs, "/B") == b"version two"
    heal(bucket)
    assert fs.uploader.sync(timeout=20) == 0
    assert bucket.objects() == {"A": b"a", "B": b"version two"}
    assert read(fs, "/B") == b"version two" and fs.getattr("/B").size == 11


def test_a_failed_unlink_of_a_pending_file_keeps_its_newest_closed_version(fs, bucket):
    close_write(fs, "/B", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    stall(bucket, "upload", "delete")
    close_write(fs, "/B", b"v1")
    close_write(fs, "/B", b"version two")
    with pytest.raises(BucketUnreachable):
        fs.unlink("/B")
    heal(bucket)
    assert fs.uploader.sync(timeout=20) == 0
    assert bucket.objects() == {"B": b"version two"}
    assert read(fs, "/B") == b"version two"


def test_a_rename_onto_a_pending_file_replaces_it_once_the_bucket_answers(fs, bucket):
    close_write(fs, "/A", b"a")
    assert fs.uploader.sync(timeout=10) == 0
    stall(bucket, "upload")
    close_write(fs, "/B", b"pending")
    heal(bucket)
    fs.rename("/A", "/B")
    assert fs.uploader.sync(timeout=20) == 0
    assert bucket.objects() == {"B": b"a"}  # the held-back version was dropped, not uploaded after


def test_unlink_of_a_file_whose_lost_upload_landed_deletes_that_version(fs, bucket):
    close_write(fs, "/f", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    bucket.fail_next("upload", after=True)  # lands, answer lost ...
    stall(bucket, "upload")  # ... and every retry fails: the entry stays queued, tried
    close_write(fs, "/f", b"v1 landed")
    assert fs.uploader.sync(timeout=2) == 1
    heal(bucket)
    fs.unlink("/f")
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {}


# --- 3: a metadata change made elsewhere is never overwritten by a content upload -------------


def test_an_upload_after_another_writers_setfattr_keeps_their_labels(bucket, tmp_path):
    one = make_fs(bucket, tmp_path, "one")
    two = make_fs(bucket, tmp_path, "two")
    try:
        close_write(one, "/f.csv", b"v1")
        assert one.uploader.sync(timeout=10) == 0
        fh = one.open("/f.csv", os.O_RDWR)
        two.setxattr("/f.csv", "user.octue.labels", b"from-two")
        assert two.uploader.sync(timeout=10) == 0  # in the bucket before one's upload
        one.write(fh, b"v2 from one", 0)
        one.flush(fh)
        one.release(fh)
        assert one.uploader.sync(timeout=10) == 0
        info = bucket.stat("f.csv")
        assert bucket.objects()["f.csv"] == b"v2 from one"
        assert labels(info) == ["from-two"]  # merged: their change to labels, our change to content
    finally:
        one.uploader.shutdown(drain=False)
        two.uploader.shutdown(drain=False)


def test_a_metadata_change_on_both_sides_goes_beside_as_a_conflict_copy(bucket, tmp_path):
    one = make_fs(bucket, tmp_path, "one")
    two = make_fs(bucket, tmp_path, "two")
    try:
        close_write(one, "/f.csv", b"v1")
        assert one.uploader.sync(timeout=10) == 0
        fh = one.open("/f.csv", os.O_RDWR)
        two.setxattr("/f.csv", "user.octue.labels", b"theirs")
        assert two.uploader.sync(timeout=10) == 0  # in the bucket before one's upload
        one.write(fh, b"v2", 0)
        one.setxattr("/f.csv", "user.octue.labels", b"ours")
        one.flush(fh)
        one.release(fh)
        assert one.uploader.sync(timeout=10) == 0
        objects = bucket.objects()
        assert objects["f.csv"] == b"v1" and labels(bucket.stat("f.csv")) == ["theirs"]
        [copy] = [n for n in objects if "octuefs-conflict" in n]
        assert objects[copy] == b"v2" and labels(bucket.stat(copy)) == ["ours"]
        assert one.uploader.status()["conflicts"][-1]["saved_as"] == copy
    finally:
        one.uploader.shutdown(drain=False)
        two.uploader.shutdown(drain=False)


def test_a_setfattr_merged_into_a_pending_upload_keeps_a_change_made_elsewhere(bucket, tmp_path):
    one = make_fs(bucket, tmp_path, "one")
    try:
        close_write(one, "/f.csv", b"v1")
        assert one.uploader.sync(timeout=10) == 0
        stall(bucket, "upload")
        close_write(one, "/f.csv", b"v2")
        one.setxattr("/f.csv", "user.octue.labels", b"ours")
        tags = json.dumps({"run": 3})
        bucket.patch_metadata("f.csv", {"octue__tags": tags})  # another machine, meanwhile
        heal(bucket)
        assert one.uploader.sync(timeout=20) == 0
        info = bucket.stat("f.csv")
        assert bucket.objects()["f.csv"] == b"v2" and labels(info) == ["ours"]
        assert info.metadata["octue__tags"] == tags
    finally:
        one.uploader.shutdown(drain=False)


def test_a_setfattr_chained_after_a_running_upload_keeps_a_change_merged_into_it(bucket, tmp_path):
    one = make_fs(bucket, tmp_path, "one")
    try:
        close_write(one, "/f.csv", b"v1")
        assert one.uploader.sync(timeout=10) == 0
        held = HeldUpload(bucket)
        close_write(one, "/f.csv", b"v2")
        assert held.started.wait(10)  # v2's upload is running ...
        one.setxattr("/f.csv", "user.octue.labels", b"ours")  # ... so this is chained after it
        tags = json.dumps({"run": 3})
        bucket.patch_metadata("f.csv", {"octue__tags": tags})  # another machine, meanwhile
        held.release()
        assert one.uploader.sync(timeout=20) == 0
        info = bucket.stat("f.csv")
        assert bucket.objects()["f.csv"] == b"v2" and labels(info) == ["ours"]
        assert info.metadata["octue__tags"] == tags
    finally:
        one.uploader.shutdown(drain=False)


def test_a_setfattr_chained_after_a_running_upload_never_silently_wins_over_elsewhere(bucket, tmp_path):
    one = make_fs(bucket, tmp_path, "one")
    try:
        close_write(one, "/f.csv", b"v1")
        assert one.uploader.sync(timeout=10) == 0
        held = HeldUpload(bucket)
        close_write(one, "/f.csv", b"v2")
        assert held.started.wait(10)
        one.setxattr("/f.csv", "user.octue.tags", b'{"run": 1}')  # chained after v2's upload
        theirs = json.dumps({"run": 2})
        bucket.patch_metadata("f.csv", {"octue__tags": theirs})  # the same key, elsewhere
        held.release()
        assert one.uploader.sync(timeout=20) == 0
        objects = bucket.objects()
        assert objects["f.csv"] == b"v2" and bucket.stat("f.csv").metadata["octue__tags"] == theirs
        [copy] = [n for n in objects if "octuefs-conflict" in n]
        assert objects[copy] == b"v2" and json.loads(bucket.stat(copy).metadata["octue__tags"]) == {"run": 1}
    finally:
        one.uploader.shutdown(drain=False)


# --- 4: pending uploads belong to their bucket ------------------------------------------------


def test_pending_uploads_of_another_bucket_never_go_into_this_one(tmp_path):
    a, b = FakeBucket("bucket-a"), FakeBucket("bucket-b")
    first = make_fs(a, tmp_path)
    stall(a, "upload")
    close_write(first, "/only-for-a.csv", b"a's data")
    first.uploader.shutdown(drain=False)  # unmount --leave-pending (or a crash)

    other = make_fs(b, tmp_path)  # the same cache directory, another bucket
    assert other.uploader.sync(timeout=3) == 0
    assert b.objects() == {}
    [row] = other.uploader.status()["uploads"]
    assert row["name"] == "only-for-a.csv" and "bucket-a" in row["state"]
    other.uploader.shutdown(drain=False)

    heal(a)
    again = make_fs(a, tmp_path)
    assert again.uploader.sync(timeout=10) == 0
    assert a.objects() == {"only-for-a.csv": b"a's data"}
    again.uploader.shutdown()


# --- 5: names GCS refuses; errors that retrying alone will not mend ---------------------------


@pytest.mark.parametrize("name", ["/line\nfeed.csv", "/carriage\rreturn.csv"])
def test_names_with_cr_or_lf_are_refused_at_create(fs, bucket, name):
    with pytest.raises(InvalidArgument):
        fs.create(name)
    with pytest.raises(InvalidArgument):
        fs.mkdir(name)
    assert bucket.objects() == {}


def test_names_too_long_for_gcs_with_a_conflict_mark_are_refused(fs, bucket):
    deep = "/" + "/".join(["d" * 200] * 4) + "/" + "f" * 190  # each segment fits; the whole does not
    with pytest.raises(NameTooLong):
        fs.create(deep)
    close_write(fs, "/a", b"x")
    with pytest.raises(NameTooLong):
        fs.rename("/a", deep)
    fits = "/" + "/".join(["d" * 200] * 4) + "/" + "f" * 150
    close_write(fs, fits, b"fits")
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects()[fits[1:]] == b"fits"


def test_a_refused_upload_is_kept_reported_and_does_not_block_sync_or_unmount(fs, bucket):
    bucket.set_fault_rate(1.0, lambda: PermissionDenied("403: the mount's account may not write"),
                          operations=("upload",))
    close_write(fs, "/f.csv", b"kept")
    assert fs.uploader.sync(timeout=10) == 1  # returns: nothing waits for what failed for good
    [row] = fs.uploader.status()["uploads"]
    assert row["state"] == "failed" and "403" in row["last_error"]
    fh = fs.open("/f.csv", os.O_RDONLY)
    with pytest.raises(UploadFailed):
        fs.fsync(fh)
    fs.release(fh)
    assert read(fs, "/f.csv") == b"kept"
    assert fs.shutdown() == 1  # unmount ends, the upload stays journaled for the next mount


# --- 6: a directory rename never overwrites what is already under the destination ------------


def test_a_directory_rename_never_overwrites_a_file_made_there_meanwhile(fs, bucket):
    close_write(fs, "/A/x.csv", b"ours")
    close_write(fs, "/A/y.csv", b"ours too")
    assert fs.uploader.sync(timeout=10) == 0
    fs.mkdir("/B")
    real_copy = bucket.copy

    def copy_after_another_machine(*args, **kwargs):
        if "B/x.csv" not in bucket.objects():  # another machine, after the mount saw B empty
            bucket.upload_bytes("B/x.csv", b"made elsewhere")
        return real_copy(*args, **kwargs)

    bucket.copy = copy_after_another_machine
    with pytest.raises(Conflict):
        fs.rename("/A", "/B")
    assert bucket.objects() == {"A/x.csv": b"ours", "A/y.csv": b"ours too", "B/": b"",
                                "B/x.csv": b"made elsewhere"}


def test_a_directory_rename_leaves_parts_of_uploads_in_flight(fs, bucket):
    close_write(fs, "/A/x.csv", b"x")
    assert fs.uploader.sync(timeout=10) == 0
    bucket.upload_bytes("A/.octuefs-parts/abc/00.octuefs-part", b"part")
    fs.rename("/A", "/B")
    assert set(bucket.objects()) == {"B/", "B/x.csv", "A/.octuefs-parts/abc/00.octuefs-part"}


# --- 7: setfattr never switches an open file to another version --------------------------------


def test_setfattr_racing_a_change_elsewhere_leaves_an_open_file_on_its_version(fs, bucket):
    bucket.upload_bytes("f.csv", b"v1!")
    fh = fs.open("/f.csv", os.O_RDONLY)
    assert fs.read(fh, 3, 0) == b"v1!"
    bucket.upload_bytes("f.csv", b"version 2 is longer")  # another machine replaces it
    fs.setxattr("/f.csv", "user.octue.labels", b"checked")
    assert fs.getattr("/f.csv").size == 3
    assert fs.read(fh, 100, 0) == b"v1!"
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0
    assert labels(bucket.stat("f.csv")) == ["checked"]
    assert bucket.objects()["f.csv"] == b"version 2 is longer"


# --- 8: a close racing a rename of the same file ------------------------------------------------


def test_a_close_racing_a_rename_lands_under_the_new_name(fs, bucket):
    close_write(fs, "/app.log", b"line 1\n")
    assert fs.uploader.sync(timeout=10) == 0
    fh = fs.open("/app.log", os.O_WRONLY)
    fs.write(fh, b"line 1\nline 2\n", 0)
    copying = threading.Event()
    go_on = threading.Event()
    real_copy = bucket.copy

    def slow_copy(*args, **kwargs):
        copying.set()
        assert go_on.wait(10)
        return real_copy(*args, **kwargs)

    bucket.copy = slow_copy
    renamer = threading.Thread(target=fs.rename, args=("/app.log", "/app.log.1"))
    fs.flush(fh)  # the logger's close, before logrotate's mv: sealed under app.log
    renamer.start()
    assert copying.wait(10)
    fs.write(fh, b"line 1\nline 2\nline 3\n", 0)
    closer = threading.Thread(target=fs.flush, args=(fh,))  # ... and another close during the mv
    closer.start()
    go_on.set()
    renamer.join(10)
    closer.join(10)
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"app.log.1": b"line 1\nline 2\nline 3\n"}
    assert read(fs, "/app.log.1") == b"line 1\nline 2\nline 3\n"
    fs.setxattr("/app.log.1", "user.octue.labels", b"rotated")
    assert fs.uploader.sync(timeout=10) == 0
    assert labels(bucket.stat("app.log.1")) == ["rotated"]


# --- 9: the mount never conflicts with itself after a lost answer ------------------------------


def test_a_newer_close_after_a_lost_answer_replaces_the_landed_version(fs, bucket):
    close_write(fs, "/f.csv", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    bucket.fail_next("upload", after=True)  # v1 lands; its answer is lost
    stall(bucket, "upload")
    close_write(fs, "/f.csv", b"v1")
    assert fs.uploader.sync(timeout=2) == 1
    close_write(fs, "/f.csv", b"v2 newest")  # replaces the queued v1, keeping v0's precondition
    heal(bucket)
    assert fs.uploader.sync(timeout=10) == 0
    objects = bucket.objects()
    assert objects == {"f.csv": b"v2 newest"}, objects
    assert fs.uploader.status()["conflicts"] == []


def test_a_setfattr_after_a_lost_answer_does_not_conflict(fs, bucket):
    close_write(fs, "/f.csv", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    bucket.fail_next("upload", after=True)
    stall(bucket, "upload")
    close_write(fs, "/f.csv", b"v1")
    assert fs.uploader.sync(timeout=2) == 1
    fs.setxattr("/f.csv", "user.octue.labels", b"late")  # amends the queued entry's metadata
    heal(bucket)
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"f.csv": b"v1"}
    assert labels(bucket.stat("f.csv")) == ["late"]


# --- 10: recovery order and set-aside records ---------------------------------------------------


def test_recovery_follows_queueing_order_even_when_the_clock_stepped_back(bucket, tmp_path, monkeypatch):
    first = make_fs(bucket, tmp_path)
    stall(bucket, "upload")
    close_write(first, "/f.csv", b"old")
    entry = first.uploader.snapshot()[0]
    close_write(first, "/g.csv", b"x")
    first.uploader.shutdown(drain=False)
    # A second close of f.csv, sealed while the clock read earlier than the first (a step back),
    # and journaled with its predecessor still there (a crash before the older one was dropped).
    journal = first.uploader.journal
    import dataclasses

    newer = dataclasses.replace(entry, id="00000000000000000001-000000-aaaaaa", seq=entry.seq + 5,
                                replaces=entry.id, done=threading.Event())
    with open(journal.data_path(entry.id), "rb") as f:
        old_bytes = f.read()
    staging = tmp_path / "newer"
    staging.write_bytes(b"new")
    newer.size = 3
    journal.commit(newer, str(staging))
    assert old_bytes == b"old"
    heal(bucket)
    second = make_fs(bucket, tmp_path)
    assert second.uploader.sync(timeout=10) == 0
    assert bucket.objects()["f.csv"] == b"new"
    second.uploader.shutdown()


def test_an_unusable_record_is_kept_beside_its_data_across_mounts(bucket, tmp_path):
    first = make_fs(bucket, tmp_path)
    stall(bucket, "upload")
    close_write(first, "/f.csv", b"precious")
    [entry] = first.uploader.snapshot()
    first.uploader.shutdown(drain=False)
    journal = first.uploader.journal
    record = os.path.join(journal.journal_dir, entry.id + ".json")
    journal._write_json(entry)  # the record as a file of its own ...
    with open(record, "w") as f:
        f.write("{not json")  # ... torn
    heal(bucket)
    for _ in range(2):  # set aside by one mount, still there after the next
        fs = make_fs(bucket, tmp_path)
        assert fs.uploader.sync(timeout=5) == 0
        fs.uploader.shutdown()
    lost = tmp_path / "cache" / "lost+found"
    assert (lost / f"{entry.id}.data").read_bytes() == b"precious"
    assert (lost / f"{entry.id}.record").read_text() == "{not json"
    assert bucket.objects() == {}


def test_an_upload_that_landed_corrupt_is_replaced_not_taken_for_a_conflict(fs, bucket):
    from octuefs.storage.base import ChecksumMismatch

    close_write(fs, "/big.bin", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    real_upload = bucket.upload_file
    calls = []

    def corrupting(name, path, metadata, *args, **kwargs):  # a compose that stored other bytes
        calls.append(name)
        if len(calls) == 1:
            bad = bucket.upload_bytes(name, b"garbage", metadata, kwargs.get("if_generation_match"))
            raise ChecksumMismatch(f"{name}: composed with another CRC32C", generation=bad.generation)
        return real_upload(name, path, metadata, *args, **kwargs)

    bucket.upload_file = corrupting
    close_write(fs, "/big.bin", b"the real bytes")
    assert fs.uploader.sync(timeout=20) == 0
    assert bucket.objects() == {"big.bin": b"the real bytes"}
    assert fs.uploader.status()["conflicts"] == []


def test_a_conflict_copy_whose_answer_was_lost_is_made_once_and_reported_once(fs, bucket):
    close_write(fs, "/f.csv", b"v1")
    assert fs.uploader.sync(timeout=10) == 0
    fh = fs.open("/f.csv", os.O_RDWR)
    bucket.upload_bytes("f.csv", b"theirs")  # another machine replaces it meanwhile
    real_upload = bucket.upload_file
    lost = []

    def lose_the_copys_answer(name, *args, **kwargs):
        info = real_upload(name, *args, **kwargs)
        if "octuefs-conflict" in name and not lost:
            lost.append(name)
            raise TransientError("the answer was lost")  # (after retries ran out)
        return info

    bucket.upload_file = lose_the_copys_answer
    fs.write(fh, b"ours", 0)
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=20) == 0
    objects = bucket.objects()
    copies = [n for n in objects if "octuefs-conflict" in n]
    assert copies == lost and objects[copies[0]] == b"ours" and objects["f.csv"] == b"theirs"
    assert [c["saved_as"] for c in fs.uploader.status()["conflicts"]] == copies


# --- tags merge tag by tag: one octue__tags key, many tags ------------------------------------


def test_a_version_with_one_tag_merges_with_another_tag_set_elsewhere(fs, bucket):
    """A version closed here with tag t3 waits to go up while another machine (or this mount's
    own setfattr, racing it) sets tag t4: both tags survive, and no conflict copy is made."""
    close_write(fs, "/f.csv", b"v1")
    assert fs.uploader.sync(timeout=10) == 0
    held = HeldUpload(bucket)
    fh = fs.open("/f.csv", os.O_RDWR)
    fs.write(fh, b"v2", 0)
    fs.setxattr("/f.csv", "user.octue.tags.t3", b"99")
    fs.flush(fh)
    fs.release(fh)
    assert held.started.wait(10)
    FakeBucket(server=bucket.server).patch_metadata("f.csv", {"octue__tags": json.dumps({"t4": 57})})
    held.release()
    assert fs.uploader.sync(timeout=10) == 0
    info = bucket.stat("f.csv")
    assert bucket.objects() == {"f.csv": b"v2"}, "a conflict copy was made"
    assert json.loads(info.metadata["octue__tags"]) == {"t3": 99, "t4": 57}
