"""The write-back journal on disk: a sealed file and its record are durable together, and the
next mount finds every closed file, whichever way its record was kept."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

from octuefs.writeback.entry import Entry
from octuefs.writeback.journal import RECORD_XATTR, Journal


def staged(tmp_path, data: bytes, name: str = "s") -> str:
    path = tmp_path / f"staging-{name}"
    path.write_bytes(data)
    return str(path)


def entry(journal: Journal, name: str = "a/b.csv", size: int = 5, **kw) -> Entry:
    return Entry(journal.new_id(), name, kw.pop("base", 0), kw.pop("after", None),
                 kw.pop("metadata", {"octue__labels": '["raw"]'}), "text/csv", size, time.time())


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path / "cache"))
    if not j.records_in_xattrs:
        pytest.skip("this filesystem keeps no user xattrs")
    return j


def loaded(root) -> dict[str, Entry]:
    return {e.id: e for e in Journal(str(root)).load()}


def test_a_sealed_file_carries_its_record_and_the_next_mount_finds_it(journal, tmp_path):
    e = entry(journal)
    journal.commit(e, staged(tmp_path, b"12345"))
    assert not os.path.exists(tmp_path / "staging-s")
    assert os.listdir(journal.journal_dir) == []  # no separate record file
    assert json.loads(os.getxattr(journal.data_path(e.id), RECORD_XATTR + e.id)) == e.record()
    again = loaded(tmp_path / "cache")
    assert again[e.id].record() == e.record()
    with open(journal.data_path(e.id), "rb") as f:
        assert f.read() == b"12345"


def test_an_amended_record_is_what_the_next_mount_uploads(journal, tmp_path):
    e = entry(journal)
    journal.commit(e, staged(tmp_path, b"12345"))
    e.metadata = {"octue__labels": '["cleaned"]'}
    journal.write(e)
    assert loaded(tmp_path / "cache")[e.id].metadata == {"octue__labels": '["cleaned"]'}


def test_a_record_too_large_for_an_attribute_goes_in_a_file_of_its_own(journal, tmp_path):
    big = {"octue__tags": json.dumps({f"k{i}": "v" * 50 for i in range(2000)})}  # ~110 KB
    e = entry(journal, metadata=big)
    journal.commit(e, staged(tmp_path, b"12345"))
    assert os.listdir(journal.journal_dir) == [e.id + ".json"]
    assert loaded(tmp_path / "cache")[e.id].metadata == big
    e.metadata = {**big, "x": "y"}
    journal.write(e)  # amended where it lives
    assert loaded(tmp_path / "cache")[e.id].metadata == e.metadata


def test_records_written_as_files_by_an_earlier_octuefs_still_load(tmp_path):
    root = tmp_path / "cache"
    old = Journal(str(root))
    old.records_in_xattrs = False  # as before records moved onto the files, or without xattrs
    e = entry(old)
    old.commit(e, staged(tmp_path, b"12345"))
    assert os.listdir(old.journal_dir) == [e.id + ".json"]
    assert loaded(root)[e.id].record() == e.record()


def test_two_versions_sharing_content_keep_a_record_each(journal, tmp_path):
    first = entry(journal)
    journal.commit(first, staged(tmp_path, b"12345"))
    second = entry(journal, base=None, after=first.id, metadata={"octue__labels": '["new"]'})
    journal.commit_link(second, first.id)  # a setfattr while the first was uploading: chained after it
    both = loaded(tmp_path / "cache")
    assert both[first.id].metadata == first.metadata and both[second.id].metadata == second.metadata
    journal.remove(first)
    assert list(loaded(tmp_path / "cache")) == [second.id]


def test_a_failed_commit_leaves_the_content_where_it_was_and_journals_nothing(journal, tmp_path, monkeypatch):
    e = entry(journal)
    path = staged(tmp_path, b"12345")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("octuefs.writeback.journal.fsync_dir", full)
    with pytest.raises(OSError):
        journal.commit(e, path)
    monkeypatch.undo()
    with open(path, "rb") as f:
        assert f.read() == b"12345"
    assert loaded(tmp_path / "cache") == {}


def test_a_record_that_does_not_match_its_file_is_set_aside_not_uploaded(journal, tmp_path):
    e = entry(journal, size=999)  # the record says 999 bytes; the file has 5
    journal.commit(e, staged(tmp_path, b"12345"))
    assert loaded(tmp_path / "cache") == {}
    assert os.listdir(journal.pending_dir) == []
    lost = tmp_path / "cache" / "lost+found"  # the data and its record side by side, for good
    assert (lost / f"{e.id}.data").read_bytes() == b"12345"
    assert json.loads((lost / f"{e.id}.record").read_bytes())["size"] == 999
    assert loaded(tmp_path / "cache") == {} and (lost / f"{e.id}.data").exists()


def test_a_sealed_file_without_a_record_is_kept_aside_never_uploaded(tmp_path):
    root = tmp_path / "cache"
    old = Journal(str(root))
    old.records_in_xattrs = False
    e = entry(old)
    old.seal(e.id, staged(tmp_path, b"12345"))  # a crash before its record was written
    assert loaded(root) == {}
    kept = os.listdir(root / "lost+found")
    assert len(kept) == 1 and (root / "lost+found" / kept[0]).read_bytes() == b"12345"
    assert os.listdir(old.pending_dir) == []


def test_a_failed_seal_gives_the_content_back(tmp_path, monkeypatch):
    j = Journal(str(tmp_path / "cache"))
    j.records_in_xattrs = False
    path = staged(tmp_path, b"12345")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("octuefs.writeback.journal.fsync_dir", broken)
    with pytest.raises(OSError):
        j.commit(entry(j), path)
    monkeypatch.undo()
    with open(path, "rb") as f:
        assert f.read() == b"12345"
    assert os.listdir(j.pending_dir) == [] and os.listdir(j.journal_dir) == []


def test_a_record_from_before_copy_checks_loads_as_an_upload(tmp_path):
    root = tmp_path / "cache"
    old = Journal(str(root))
    old.records_in_xattrs = False
    e = entry(old)
    old.commit(e, staged(tmp_path, b"12345"))
    path = os.path.join(old.journal_dir, e.id + ".json")
    with open(path) as f:
        record = json.load(f)
    del record["check_copy"]  # written by an octuefs without the field
    with open(path, "w") as f:
        json.dump(record, f)
    assert loaded(root)[e.id].check_copy is False


@pytest.mark.parametrize("in_xattrs", [True, False])
def test_a_superseded_version_that_may_have_left_a_copy_loads_as_a_check_of_it(tmp_path, in_xattrs):
    """A crash between journaling a newer version and turning the one it replaced into a check
    of its conflict copy: the next mount checks that copy; a superseded version without one is
    dropped as before."""
    root = tmp_path / "cache"
    journal = Journal(str(root))
    if in_xattrs and not journal.records_in_xattrs:
        pytest.skip("this filesystem keeps no user xattrs")
    journal.records_in_xattrs = in_xattrs
    beside = entry(journal)
    beside.conflict_name, beside.conflict_id = "a/b.octuefs-conflict-20261207T000000Z-abcdef.csv", '"id"'
    beside.seq = 0
    journal.commit(beside, staged(tmp_path, b"12345", "1"))
    newer = entry(journal)
    newer.seq, newer.replaces = 1, beside.id
    journal.commit(newer, staged(tmp_path, b"54321", "2"))
    plain = entry(journal, name="c.csv")
    plain.seq = 2
    journal.commit(plain, staged(tmp_path, b"11111", "3"))
    newest = entry(journal, name="c.csv")
    newest.seq, newest.replaces = 3, plain.id
    journal.commit(newest, staged(tmp_path, b"22222", "4"))
    for _ in range(2):  # and again: the check stays one until it has run
        got = loaded(root)
        assert sorted(got) == sorted([beside.id, newer.id, newest.id])
        assert got[beside.id].check_copy and got[beside.id].key == beside.conflict_name
        assert not got[newer.id].check_copy and got[newer.id].key == "a/b.csv"
    assert not os.path.exists(journal.data_path(plain.id))
