"""Review of issue 16 part 5 (times as POSIX moves them, rename/create edge cases): each test
reproduces one finding on the core with the fake bucket."""

from __future__ import annotations

import stat
import time

import pytest

from tests.unit.corekit import bucket, close_write, fs, make_fs  # noqa: F401 (bucket, fs: fixtures)


def test_a_symlink_or_mknod_moves_its_directorys_times(fs):
    """POSIX: making an entry moves the directory's mtime and ctime, whatever the entry is."""
    fs.mkdir("/d")
    before = fs.getattr("/d").mtime
    time.sleep(0.02)
    fs.symlink("/d/l", "target")
    after_link = fs.getattr("/d").mtime
    assert after_link > before
    time.sleep(0.02)
    fs.mknod("/d/fifo", stat.S_IFIFO | 0o644)
    assert fs.getattr("/d").mtime > after_link


def test_a_directory_touched_then_given_an_entry_shows_the_entrys_time(fs, bucket):
    """touch -d 2000-01-01 d; touch d/f: d's mtime must be now, not 2000 (the marker's stored
    mtime must not hide a later entry change)."""
    fs.mkdir("/d")
    fs.utimens("/d", mtime=946684800.0)
    assert fs.getattr("/d").mtime == 946684800.0
    close_write(fs, "/d/f", b"x")
    assert fs.getattr("/d").mtime > time.time() - 60


def test_a_chmod_moves_a_directorys_ctime(fs):
    fs.mkdir("/d")
    before = fs.getattr("/d")
    time.sleep(0.05)
    fs.chmod("/d", 0o700)
    after = fs.getattr("/d")
    assert (after.ctime if after.ctime is not None else after.mtime) > \
        (before.ctime if before.ctime is not None else before.mtime)
    assert after.mtime == before.mtime


def test_a_chmods_patch_landing_does_not_move_the_ctime(fs, bucket):
    """The ctime a chmod set must not move again, on its own, when its PATCH lands."""
    close_write(fs, "/f", b"data")
    assert fs.uploader.sync(timeout=10) == 0
    fs.chmod("/f", 0o600)
    before = fs.getattr("/f")
    time.sleep(0.3)
    assert fs.uploader.sync(timeout=10) == 0  # the patch landed
    fs.metacache.clear()
    after = fs.getattr("/f")
    assert after.mode == 0o600
    assert (after.mtime, after.ctime) == (before.mtime, before.ctime)


def test_a_directory_rename_keeps_the_times_of_the_directories_under_it(fs):
    """mv a b must not move b/sub's mtime back to the mount's start."""
    fs.mkdir("/a")
    fs.mkdir("/a/sub")
    time.sleep(0.02)
    close_write(fs, "/a/sub/f", b"x")
    assert fs.uploader.sync(timeout=10) == 0
    sub = fs.getattr("/a/sub").mtime
    assert sub > fs.started
    fs.rename("/a", "/b")
    assert fs.getattr("/b/sub").mtime == sub


def test_a_directory_renamed_over_an_empty_one_keeps_its_own_mode(fs, bucket):
    """mkdir -m 700 a; mkdir -m 755 b; mv -T a b: b is a, mode 700."""
    fs.mkdir("/a", mode=0o700)
    fs.mkdir("/b", mode=0o755)
    close_write(fs, "/a/f", b"x")
    assert fs.uploader.sync(timeout=10) == 0
    fs.rename("/a", "/b")
    assert fs.getattr("/b").mode == 0o700


def test_a_chmod_of_a_queued_upload_keeps_its_ctime_when_it_lands(bucket, tmp_path):
    """chmod while the close's upload is still queued amends it: the ctime the chmod set must
    stay when it lands (it went back to the close's)."""
    fs = make_fs(bucket, tmp_path, upload_hold=0.5)
    try:
        close_write(fs, "/f", b"data")
        time.sleep(0.1)
        fs.chmod("/f", 0o600)
        before = fs.getattr("/f")
        assert before.ctime > before.mtime
        assert fs.uploader.sync(timeout=10) == 0
        fs.metacache.clear()
        after = fs.getattr("/f")
        assert (after.mtime, after.ctime) == (before.mtime, before.ctime)
    finally:
        fs.shutdown()


