"""setfattr of a saved file, written back: journaled at once, coalesced per object, patched
within about ``patch_pace`` (docs/semantics.md, "setfattr: when a change is durable")."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from octuefs.errors import (
    BucketUnreachable,
    FileNotFound,
    InvalidMetadata,
    PermissionDenied,
)
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import close_write, make_fs


@pytest.fixture
def bucket():
    return FakeBucket("setfattr-test")


def tags(bucket, name):
    return json.loads(bucket.stat(name).metadata.get("octue__tags", "{}"))


def test_a_setfattr_is_journaled_before_it_returns_and_sent_after_a_crash(bucket, tmp_path):
    bucket.upload_bytes("c.csv", b"content", {"other": "kept"})
    first = make_fs(bucket, tmp_path, patch_pace=5.0)
    first.setxattr("/c.csv", "user.octue.tags.run", b"7")
    first.setxattr("/c.csv", "user.octue.tags.site", b'"north"')
    assert [r["kind"] for r in first.uploader.status()["uploads"]] == ["metadata"]
    first.uploader.shutdown(drain=False)  # the daemon dies here, before the patch is sent
    assert tags(bucket, "c.csv") == {}

    second = make_fs(bucket, tmp_path, patch_pace=0.01)  # the same cache directory
    assert second.getxattr("/c.csv", "user.octue.tags.run") == b"7"  # shown from the journal
    assert second.uploader.sync(timeout=10) == 0
    assert tags(bucket, "c.csv") == {"run": 7, "site": "north"}
    assert bucket.stat("c.csv").metadata["other"] == "kept" and bucket.objects()["c.csv"] == b"content"
    second.uploader.shutdown()


def test_changes_in_a_row_are_one_patch_and_a_close_folds_them_into_its_upload(bucket, tmp_path):
    bucket.upload_bytes("f.csv", b"v1")
    fs = make_fs(bucket, tmp_path, patch_pace=5.0)
    bucket.reset_calls()
    for i in range(5):
        fs.setxattr("/f.csv", f"user.octue.tags.t{i}", str(i).encode())
    fh = fs.open("/f.csv", os.O_WRONLY)
    fs.write(fh, b"v2", 0)
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.calls["patch"] == 0 and bucket.calls["upload"] == 1  # one request carries both
    assert bucket.objects()["f.csv"] == b"v2" and tags(bucket, "f.csv") == {f"t{i}": i for i in range(5)}
    fs.uploader.shutdown()


def test_the_same_key_changed_elsewhere_meanwhile_takes_this_mounts_value_and_says_so(bucket, tmp_path, caplog):
    bucket.upload_bytes("k.csv", b"x")
    fs = make_fs(bucket, tmp_path, patch_pace=0.2)
    fs.setxattr("/k.csv", "user.octue.cluster", b"5")
    fs.setxattr("/k.csv", "user.octue.tags.mine", b"1")
    info = bucket.stat("k.csv")  # another machine, before the patch goes: the same key, and a tag
    bucket.patch_metadata("k.csv", {"octue__cluster": "9", "octue__tags": '{"theirs": 2}'},
                          if_metageneration_match=info.metageneration)
    with caplog.at_level(logging.WARNING, logger="octuefs.writeback.patches"):
        assert fs.uploader.sync(timeout=10) == 0
    metadata = bucket.stat("k.csv").metadata
    assert metadata["octue__cluster"] == "5"  # the later setfattr
    assert json.loads(metadata["octue__tags"]) == {"mine": 1, "theirs": 2}  # tag by tag: both kept
    assert any("octue__cluster" in r.getMessage() and "'9'" in r.getMessage() for r in caplog.records)
    fs.uploader.shutdown()


def test_a_setfattr_whose_object_was_deleted_elsewhere_goes_with_it(bucket, tmp_path):
    bucket.upload_bytes("gone.csv", b"x")
    fs = make_fs(bucket, tmp_path, patch_pace=0.2)
    fs.setxattr("/gone.csv", "user.octue.labels", b"late")
    bucket.delete("gone.csv")
    assert fs.uploader.sync(timeout=10) == 0
    assert "gone.csv" not in bucket.objects()  # not brought back
    with pytest.raises(FileNotFound):
        fs.getattr("/gone.csv")
    fs.uploader.shutdown()


def test_a_bad_value_queues_nothing(bucket, tmp_path):
    bucket.upload_bytes("b.csv", b"x")
    fs = make_fs(bucket, tmp_path)
    with pytest.raises(InvalidMetadata):
        fs.setxattr("/b.csv", "user.octue.labels", b"Bad_Label!")
    assert fs.uploader.status()["uploads"] == [] and fs.files.node("b.csv") is None
    fs.uploader.shutdown()


def _stuck_patch_then_deleted_elsewhere(bucket, tmp_path, **ttls):
    """m1's setfattr of ``s.csv`` is journaled but its patch is refused (403: retried only every
    300 s), then m0 deletes the file. Returns (m0, m1)."""
    m0 = make_fs(bucket, tmp_path, cache="c0")
    m1 = make_fs(bucket, tmp_path, cache="c1", patch_pace=0.01, **ttls)
    close_write(m0, "/s.csv", b"x")
    assert m0.uploader.sync(timeout=10) == 0
    bucket.fail_next("patch", PermissionDenied("injected 403"))
    m1.setxattr("/s.csv", "user.octue.tags.first", b"1")  # acknowledged: journaled
    deadline = time.monotonic() + 10
    while not any(r.get("last_error") for r in m1.uploader.status()["uploads"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r["kind"] for r in m1.uploader.status()["uploads"]] == ["metadata"]  # stuck, pending
    m0.unlink("/s.csv")
    return m0, m1


def test_a_file_deleted_elsewhere_is_not_kept_visible_by_a_stuck_metadata_patch(bucket, tmp_path):
    """The model's shrunk example: the node holding only a stuck patch showed the deleted file,
    so a later setfattr on it succeeded and was then dropped with the patch (acknowledged, lost).
    Now the lookup, made as for a clean file, says it is gone: stat, getfattr, setfattr, chmod
    and touch answer ENOENT, and nothing acknowledged after the delete is dropped."""
    m0, m1 = _stuck_patch_then_deleted_elsewhere(bucket, tmp_path, stat_ttl=0, list_ttl=0, negative_ttl=0)
    try:
        with pytest.raises(FileNotFound):
            m1.getattr("/s.csv")
        with pytest.raises(FileNotFound):
            m1.getxattr("/s.csv", "user.octue.tags.first")
        with pytest.raises(FileNotFound):
            m1.setxattr("/s.csv", "user.octue.tags.second", b"2")
        with pytest.raises(FileNotFound):
            m1.chmod("/s.csv", 0o600)
        with pytest.raises(FileNotFound):
            m1.utimens("/s.csv", mtime=1_000_000.0)
        # The one change queued (made before the delete) is the only one pending: it goes with
        # the file when sent, as documented; nothing later was taken in.
        uploads = m1.uploader.status()["uploads"]
        assert [r["kind"] for r in uploads] == ["metadata"]
        assert "s.csv" not in bucket.objects()
    finally:
        m1.shutdown(drain=False)
        m0.shutdown(drain=False)


def test_an_open_file_deleted_elsewhere_keeps_its_node_with_a_stuck_patch(bucket, tmp_path):
    """Open, the file stays as POSIX keeps an unlinked file: the handle's view wins."""
    m0, m1 = _stuck_patch_then_deleted_elsewhere(bucket, tmp_path, stat_ttl=0, list_ttl=0, negative_ttl=0)
    try:
        fh = m1.open("/s.csv", os.O_RDONLY)  # (its node: opened before m1 looks again)
        bucket.fail_next("patch", PermissionDenied("injected 403"))
        assert m1.getattr("/s.csv").size == 1
        m1.release(fh)
        with pytest.raises(FileNotFound):  # closed: the patch alone no longer keeps it shown
            m1.getattr("/s.csv")
    finally:
        m1.shutdown(drain=False)
        m0.shutdown(drain=False)


