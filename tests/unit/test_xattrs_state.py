"""``user.octuefs.state`` on the in-memory bucket: where a file's write-back stands, from memory."""

from __future__ import annotations

import errno
import os
import re
import shlex

import pytest

from octuefs.errors import NoSuchAttribute, ReadOnlyAttribute, TransientError, errno_for
from octuefs.storage.fake import FakeBucket

from .corekit import HeldUpload, bucket, close_write, fs, make_fs, wait_until  # noqa: F401 (bucket, fs: fixtures)

STATE = "user.octuefs.state"


def state(fs, path) -> tuple[str, dict[str, str]]:
    word, *fields = shlex.split(fs.getxattr(path, STATE).decode())
    return word, dict(f.split("=", 1) for f in fields)


def test_a_held_upload_is_pending_then_uploading_then_saved_asking_the_bucket_nothing(fs, bucket):
    held = HeldUpload(bucket)
    close_write(fs, "/a.csv", b"1,2\n")
    assert held.started.wait(5)
    bucket.reset_calls()
    assert state(fs, "/a.csv") == ("uploading", {"kind": "upload", "attempts": "1"})
    assert sum(bucket.calls.values()) == 0  # from memory
    held.release()
    assert fs.uploader.sync(timeout=10) == 0
    assert state(fs, "/a.csv") == ("saved", {})
    assert bucket.objects()["a.csv"] == b"1,2\n"


def test_a_failing_upload_is_pending_with_its_attempts_and_last_error(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    fs.uploader.max_backoff = 0.05
    try:
        bucket.set_fault_rate(1.0, lambda: TransientError("503 Service Unavailable: try again"), operations=("upload",))
        close_write(fs, "/b.csv", b"x")
        assert wait_until(lambda: int(state(fs, "/b.csv")[1].get("attempts", "0")) >= 2)
        word, fields = state(fs, "/b.csv")
        assert word in ("pending", "uploading") and fields["kind"] == "upload"
        assert "503 Service Unavailable" in fields["error"]
        bucket.set_fault_rate(0.0)
        assert fs.uploader.sync(timeout=10) == 0
        assert state(fs, "/b.csv") == ("saved", {})
    finally:
        fs.shutdown()


def test_a_setfattr_waiting_to_be_sent_is_pending_metadata(fs, bucket):
    bucket.upload_bytes("c.csv", b"x")
    assert state(fs, "/c.csv") == ("saved", {})
    fs.setxattr("/c.csv", "user.octue.labels", b"raw")
    assert state(fs, "/c.csv") == ("pending", {"kind": "metadata", "attempts": "0"})
    assert fs.uploader.sync(timeout=10) == 0
    assert state(fs, "/c.csv") == ("saved", {})


def test_a_file_being_written_is_pending_unclosed(fs):
    fh = fs.create("/w.csv", os.O_WRONLY | os.O_CREAT)
    fs.write(fh, b"partial", 0)
    try:
        assert state(fs, "/w.csv") == ("pending", {"kind": "unclosed", "attempts": "0"})
    finally:
        fs.release(fh)


def test_a_conflict_names_where_the_local_version_went(fs, bucket):
    bucket.upload_bytes("d/c.txt", b"v1")
    fh = fs.open("/d/c.txt", os.O_RDWR)
    fs.write(fh, b"mine", 0)
    bucket.upload_bytes("d/c.txt", b"theirs")  # another machine writes meanwhile
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0
    word, fields = state(fs, "/d/c.txt")
    [copy] = [n for n in bucket.objects() if n.startswith("d/c.octuefs-conflict-")]
    assert word == "conflict" and fields == {"saved-as": copy[len("d/"):], "url": f"gs://bk/{copy}"}
    assert bucket.objects()[copy] == b"mine"
    close_write(fs, "/d/c.txt", b"again")  # the next version from here lands: saved
    assert fs.uploader.sync(timeout=10) == 0
    assert state(fs, "/d/c.txt") == ("saved", {})


def test_the_state_is_read_only_unlisted_and_absent_on_directories(fs, bucket):
    bucket.upload_bytes("e/f.csv", b"x")
    for change in (lambda: fs.setxattr("/e/f.csv", STATE, b"saved"), lambda: fs.removexattr("/e/f.csv", STATE)):
        with pytest.raises(ReadOnlyAttribute) as info:
            change()
        assert errno_for(info.value)[0] == errno.EPERM
    assert STATE not in fs.listxattr("/e/f.csv")
    with pytest.raises(NoSuchAttribute):
        fs.getxattr("/e", STATE)
    assert "octuefs.user.octuefs.state" not in bucket.stat("e/f.csv").metadata


def test_a_value_with_spaces_and_quotes_is_one_json_string():
    from octuefs.fs.filestate import render

    line = render("pending", kind="upload", attempts=3, error='503 "busy"\nretry').decode()
    assert line == 'pending kind=upload attempts=3 error="503 \\"busy\\"\\nretry"'
    assert re.fullmatch(r'\w+( [\w-]+=("(?:[^"\\]|\\.)*"|\S+))*', line)


def _conflict(fs, bucket, path="/d/c.txt"):
    name = path.lstrip("/")
    bucket.upload_bytes(name, b"v1")
    fs.metacache.clear()  # (made behind the mount's back)
    fh = fs.open(path, os.O_RDWR)
    fs.write(fh, b"mine", 0)
    FakeBucket(server=bucket.server).upload_bytes(name, b"theirs")  # another machine, meanwhile
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=10) == 0
    assert state(fs, path)[0] == "conflict"


