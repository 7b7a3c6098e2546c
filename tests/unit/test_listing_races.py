"""Listings that race with the mount's own uploads and deletes (found by test_differential)."""

from __future__ import annotations

import os
import threading

import pytest

from octuefs.assembly import build_filesystem
from octuefs.config import MountConfig
from octuefs.errors import FileNotFound
from octuefs.fs.core import FileSystem
from octuefs.storage.fake import FakeBucket


class _SlowListing(FakeBucket):
    """A bucket whose next listing is answered, then held until ``during()`` has run."""

    during = None

    def list_page(self, *args, **kwargs):
        page = super().list_page(*args, **kwargs)
        hook, self.during = self.during, None
        if hook is not None:
            hook()  # e.g. an upload lands: the page just read no longer says so
        return page


def _fs(bucket, tmp_path, **kw) -> FileSystem:
    return build_filesystem(bucket, MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "m"),
                                          cache_dir=str(tmp_path / "c"), **kw))


def _names(fs, path="/") -> list[str]:
    return sorted(name for name, _ in fs.readdir(path))


def _close_new_file(fs, path, data=b"x"):
    fh = fs.create(path, os.O_WRONLY | os.O_CREAT)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)


def test_a_file_whose_upload_lands_during_a_listing_is_not_lost(tmp_path):
    bucket = _SlowListing("race")
    fs = _fs(bucket, tmp_path)
    gate = threading.Event()
    real_upload = bucket.upload_file

    def held_upload(*args, **kwargs):
        gate.wait(10)
        return real_upload(*args, **kwargs)

    bucket.upload_file = held_upload
    _close_new_file(fs, "/b.txt")  # queued, its upload held

    def land():
        gate.set()
        assert fs.uploader.sync(timeout=10) == 0  # in the bucket; the node is dropped

    bucket.during = land
    assert _names(fs) == ["b.txt"]  # the page was read before the upload landed
    assert _names(fs) == ["b.txt"]  # ... and that stale page was not cached either


def test_a_file_deleted_during_a_listing_does_not_come_back(tmp_path):
    bucket = _SlowListing("race")
    fs = _fs(bucket, tmp_path)
    bucket.upload_bytes("gone.txt", b"x")
    bucket.upload_bytes("kept.txt", b"y")
    bucket.during = lambda: fs.unlink("/gone.txt")
    _names(fs)  # whatever this one says, the next must not show the deleted file
    assert _names(fs) == ["kept.txt"]


def test_a_lookup_answered_before_a_delete_is_not_cached_after_it(tmp_path):
    bucket = FakeBucket("race")
    fs = _fs(bucket, tmp_path)
    bucket.upload_bytes("f.txt", b"x")
    real_stat = bucket.stat

    def stat_then_delete(name):
        info = real_stat(name)
        bucket.stat = real_stat
        fs.unlink("/f.txt")  # the mount deletes it right after the bucket answered
        return info

    bucket.stat = stat_then_delete
    fs.fills.ask_alone("f.txt")  # (a name past the pages a fill lists is asked for alone)
    with pytest.raises(FileNotFound):
        fs.getattr("/f.txt")
