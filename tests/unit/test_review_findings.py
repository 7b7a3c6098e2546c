"""A fresh-eyes review of the issue-12 fixes (R1-R10): ways the core still lost a closed file,
overwrote a change made elsewhere silently, wedged, or showed bytes no one wrote. Each test failed
on the code as reviewed and passes with its fix (R8, a dropped upload that lands after the client
gave up, is watched for and removed again: late.LateLandings)."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from octuefs.errors import PermissionDenied, TransientError
from octuefs.storage.fake import FakeBucket
from tests.unit import corekit
from tests.unit.corekit import close_write, heal, labels, read, stall, wait_until


@pytest.fixture
def bucket():
    return FakeBucket("review-test")


def make_fs(bucket, tmp_path, cache="cache", **overrides):
    overrides.setdefault("op_timeout", 3.0)
    return corekit.make_fs(bucket, tmp_path, cache, **overrides)


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    yield fs
    fs.uploader.shutdown(drain=False)


# --- R1: a rename's delete ignores a metadata change made between its copy and its delete ------


def test_a_metadata_change_made_elsewhere_during_a_rename_is_not_lost(fs, bucket, tmp_path):
    other = FakeBucket(server=bucket.server)  # another machine, same bucket
    close_write(fs, "/a.csv", b"data")
    assert fs.uploader.sync(timeout=10) == 0
    real_delete = bucket.delete

    def delete_after_their_patch(name, *args, **kwargs):
        if name == "a.csv":  # the copy to b.csv is made; before the delete, they label a.csv
            other.patch_metadata("a.csv", {"octue__labels": json.dumps({"items": ["theirs"]})})
        return real_delete(name, *args, **kwargs)

    bucket.delete = delete_after_their_patch
    try:
        fs.rename("/a.csv", "/b.csv")
    except Exception:
        pass  # refusing the rename (EIO) would be a fine answer too
    objects = bucket.objects()
    survivors = [bucket.stat(n) for n in objects if "octuefs-conflict" not in n]
    # Their change lives on somewhere: on a.csv (rename refused) or on b.csv.
    assert any(i.metadata.get("octue__labels") and labels(i) == ["theirs"] for i in survivors), \
        {i.name: i.metadata for i in survivors}


# --- R2: the merged change elsewhere is reverted by the next close of a file still open --------


def test_a_change_elsewhere_merged_into_an_upload_survives_the_next_close_of_the_open_file(fs, bucket):
    other = FakeBucket(server=bucket.server)
    close_write(fs, "/log.csv", b"line 1\n")
    assert fs.uploader.sync(timeout=10) == 0
    fh = fs.open("/log.csv", os.O_RDWR)
    tags = json.dumps({"run": 7})
    other.patch_metadata("log.csv", {"octue__tags": tags})  # another machine tags it meanwhile

    real_upload = bucket.upload_file
    calls, gate, blocked = [], threading.Event(), threading.Event()

    def gated(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # the retry after the merge: hold it while the writer writes on
            blocked.set()
            assert gate.wait(10)
        return real_upload(*args, **kwargs)

    bucket.upload_file = gated
    fs.write(fh, b"line 1\nline 2\n", 0)
    fs.flush(fh)  # 412 (metageneration): their tags merged in, retried ...
    assert blocked.wait(10)
    fs.write(fh, b"line 1\nline 2\nline 3\n", 0)  # ... while the logger writes on (dirty)
    gate.set()
    assert wait_until(lambda: bucket.stat("log.csv").metadata.get("octue__tags") == tags)  # merged, landed
    fs.flush(fh)  # the next close of the same open file
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0
    info = bucket.stat("log.csv")
    assert bucket.objects()["log.csv"] == b"line 1\nline 2\nline 3\n"
    assert info.metadata.get("octue__tags") == tags, info.metadata  # their tags, silently dropped


# --- R3: a rename (or unlink) holding a node whose withheld versions were dropped spins forever --


def test_a_rename_racing_an_unlink_of_a_pending_file_ends(fs, bucket):
    close_write(fs, "/B", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    stall(bucket, "upload")
    close_write(fs, "/B", b"v1 pending")
    node = fs.files.node("B")
    real_delete = bucket.delete
    deleting, go_on = threading.Event(), threading.Event()

    def slow_delete(*args, **kwargs):
        deleting.set()
        assert go_on.wait(10)
        return real_delete(*args, **kwargs)

    bucket.delete = slow_delete
    errors = []

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as exc:  # an error is a fine answer for the loser; a hang is not
            errors.append(exc)

    unlinker = threading.Thread(target=run, args=(fs.unlink, "/B"), daemon=True)
    unlinker.start()
    assert deleting.wait(10)
    renamer = threading.Thread(target=run, args=(fs.rename, "/B", "/C"), daemon=True)
    renamer.start()
    assert wait_until(lambda: node.moving)  # the renamer resolved B and waits for the unlink
    time.sleep(0.2)
    go_on.set()
    unlinker.join(10)
    renamer.join(5)
    hung = renamer.is_alive()
    if hung:  # let the spinning thread out, so that it does not eat a core for the rest of the run
        with node.lock:
            node.pending = []
        renamer.join(10)
    heal(bucket)
    assert not hung, "rename never returned"


# --- R4: a version chained after one that failed for good wedges sync and unmount -------------


def test_a_version_chained_after_a_refused_upload_does_not_block_unmount(fs, bucket):
    close_write(fs, "/f.csv", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    real_upload = bucket.upload_file
    running, refuse = threading.Event(), threading.Event()

    def refused(*args, **kwargs):
        running.set()
        assert refuse.wait(10)
        raise PermissionDenied("403: the mount's account may no longer write")

    bucket.upload_file = refused
    close_write(fs, "/f.csv", b"v1")
    assert running.wait(10)  # v1's upload is running ...
    close_write(fs, "/f.csv", b"v2")  # ... so v2 is chained after it
    refuse.set()
    assert wait_until(lambda: any(e.failed for e in fs.uploader.snapshot()))
    start = time.monotonic()
    left = fs.uploader.sync(timeout=5)
    took = time.monotonic() - start
    assert left == 2
    assert took < 4, f"sync waited {took:.1f}s for a version that can never run (unmount would wait forever)"


def test_sync_tries_a_refused_upload_again_once_the_cause_is_mended(fs, bucket):
    """The user grants the permission and runs `octuefs sync`: it goes up now, not in 5 minutes."""
    real_upload = bucket.upload_file
    refusing = [True]

    def maybe_refused(*args, **kwargs):
        if refusing[0]:
            raise PermissionDenied("403: the mount's account may not write")
        return real_upload(*args, **kwargs)

    bucket.upload_file = maybe_refused
    close_write(fs, "/f.csv", b"v1")
    assert wait_until(lambda: any(e.failed for e in fs.uploader.snapshot()))
    assert fs.uploader.sync(timeout=5) == 1  # still refused: tried once more, not waited for
    assert [row["state"] for row in fs.uploader.status()["uploads"]] == ["failed"]
    refusing[0] = False  # the permission is granted
    start = time.monotonic()
    assert fs.uploader.sync(timeout=5) == 0
    assert time.monotonic() - start < 4
    assert bucket.read_range("f.csv", 0, 100) == b"v1"


# --- R5: unlink of a file recovered from the journal deletes nothing in the bucket -------------


def test_unlink_of_a_pending_file_recovered_after_a_crash_deletes_it(bucket, tmp_path):
    first = make_fs(bucket, tmp_path)
    close_write(first, "/f.csv", b"v0")
    assert first.uploader.sync(timeout=10) == 0
    stall(bucket, "upload")
    close_write(first, "/f.csv", b"v1 pending at the crash")
    first.uploader.shutdown(drain=False)  # kill -9

    second = make_fs(bucket, tmp_path)  # same cache directory: v1 is recovered, still stalled
    try:
        second.unlink("/f.csv")
        heal(bucket)
        assert second.uploader.sync(timeout=10) == 0
        assert "f.csv" not in bucket.objects(), bucket.objects()  # rm said yes, v0 is still there
    finally:
        second.uploader.shutdown(drain=False)


def test_rename_onto_a_pending_file_recovered_after_a_crash_replaces_it(bucket, tmp_path):
    first = make_fs(bucket, tmp_path)
    close_write(first, "/a.csv", b"a")
    close_write(first, "/f.csv", b"v0")
    assert first.uploader.sync(timeout=10) == 0
    stall(bucket, "upload")
    close_write(first, "/f.csv", b"v1 pending at the crash")
    first.uploader.shutdown(drain=False)  # kill -9

    second = make_fs(bucket, tmp_path)
    try:
        second.rename("/a.csv", "/f.csv")
        heal(bucket)
        assert second.uploader.sync(timeout=10) == 0
        assert bucket.objects() == {"f.csv": b"a"}
    finally:
        heal(bucket)
        second.uploader.shutdown(drain=False)


# --- R6: a record from the previous release overwrites a metadata change made elsewhere --------


def test_a_legacy_record_does_not_overwrite_a_metadata_change_made_elsewhere(bucket, tmp_path):
    first = make_fs(bucket, tmp_path)
    close_write(first, "/f.csv", b"v0")
    assert first.uploader.sync(timeout=10) == 0
    stall(bucket, "upload")
    close_write(first, "/f.csv", b"v1 from the old release")
    [entry] = first.uploader.snapshot()
    first.uploader.shutdown(drain=False)
    # Rewrite its record as the previous release wrote it: none of the new fields.
    journal = first.uploader.journal
    legacy = {k: v for k, v in entry.record().items()
              if k not in ("bucket", "seq", "base_metageneration", "base_metadata", "tried", "conflict_name",
                           "conflict_id")}
    os.removexattr(journal.data_path(entry.id), "user.octuefs.upload." + entry.id) \
        if journal.records_in_xattrs else None
    with open(os.path.join(journal.journal_dir, entry.id + ".json"), "w") as f:
        json.dump(legacy, f)
    heal(bucket)
    other = FakeBucket(server=bucket.server)
    other.patch_metadata("f.csv", {"octue__labels": json.dumps({"items": ["theirs"]})})  # meanwhile, elsewhere

    second = make_fs(bucket, tmp_path)
    try:
        assert second.uploader.sync(timeout=10) == 0
        objects = bucket.objects()
        kept = [bucket.stat(n) for n in objects]
        assert any(i.metadata.get("octue__labels") and labels(i) == ["theirs"] for i in kept), \
            {i.name: i.metadata for i in kept}
    finally:
        second.uploader.shutdown(drain=False)


# --- R7: an open file whose version went beside falls back to the old version's bytes ---------


def test_an_open_file_whose_version_went_beside_keeps_showing_and_extending_what_it_wrote(fs, bucket):
    close_write(fs, "/f.log", b"v1")
    assert fs.uploader.sync(timeout=10) == 0
    fh = fs.open("/f.log", os.O_RDWR)
    assert fs.read(fh, 100, 0) == b"v1"
    FakeBucket(server=bucket.server).upload_bytes("f.log", b"THEIRS!!")  # another machine replaces it
    fs.write(fh, b"ours-longer", 0)
    fs.flush(fh)
    assert fs.uploader.sync(timeout=10) == 0  # ours went beside, as it should
    fs.write(fh, b"+more", 11)  # the writer appends, as a logger does
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0
    written = {b"v1", b"THEIRS!!", b"ours-longer", b"ours-longer+more"}
    objects = bucket.objects()
    assert set(objects.values()) <= written, objects  # got b"v1\0\0\0\0\0\0\0\0\0+more"


# --- R8: an upload whose answer was lost lands after the rm that dropped it --------------------


def removed_while_its_upload_is_late(fs, bucket) -> None:
    """new.csv is written, its upload times out but reaches the bucket later (every retry fails
    meanwhile), it is removed, then the bucket heals and that request lands."""
    gate = threading.Event()
    bucket.fail_next("upload", late=gate)  # times out now, reaches the bucket later
    stall(bucket, "upload")  # and every retry fails meanwhile
    close_write(fs, "/new.csv", b"written then removed")
    assert wait_until(lambda: any(e.tried for e in fs.uploader.snapshot()))
    fs.unlink("/new.csv")
    heal(bucket)
    gate.set()
    bucket.wait_landed()


def test_a_late_landing_of_a_dropped_upload_does_not_resurrect_a_removed_file(fs, bucket):
    removed_while_its_upload_is_late(fs, bucket)
    assert fs.uploader.sync(timeout=10) == 0
    assert "new.csv" not in bucket.objects()


def test_a_late_landing_is_removed_again_without_a_sync(fs, bucket, monkeypatch):
    monkeypatch.setattr("octuefs.writeback.late.LATE_SWEEP_EVERY", 0.05)
    removed_while_its_upload_is_late(fs, bucket)
    assert wait_until(lambda: "new.csv" not in bucket.objects(), timeout=5), "the removed file came back"


def test_a_file_made_again_after_rm_replaces_the_late_landing_of_the_removed_one(fs, bucket):
    removed_while_its_upload_is_late(fs, bucket)  # the removed one lands late ...
    close_write(fs, "/new.csv", b"made again")  # ... before the new one goes up
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.objects() == {"new.csv": b"made again"}, "the new file went beside, or the old one stayed"
    assert fs.uploader.status()["conflicts"] == []


# --- R9: recovery's dedupe drops a rebased version that shares a key with its unchained successor


def test_a_crash_after_a_merge_with_a_clashing_successor_keeps_the_merged_version(bucket, tmp_path):
    one = make_fs(bucket, tmp_path)
    close_write(one, "/f.csv", b"v1")
    assert one.uploader.sync(timeout=10) == 0
    fh = one.open("/f.csv", os.O_RDWR)
    FakeBucket(server=bucket.server).patch_metadata("f.csv", {"octue__tags": json.dumps({"run": 2})})  # elsewhere
    real_upload = bucket.upload_file
    calls, running, go_on = [], threading.Event(), threading.Event()

    def gated(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:  # v2's first attempt: hold it while a setfattr chains after it
            running.set()
            assert go_on.wait(10)
            return real_upload(*args, **kwargs)  # 412: their tags merged, retried ...
        raise TransientError("503")  # ... and the retry does not get through before the crash

    bucket.upload_file = gated
    one.write(fh, b"v2", 0)
    one.flush(fh)
    assert running.wait(10)
    one.setxattr("/f.csv", "user.octue.tags", b'{"run": 1}')  # the same key as theirs: chained, will clash
    go_on.set()
    assert wait_until(lambda: len(calls) >= 2)
    one.release(fh)
    one.uploader.shutdown(drain=False)  # kill -9
    bucket.upload_file = real_upload

    two = make_fs(bucket, tmp_path)
    try:
        assert two.uploader.sync(timeout=10) == 0
        objects = bucket.objects()
        # Without the crash: f.csv is v2 with their tags merged, and v2 with ours goes beside.
        assert objects["f.csv"] == b"v2", objects
    finally:
        two.uploader.shutdown(drain=False)


# --- R10: a close between unlink's keep_open_content and its hold breaks the open handles ------


def test_a_close_just_before_an_unlink_leaves_the_open_handle_usable(fs, bucket):
    close_write(fs, "/f.csv", b"v0")
    assert fs.uploader.sync(timeout=10) == 0
    stall(bucket, "upload")
    fh = fs.open("/f.csv", os.O_RDWR)
    fs.write(fh, b"written, then closed as rm ran", 0)
    real_held_still = fs.files.held_still

    def close_first(node, settle=False):  # the writer's close lands between the two steps of unlink
        fs.flush(fh)
        return real_held_still(node, settle)

    fs.files.held_still = close_first
    fs.unlink("/f.csv")
    fs.files.held_still = real_held_still
    heal(bucket)
    try:
        assert fs.read(fh, 100, 0) == b"written, then closed as rm ran"  # FileNotFoundError
    finally:
        fs.release(fh)


# --- found by the model machine's long runs: a copy a crash left unreported repeats what is in place


class _Died(BaseException):
    """The daemon dies here (not an error any handler catches)."""


def test_a_conflict_copy_a_crash_left_unnoted_is_removed_once_the_version_is_in_place(bucket, tmp_path):
    first = make_fs(bucket, tmp_path)
    died = threading.Event()

    def note_conflict(record):
        died.set()
        raise _Died("the daemon died after the copy landed, before noting it")

    first.uploader.journal.note_conflict = note_conflict
    hook, threading.excepthook = threading.excepthook, lambda args: None
    real_upload = bucket.upload_file

    def someone_else_first(name, *args, **kwargs):  # their f.csv lands just before ours
        if name == "f.csv":
            bucket.upload_file = real_upload
            bucket.upload_bytes("f.csv", b"theirs")
        return real_upload(name, *args, **kwargs)

    bucket.upload_file = someone_else_first
    try:
        close_write(first, "/f.csv", b"mine")
        assert died.wait(10)
        copies = [n for n in bucket.objects() if ".octuefs-conflict-" in n]
        assert len(copies) == 1 and bucket.objects()[copies[0]] == b"mine"
        first.uploader.shutdown(drain=False)
    finally:
        threading.excepthook = hook
    bucket.delete("f.csv")  # they remove theirs
    second = make_fs(bucket, tmp_path)  # the next mount, same cache: f.csv is free now
    try:
        assert second.uploader.sync(timeout=10) == 0
        objects = bucket.objects()
        assert objects.get("f.csv") == b"mine"
        unreported = [n for n in objects if ".octuefs-conflict-" in n
                      and n not in {c["saved_as"] for c in second.uploader.status()["conflicts"]}]
        assert unreported == [], f"a copy no one was told of: {unreported}"
    finally:
        second.uploader.shutdown(drain=False)
