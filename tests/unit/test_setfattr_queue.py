"""setfattr of a saved file, written back: journaled at once, coalesced per object, patched
within about ``patch_pace`` (docs/semantics.md, "setfattr: when a change is durable")."""

from __future__ import annotations

import json
import logging
import os

import pytest

from octuefs.errors import FileNotFound, InvalidMetadata
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import make_fs


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
    with caplog.at_level(logging.WARNING, logger="octuefs.uploads"):
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
