"""The times stat shows (octuefs/fs/times.py) on the core, without FUSE: what moves them and what
must not (an upload landing, a listing), and what a version made elsewhere shows."""

from __future__ import annotations

import time

import pytest

from octuefs.errors import FileTooLarge
from octuefs.fs.times import Times
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import bucket, close_write, fs, make_fs  # noqa: F401 (bucket, fs: fixtures)


def both(attr) -> tuple[float, float]:
    return attr.mtime, attr.ctime


def test_an_upload_landing_moves_neither_time_and_a_listing_agrees(fs, bucket):
    close_write(fs, "/f", b"data")
    before = both(fs.getattr("/f"))
    time.sleep(0.02)
    assert fs.uploader.sync(timeout=10) == 0  # landed
    assert bucket.stat("f").updated.timestamp() > before[0]
    assert both(fs.getattr("/f")) == before
    assert [both(a) for name, a in fs.readdir("/") if name == "f"] == [before]


def test_a_version_made_elsewhere_shows_the_buckets_times():
    times = Times(started=100.0)
    bucket = FakeBucket("b")
    info = bucket.upload_bytes("x", b"1", {})
    assert times.of(info) == (info.updated.timestamp(), info.updated.timestamp())
    times.made(info, 5.0, 6.0)
    assert times.of(info) == (5.0, 6.0)
    patched = bucket.patch_metadata("x", {"k": "v"})  # a metadata change: the ctime moves to it
    assert times.of(patched) == (5.0, patched.updated.timestamp())
    touched = bucket.patch_metadata("x", {"goog-reserved-file-mtime": "7"})  # a touch's mtime wins
    assert times.of(touched)[0] == 7.0
    replaced = bucket.upload_bytes("x", b"2", {})  # another generation: the bucket's own
    assert times.of(replaced) == (replaced.updated.timestamp(),) * 2


def test_directory_times_move_with_their_entries_only():
    clock = iter([10.0, 20.0])
    times = Times(started=1.0, clock=lambda: next(clock))
    assert times.of_dir("a/") == 1.0
    times.entry_changed("a/b")
    assert times.of_dir("a/") == 10.0 and times.of_dir("") == 1.0
    times.entry_changed("top/")  # a directory's own entry is in its parent
    assert times.of_dir("") == 20.0


def test_a_size_past_a_gcs_object_is_refused_before_anything_is_written(fs, bucket):
    close_write(fs, "/f", b"keep")
    with pytest.raises(FileTooLarge):
        fs.truncate("/f", 6 * 1024**4)
    fh = fs.open("/f", 2)
    try:
        with pytest.raises(FileTooLarge):
            fs.write(fh, b"x", 6 * 1024**4)
    finally:
        fs.release(fh)
    assert fs.getattr("/f").size == 4