def test_a_chmod_of_an_upload_in_flight_keeps_both_times_when_it_lands(fs, bucket):
    """chmod while the close's upload is being sent queues a second upload (same content, new
    metadata): when it lands, stat must not show the bucket's (later) times."""
    from tests.unit.corekit import HeldUpload
    held = HeldUpload(bucket)
    close_write(fs, "/f", b"data")
    assert held.started.wait(5)
    time.sleep(0.05)
    fs.chmod("/f", 0o600)
    before = fs.getattr("/f")
    time.sleep(0.1)
    held.release()
    assert fs.uploader.sync(timeout=10) == 0
    fs.metacache.clear()
    after = fs.getattr("/f")
    assert after.mode == 0o600
    assert (after.mtime, after.ctime) == (before.mtime, before.ctime)


def test_a_directory_renamed_onto_a_new_file_not_yet_uploaded_is_enotdir(bucket, tmp_path):
    """rename(dir, file) is ENOTDIR also while the file is only here (its upload pending): it
    must not make a directory beside a file of the same name."""
    from octuefs.errors import NotADirectory
    fs = make_fs(bucket, tmp_path, upload_hold=30.0)
    try:
        fs.mkdir("/d")
        close_write(fs, "/d/x", b"in d")
        fs.uploader.sync(timeout=10)
        close_write(fs, "/f", b"pending")  # held back: not in the bucket yet
        assert bucket.stat_or_none("f") is None if hasattr(bucket, "stat_or_none") else True
        with pytest.raises(NotADirectory):
            fs.rename("/d", "/f")
        assert not fs.getattr("/f").is_dir
    finally:
        fs.shutdown()


def test_a_setfattr_moves_the_ctime_and_its_landing_does_not_move_it_again(fs, bucket):
    close_write(fs, "/f", b"data")
    assert fs.uploader.sync(timeout=10) == 0
    before = fs.getattr("/f")
    time.sleep(0.05)
    fs.setxattr("/f", "user.octue.tags", b"{\"a\": 1}")
    changed = fs.getattr("/f")
    assert changed.ctime > before.ctime and changed.mtime == before.mtime
    assert fs.uploader.sync(timeout=10) == 0
    fs.metacache.clear()
    after = fs.getattr("/f")
    assert (after.mtime, after.ctime) == (changed.mtime, changed.ctime)


def test_a_rename_over_a_file_whose_upload_is_queued_leaves_only_the_source(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path, upload_hold=30.0)
    try:
        close_write(fs, "/b", b"old, queued")
        close_write(fs, "/a", b"new")
        fs.rename("/a", "/b")
        assert fs.uploader.sync(timeout=10) == 0
        names = sorted(o.name for o in bucket.list_all("", delimiter=None)[0])
        assert names == ["b"], names
        assert bucket.read_range("b", 0, 100) == b"new"
        assert fs.getattr("/b").size == 3
    finally:
        fs.shutdown()


def test_a_rename_over_a_file_changed_elsewhere_is_refused(fs, bucket):
    close_write(fs, "/a", b"new")
    close_write(fs, "/b", b"old")
    assert fs.uploader.sync(timeout=10) == 0
    fs.getattr("/b")  # known here
    bucket.upload_bytes("b", b"changed elsewhere", {})
    from octuefs.errors import Conflict
    with pytest.raises(Conflict):
        fs.rename("/a", "/b")
    assert bucket.read_range("b", 0, 100) == b"changed elsewhere"


def test_a_directory_rename_keeps_its_own_mtime_and_moves_its_ctime(fs):
    """POSIX: a rename moves the ctime of what is renamed, never its mtime; a directory too."""
    fs.mkdir("/a")
    close_write(fs, "/a/f", b"x")
    assert fs.uploader.sync(timeout=10) == 0
    before = fs.getattr("/a")
    time.sleep(0.05)
    fs.rename("/a", "/b")
    after = fs.getattr("/b")
    assert after.mtime == before.mtime
    assert after.ctime > before.mtime


def test_a_directory_renamed_to_a_sibling_sharing_its_name_prefix_is_not_its_own_subtree(fs):
    fs.mkdir("/a")
    fs.mkdir("/a/b")
    close_write(fs, "/a/b/f", b"x")
    fs.rename("/a/b", "/a/bc")
    assert sorted(n for n, _ in fs.readdir("/a") if n not in (".", "..")) == ["bc"]
    assert fs.getattr("/a/bc/f").size == 1
