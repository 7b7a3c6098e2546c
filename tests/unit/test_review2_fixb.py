"""Review 2, findings 7-10: the fixes' own edges (the findings' tests are in test_review2.py)."""

from __future__ import annotations

import pytest

import octuefs.datafile as datafile_module
from octuefs import Datafile
from octuefs.errors import DirectoryNotEmpty
from octuefs.storage.fake import FakeBucket

from tests.unit.test_review_findings import make_fs


@pytest.fixture
def bucket():
    return FakeBucket("fixb")


@pytest.fixture
def fs(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path)
    yield fs
    fs.uploader.shutdown(drain=False)


# --- finding 8: a Datafile is never sent to a name no file can have ---------------------------


@pytest.mark.parametrize("url", ["gs://fixb/results/", "gs://fixb/", "gs://fixb//x.csv", "gs://fixb/a//x.csv",
                                 "gs://fixb/a/../x.csv", "gs://fixb/./x.csv"])
def test_a_datafile_is_not_sent_to_a_name_the_mount_cannot_show_as_a_file(bucket, monkeypatch, tmp_path, url):
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: bucket)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"a\n")
    with pytest.raises(ValueError, match="gs://fixb/"):
        Datafile("data.csv").to_cloud(url)
    with pytest.raises(ValueError):
        Datafile("data.csv").to_cloud(cloud_path=url)
    with pytest.raises(ValueError):
        Datafile(url, mode="w")
    assert bucket.objects() == {}


def test_a_datafile_is_not_sent_to_a_directory_given_as_bucket_and_path(bucket, monkeypatch, tmp_path):
    monkeypatch.setattr(datafile_module, "bucket_factory", lambda name, project: bucket)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_bytes(b"a\n")
    with pytest.raises(ValueError, match="directory"):
        Datafile("data.csv").to_cloud("project", "fixb", "results/")
    with pytest.raises(ValueError, match="directory"):
        Datafile.from_cloud("project", "fixb", "results/", mode="w")
    assert bucket.objects() == {}
    assert Datafile("data.csv").to_cloud("project", "fixb", "results/data.csv") == "gs://fixb/results/data.csv"


# --- finding 8: rmdir deletes only the empty marker it saw ----------------------------------


def test_rmdir_still_removes_an_empty_directory(fs, bucket):
    fs.mkdir("/d")
    fs.rmdir("/d")
    assert "d/" not in bucket.objects()


def test_rmdir_does_not_delete_a_marker_replaced_while_it_looked(fs, bucket):
    """Another machine writes data to "d/" between rmdir's listing and its delete."""
    other = FakeBucket(server=bucket.server)
    fs.mkdir("/d")
    real = bucket.list_page

    def list_then_they_write(prefix, *args, **kwargs):
        page = real(prefix, *args, **kwargs)
        if prefix == "d/":
            other.upload_bytes("d/", b"their data\n", {})
        return page

    bucket.list_page = list_then_they_write
    with pytest.raises(DirectoryNotEmpty):
        fs.rmdir("/d")
    assert bucket.objects()["d/"] == b"their data\n"


# --- finding 9: the conflict log survives a torn line ---------------------------------------


def test_conflict_records_around_torn_lines_are_all_read_and_reported_once(tmp_path, caplog, monkeypatch):
    from octuefs import uploads
    from octuefs.uploads import Journal

    synced = []
    real_fsync = uploads.os.fsync
    monkeypatch.setattr(uploads.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    journal = Journal(str(tmp_path))
    journal.note_conflict({"object": "a.csv"})
    assert synced, "a conflict record is not fsync'd"
    with open(journal.conflicts_path, "a") as f:
        f.write('{"object": "torn.csv", "the')  # a crash mid-append
    upto, unreported = journal.unreported_conflicts()
    assert [c["object"] for c in unreported] == ["a.csv"]
    journal.mark_reported(upto)
    journal.note_conflict({"object": "b.csv"})
    with open(journal.conflicts_path, "a") as f:
        f.write('[1, 2]\n"not a record"\n')  # whole lines, but no records either
    journal.note_conflict({"object": "c.csv"})
    caplog.clear()
    upto, unreported = journal.unreported_conflicts()
    assert [c["object"] for c in unreported] == ["b.csv", "c.csv"]
    assert [c["object"] for c in journal.conflicts()] == ["a.csv", "b.csv", "c.csv"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "conflict record" in r.getMessage()]
    assert len(warnings) == 2  # one per bad line, not one per read (the torn line was warned of before)
    journal.mark_reported(upto)
    assert journal.unreported_conflicts()[1] == []