def test_a_conflict_outlives_a_remount_until_a_newer_version_from_the_mount_lands(bucket, tmp_path):
    """The conflict is taken from the journal's conflict list (what `octuefs status` shows) at the
    next mount with the same cache; a version landing later ends it, also for the mount after."""
    fs = make_fs(bucket, tmp_path)
    try:
        _conflict(fs, bucket)
        _, fields = state(fs, "/d/c.txt")
    finally:
        fs.shutdown()
    fs = make_fs(bucket, tmp_path)
    try:
        assert state(fs, "/d/c.txt") == ("conflict", fields)
        close_write(fs, "/d/c.txt", b"mine again")
        assert fs.uploader.sync(timeout=10) == 0
        assert state(fs, "/d/c.txt")[0] == "saved"
    finally:
        fs.shutdown()
    fs = make_fs(bucket, tmp_path)
    try:
        assert state(fs, "/d/c.txt")[0] == "saved"
    finally:
        fs.shutdown()


def test_a_rename_leaves_no_conflict_on_either_name_nor_after_a_remount(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    try:
        _conflict(fs, bucket)
        _conflict(fs, bucket, "/d/e.txt")
        fs.rename("/d/c.txt", "/d/e.txt")
        assert state(fs, "/d/e.txt")[0] == "saved"
        FakeBucket(server=bucket.server).upload_bytes("d/c.txt", b"new, elsewhere")
        fs.metacache.clear()
        assert state(fs, "/d/c.txt")[0] == "saved"
        _conflict(fs, bucket, "/x/f.txt")
        fs.rename("/x", "/y")
        assert state(fs, "/y/f.txt")[0] == "saved"
    finally:
        fs.shutdown()
    fs = make_fs(bucket, tmp_path)
    try:
        assert [state(fs, p)[0] for p in ("/d/c.txt", "/d/e.txt", "/y/f.txt")] == ["saved"] * 3
    finally:
        fs.shutdown()


def test_a_state_hook_runs_even_when_the_file_layers_hook_fails(fs, bucket):
    """Uploader._finish runs on_done, then the on_finished hooks: one failing does not skip the next."""
    real = fs.uploader.on_done

    def failing(entry):
        real(entry)
        raise RuntimeError("boom")

    fs.uploader.on_done = failing
    _conflict(fs, bucket)