def test_a_stuck_patch_asks_nothing_more_of_the_bucket_within_stat_ttl(bucket, tmp_path):
    """The lookup is the one a clean file's stat makes: from the metadata cache while fresh."""
    m0, m1 = _stuck_patch_then_deleted_elsewhere(bucket, tmp_path)  # default TTLs
    try:
        bucket.reset_calls()
        assert m1.getattr("/s.csv").size == 1  # deleted elsewhere: shown until stat_ttl, as any file
        assert m1.getxattr("/s.csv", "user.octue.tags.first") == b"1"
        assert sum(bucket.calls.values()) == 0
    finally:
        m1.shutdown(drain=False)
        m0.shutdown(drain=False)


def test_a_stuck_patch_keeps_its_file_shown_while_the_bucket_cannot_be_asked(bucket, tmp_path):
    """An outage is not a delete: the lookup failing leaves the node shown, as before."""
    m0 = make_fs(bucket, tmp_path, cache="c0")
    m1 = make_fs(bucket, tmp_path, cache="c1", patch_pace=0.01, stat_ttl=0, list_ttl=0, negative_ttl=0)
    try:
        close_write(m0, "/s.csv", b"x")
        assert m0.uploader.sync(timeout=10) == 0
        bucket.fail_next("patch", PermissionDenied("injected 403"))
        m1.setxattr("/s.csv", "user.octue.tags.first", b"1")
        bucket.set_fault_rate(1.0, lambda: BucketUnreachable("injected outage"))
        assert m1.getattr("/s.csv").size == 1
        assert m1.getxattr("/s.csv", "user.octue.tags.first") == b"1"
    finally:
        bucket.set_fault_rate(0.0)
        m1.shutdown(drain=False)
        m0.shutdown(drain=False)
