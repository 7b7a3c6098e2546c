"""The filesystem core against the in-memory bucket, without FUSE: fast checks of semantics."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading

import pytest

from octuefs.assembly import build_filesystem
from octuefs.config import MountConfig
from octuefs.errors import (
    AttributeNotSupported,
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    InvalidMetadata,
    IsADirectory,
    NoSuchAttribute,
    NotSupported,
    ReadOnlyAttribute,
)
from octuefs.fs.core import FileSystem
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import read as read_file

MiB = 1024 * 1024


@pytest.fixture
def bucket():
    return FakeBucket("core-test")


def make_fs(bucket, tmp_path, **overrides) -> FileSystem:
    config = MountConfig(bucket=bucket.name, mountpoint=str(tmp_path / "mnt"), cache_dir=str(tmp_path / "cache"),
                         block_size=overrides.pop("block_size", MiB), **overrides)
    return build_filesystem(bucket, config)


@pytest.fixture
def fs(bucket, tmp_path):
    return make_fs(bucket, tmp_path)


def write_file(fs: FileSystem, path: str, data: bytes) -> None:
    fh = fs.create(path, os.O_WRONLY | os.O_CREAT)
    fs.write(fh, data, 0)
    fs.flush(fh)
    fs.release(fh)
    settle(fs)


def settle(fs: FileSystem) -> None:
    """Wait for write-back: close returns before the upload."""
    assert fs.uploader.sync(timeout=10) == 0


# --- files ----------------------------------------------------------------------------------


def test_close_of_a_new_file_uploads_data_and_metadata_in_one_request(fs, bucket):
    write_file(fs, "/data.csv", b"a,b\n1,2\n")
    assert bucket.calls["upload"] == 1
    assert bucket.calls["patch"] == 0
    info = bucket.stat("data.csv")
    assert bucket.objects()["data.csv"] == b"a,b\n1,2\n"
    assert json.loads(info.metadata["octue__id"])  # a fresh id, in the SDK layout
    assert info.metadata["octue__labels"] == '{"_type": "set", "items": []}'


def test_closing_an_unchanged_file_sends_nothing(fs, bucket):
    bucket.upload_bytes("x.txt", b"hello")
    bucket.reset_calls()
    fh = fs.open("/x.txt", os.O_RDWR)
    assert fs.read(fh, 100, 0) == b"hello"
    fs.flush(fh)
    fs.release(fh)
    assert bucket.calls["upload"] == bucket.calls["patch"] == 0


def test_reads_fetch_only_the_blocks_they_touch(bucket, tmp_path):
    data = os.urandom(10 * MiB)
    bucket.upload_bytes("big.bin", data)
    fs = make_fs(bucket, tmp_path, block_size=MiB)
    fh = fs.open("/big.bin", os.O_RDONLY)
    bucket.reset_calls()
    assert fs.read(fh, 100, 5 * MiB + 10) == data[5 * MiB + 10 : 5 * MiB + 110]
    assert bucket.calls["read"] == 1 and bucket.calls["download"] == 0
    assert fs.read(fh, 100, 5 * MiB + 500) == data[5 * MiB + 500 : 5 * MiB + 600]
    assert bucket.calls["read"] == 1  # same block: served from the cache
    fs.release(fh)


def test_random_write_into_an_existing_object_keeps_the_rest(fs, bucket):
    bucket.upload_bytes("f.bin", b"0123456789")
    fh = fs.open("/f.bin", os.O_RDWR)
    fs.write(fh, b"XY", 4)
    fs.flush(fh)
    fs.release(fh)
    settle(fs)
    assert bucket.objects()["f.bin"] == b"0123XY6789"


def test_truncate_by_path_uploads_at_once(fs, bucket):
    bucket.upload_bytes("t.txt", b"abcdef")
    fs.truncate("/t.txt", 2)
    settle(fs)
    assert bucket.objects()["t.txt"] == b"ab"
    assert fs.getattr("/t.txt").size == 2


def test_open_with_o_trunc_then_write_replaces_content_with_one_upload(fs, bucket):
    bucket.upload_bytes("t.txt", b"old content")
    bucket.reset_calls()
    fh = fs.open("/t.txt", os.O_WRONLY | os.O_TRUNC)
    fs.write(fh, b"new", 0)
    fs.flush(fh)
    fs.release(fh)
    settle(fs)
    assert bucket.objects()["t.txt"] == b"new"
    assert bucket.calls["upload"] == 1 and bucket.calls["read"] == 0


def test_a_conflicting_change_in_the_bucket_is_kept_and_ours_goes_beside_it(fs, bucket, caplog):
    bucket.upload_bytes("c.txt", b"v1")
    fh = fs.open("/c.txt", os.O_RDWR)
    fs.write(fh, b"mine", 0)
    bucket.upload_bytes("c.txt", b"theirs")  # another machine writes meanwhile
    with caplog.at_level(logging.WARNING, logger="octuefs"):
        fs.flush(fh)
        fs.release(fh)
        settle(fs)
    objects = bucket.objects()
    assert objects["c.txt"] == b"theirs"
    [copy] = [n for n in objects if n.startswith("c.octuefs-conflict-") and n.endswith(".txt")]
    assert objects[copy] == b"mine"
    warning = [r.getMessage() for r in caplog.records if "conflict" in r.getMessage()]
    assert warning and "c.txt" in warning[0] and copy in warning[0]
    assert fs.uploader.status()["conflicts"][-1]["saved_as"] == copy


# --- directories ----------------------------------------------------------------------------


def test_directories_come_from_markers_and_implicit_prefixes(fs, bucket):
    bucket.upload_bytes("explicit/", b"")
    bucket.upload_bytes("implicit/deep/file.txt", b"x")
    bucket.upload_bytes("top.txt", b"abc")
    names = {name: attr for name, attr in fs.readdir("/")}
    assert set(names) == {"explicit", "implicit", "top.txt"}
    assert names["explicit"].is_dir and names["implicit"].is_dir and not names["top.txt"].is_dir
    assert names["top.txt"].size == 3
    assert fs.getattr("/implicit/deep").is_dir
    assert [n for n, _ in fs.readdir("/explicit")] == []


def test_ls_l_of_a_directory_costs_one_list_request(fs, bucket):
    for i in range(50):
        bucket.upload_bytes(f"d/f{i}", b"x" * i, {"octue__tags": '{"i": %d}' % i})
    bucket.reset_calls()
    assert fs.getattr("/d").is_dir  # the kernel's LOOKUP: it fetches d/'s listing too (the probe)
    entries = fs.readdir("/d")
    for name, _ in entries:
        fs.getattr(f"/d/{name}")
        fs.listxattr(f"/d/{name}")
        fs.getxattr(f"/d/{name}", "user.octue.tags")
    assert len(entries) == 50
    assert bucket.calls["list"] <= 2  # d/'s, and the parent's (sent side by side with it)
    assert bucket.calls["stat"] == 0 and bucket.calls["read"] == 0


def test_names_a_path_cannot_show_are_skipped_with_one_warning(fs, bucket, caplog):
    bucket.upload_bytes("ok.txt", b"1")
    bucket.upload_bytes("a//b", b"2")
    bucket.upload_bytes("x/./y", b"3")
    bucket.upload_bytes("n" * 300, b"4")
    with caplog.at_level(logging.WARNING, logger="octuefs"):
        names = [n for n, _ in fs.readdir("/")]
        fs.metacache.clear()
        fs.readdir("/")
    assert "ok.txt" in names and "n" * 300 not in names
    warnings = [r for r in caplog.records if "n" * 300 in r.getMessage()]
    assert len(warnings) == 1


def test_readdir_gives_the_attributes_getattr_gives_for_files_being_written(fs, bucket):
    """The kernel may keep a listing's attributes as the files' own (READDIRPLUS)."""
    bucket.upload_bytes("d/old.txt", b"12345")
    bucket.upload_bytes("d/same.txt", b"abc")
    assert {n: a.size for n, a in fs.readdir("/d")} == {"old.txt": 5, "same.txt": 3}  # listing now cached
    grown = fs.open("/d/old.txt", os.O_RDWR)
    fs.write(grown, b"x" * 95, 5)
    fresh = fs.create("/d/new.txt", os.O_WRONLY | os.O_CREAT)
    fs.write(fresh, b"y" * 7, 0)
    entries = fs.readdir("/d")
    assert sorted((n, a.size) for n, a in entries) == [("new.txt", 7), ("old.txt", 100), ("same.txt", 3)]
    for name, attr in entries:
        assert fs.getattr(f"/d/{name}") == attr
    for fh in (grown, fresh):
        fs.flush(fh)
        fs.release(fh)
    settle(fs)
    assert {n: a.size for n, a in fs.readdir("/d")} == {"old.txt": 100, "same.txt": 3, "new.txt": 7}


def test_readdir_of_100k_objects_pages_through(bucket, tmp_path):
    for i in range(100_000):
        bucket.upload_bytes(f"big/{i:06d}", b"")
    fs = make_fs(bucket, tmp_path)
    bucket.reset_calls()
    names = [n for n, _ in fs.readdir("/big")]
    assert len(names) == 100_000 and names[0] == "000000" and names[-1] == "099999"
    assert bucket.calls["list"] >= 100  # many pages, each bounded


def test_mkdir_rmdir(fs, bucket):
    fs.mkdir("/new")
    assert "new/" in bucket.objects()
    with pytest.raises(FileExists):
        fs.mkdir("/new")
    write_file(fs, "/new/f.txt", b"x")
    with pytest.raises(DirectoryNotEmpty):
        fs.rmdir("/new")
    fs.unlink("/new/f.txt")
    fs.rmdir("/new")
    assert bucket.objects() == {}
    with pytest.raises(FileNotFound):
        fs.getattr("/new")


def test_rename_file_keeps_all_metadata(fs, bucket):
    write_file(fs, "/a.txt", b"data")
    fs.setxattr("/a.txt", "user.octue.labels", b"raw")  # queued: a change elsewhere comes first
    bucket.patch_metadata("a.txt", {"someone-else": "kept"})
    fs.metacache.clear()
    before = bucket.stat("a.txt").metadata
    fs.rename("/a.txt", "/b.txt")
    assert "a.txt" not in bucket.objects()
    after = bucket.stat("b.txt")
    assert json.loads(after.metadata["octue__labels"])["items"] == ["raw"]  # the setfattr went with it
    assert {k: v for k, v in after.metadata.items() if k != "octue__labels"} == {
        k: v for k, v in before.items() if k != "octue__labels"}  # and so did the change made elsewhere
    assert read_file(fs, "/b.txt") == b"data"


def test_rename_directory_moves_everything_and_respects_the_limit(bucket, tmp_path):
    fs = make_fs(bucket, tmp_path, rename_dir_limit=3)
    for n in ("d/1", "d/2", "d/sub/3"):
        bucket.upload_bytes(n, n.encode())
    fs.rename("/d", "/e")
    assert set(bucket.objects()) == {"e/", "e/1", "e/2", "e/sub/3"}  # a marker keeps "e" if it empties
    bucket.upload_bytes("e/4", b"4")
    fs.metacache.clear()
    with pytest.raises(NotSupported, match="rename-dir-limit"):
        fs.rename("/e", "/f")
    assert set(bucket.objects()) == {"e/", "e/1", "e/2", "e/sub/3", "e/4"}


def test_unlink_and_is_a_directory(fs, bucket):
    bucket.upload_bytes("d/x", b"1")
    with pytest.raises(IsADirectory):
        fs.unlink("/d")
    fs.unlink("/d/x")
    assert bucket.objects() == {}


# --- extended attributes -------------------------------------------------------------------


def md5(bucket, name):
    return hashlib.md5(bucket.objects()[name]).hexdigest(), bucket.stat(name).md5


def test_setxattr_on_a_saved_file_is_one_patch_with_content_untouched(fs, bucket):
    bucket.upload_bytes("m.csv", b"content", {"other": "kept"})
    before = bucket.stat("m.csv")
    bucket.reset_calls()
    fs.setxattr("/m.csv", "user.octue.tags", b'{"a": 1}')
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.calls["patch"] == 1 and bucket.calls["upload"] == 0
    after = bucket.stat("m.csv")
    assert (after.md5, after.crc32c, after.size) == (before.md5, before.crc32c, before.size)
    assert after.metadata["octue__tags"] == '{"a": 1}'
    assert after.metadata["other"] == "kept"
    assert fs.getxattr("/m.csv", "user.octue.tags.a") == b"1"  # shows at once


def test_setxattr_on_a_file_with_unsaved_data_goes_up_with_the_data(fs, bucket):
    fh = fs.create("/n.csv", os.O_WRONLY)
    fs.write(fh, b"x", 0)
    fs.setxattr("/n.csv", "user.octue.labels", b"cleaned new")
    assert bucket.calls["patch"] == 0 and "n.csv" not in bucket.objects()
    fs.flush(fh)
    fs.release(fh)
    settle(fs)
    assert bucket.calls["upload"] == 1 and bucket.calls["patch"] == 0
    assert json.loads(bucket.stat("n.csv").metadata["octue__labels"])["items"] == ["cleaned", "new"]


def test_a_bad_value_is_refused_and_leaves_the_object_as_it_was(fs, bucket):
    bucket.upload_bytes("b.csv", b"x", {"octue__labels": '{"_type": "set", "items": ["raw"]}'})
    before = bucket.stat("b.csv")
    with pytest.raises(InvalidMetadata, match="cluster"):  # the FUSE layer logs this message
        fs.setxattr("/b.csv", "user.octue.cluster", b"not-a-number")
    assert bucket.stat("b.csv") == before


def test_xattr_errors(fs, bucket):
    bucket.upload_bytes("e.csv", b"x")
    bucket.upload_bytes("dir/", b"")
    bucket.reset_calls()
    with pytest.raises(NoSuchAttribute):
        fs.getxattr("/e.csv", "security.capability")
    assert sum(bucket.calls.values()) <= 1  # at most the first stat of the file
    with pytest.raises(NoSuchAttribute):
        fs.getxattr("/e.csv", "user.octue.sequence")
    with pytest.raises(AttributeNotSupported):
        fs.setxattr("/e.csv", "security.other", b"x")
    with pytest.raises(ReadOnlyAttribute):
        fs.setxattr("/e.csv", "user.octue.id", b"x")
    assert fs.listxattr("/dir") == []
    with pytest.raises(NoSuchAttribute):
        fs.getxattr("/dir", "user.octue.tags")
    with pytest.raises(AttributeNotSupported):  # a directory is a dataset: no timestamp (test_xattrs_datasets.py)
        fs.setxattr("/dir", "user.octue.timestamp", b"0")


def test_gcs_attributes(fs, bucket):
    bucket.upload_bytes("g.csv", b"hello", content_type="text/csv")
    assert fs.getxattr("/g.csv", "user.gcs.md5") == hashlib.md5(b"hello").hexdigest().encode()
    assert fs.getxattr("/g.csv", "user.gcs.content_type") == b"text/csv"
    fs.setxattr("/g.csv", "user.gcs.content_type", b"text/plain")
    assert fs.uploader.sync(timeout=10) == 0
    assert bucket.stat("g.csv").content_type == "text/plain"
    assert bucket.objects()["g.csv"] == b"hello"
    with pytest.raises(ReadOnlyAttribute):
        fs.setxattr("/g.csv", "user.gcs.md5", b"00")


def test_a_slow_upload_does_not_block_ls_or_other_files(fs, bucket):
    bucket.upload_bytes("other.txt", b"other")
    started, release = threading.Event(), threading.Event()
    real_upload = bucket.upload_file

    def slow_upload(*args, **kwargs):
        started.set()
        assert release.wait(10)
        return real_upload(*args, **kwargs)

    bucket.upload_file = slow_upload
    fh = fs.create("/slow.bin", os.O_WRONLY)
    fs.write(fh, b"x" * 1000, 0)
    saver = threading.Thread(target=fs.flush, args=(fh,))
    saver.start()
    try:
        assert started.wait(5)
        assert {n for n, _ in fs.readdir("/")} == {"other.txt", "slow.bin"}
        assert fs.getattr("/slow.bin").size == 1000
        assert read_file(fs, "/other.txt") == b"other"
    finally:
        release.set()
        saver.join(10)
    fs.release(fh)
    settle(fs)
    assert bucket.objects()["slow.bin"] == b"x" * 1000


def test_a_prefix_mount_sees_only_its_prefix(bucket, tmp_path):
    bucket.upload_bytes("proj/run1/a.csv", b"a")
    bucket.upload_bytes("proj/run1/sub/b.csv", b"b")
    bucket.upload_bytes("proj/other.csv", b"x")
    fs = make_fs(bucket, tmp_path, prefix="proj/run1/")
    assert fs.getattr("/").is_dir
    assert sorted(n for n, _ in fs.readdir("/")) == ["a.csv", "sub"]
    write_file(fs, "/c.csv", b"c")
    assert bucket.objects()["proj/run1/c.csv"] == b"c"


def test_a_failing_upload_keeps_the_data_and_retries_until_it_lands(fs, bucket):
    from octuefs.errors import TransientError

    bucket.set_fault_rate(1.0, lambda: TransientError("503 from the bucket"), operations=("upload",))
    fh = fs.create("/keep.csv", os.O_WRONLY)
    fs.write(fh, b"precious", 0)
    fs.flush(fh)  # close does not wait for the network
    fs.release(fh)
    assert fs.uploader.sync(timeout=3) == 1  # still failing, still queued
    [row] = fs.uploader.status()["uploads"]
    assert row["name"] == "keep.csv" and "503" in row["last_error"] and row["attempts"] >= 1
    assert "keep.csv" not in bucket.objects()
    assert read_file(fs, "/keep.csv") == b"precious"  # the mount shows the local version
    assert fs.getattr("/keep.csv").size == 8
    bucket.set_fault_rate(0.0)
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.objects()["keep.csv"] == b"precious"


def test_fsync_waits_until_the_file_is_in_the_bucket(fs, bucket):
    release = threading.Event()
    real_upload = bucket.upload_file

    def held_upload(*args, **kwargs):
        assert release.wait(10)
        return real_upload(*args, **kwargs)

    bucket.upload_file = held_upload
    fh = fs.create("/f.csv", os.O_WRONLY)
    fs.write(fh, b"sync me", 0)
    syncer = threading.Thread(target=fs.fsync, args=(fh,))
    syncer.start()
    syncer.join(0.5)
    assert syncer.is_alive()  # fsync is still waiting for the upload
    release.set()
    syncer.join(10)
    assert not syncer.is_alive()
    assert bucket.objects()["f.csv"] == b"sync me"  # ... and returned only once it was there
    fs.release(fh)


def test_setfattr_on_a_pending_upload_is_merged_into_it(fs, bucket):
    release = threading.Event()
    real_upload = bucket.upload_file
    bucket.upload_file = lambda *a, **k: (release.wait(10), real_upload(*a, **k))[1]
    for name in ("/a.csv", "/b.csv"):  # b waits behind nothing; both are held
        fh = fs.create(name, os.O_WRONLY)
        fs.write(fh, b"data", 0)
        fs.flush(fh)
        fs.release(fh)
    fs.setxattr("/b.csv", "user.octue.labels", b"late")
    assert fs.getxattr("/b.csv", "user.octue.labels") == b"late"
    release.set()
    settle(fs)
    assert json.loads(bucket.stat("b.csv").metadata["octue__labels"])["items"] == ["late"]
    assert bucket.objects()["b.csv"] == b"data"
    assert bucket.calls["patch"] == 0


def test_unsaved_changes_are_saved_at_shutdown(fs, bucket):
    fh = fs.create("/late.csv", os.O_WRONLY)
    fs.write(fh, b"late", 0)
    assert fs.shutdown() == 0
    assert bucket.objects()["late.csv"] == b"late"


def test_a_readers_close_does_not_upload_a_writers_unfinished_data(fs, bucket):
    writer = fs.create("/w.csv", os.O_WRONLY)
    fs.write(writer, b"half", 0)
    reader = fs.open("/w.csv", os.O_RDONLY)
    assert fs.read(reader, 10, 0) == b"half"
    fs.flush(reader)
    fs.release(reader)
    assert "w.csv" not in bucket.objects()
    fs.write(writer, b"-done", 4)
    fs.flush(writer)
    fs.release(writer)
    settle(fs)
    assert bucket.objects()["w.csv"] == b"half-done"
    assert bucket.calls["upload"] == 1


def test_a_new_mount_finishes_what_a_dead_one_left_and_never_uploads_unclosed_writes(bucket, tmp_path):
    from octuefs.errors import TransientError

    first = make_fs(bucket, tmp_path)
    bucket.set_fault_rate(1.0, lambda: TransientError("bucket unreachable"), operations=("upload",))
    write_one = first.create("/closed.csv", os.O_WRONLY)
    first.write(write_one, b"closed before the crash", 0)
    first.setxattr("/closed.csv", "user.octue.tags", b'{"run": 7}')
    first.flush(write_one)
    first.release(write_one)
    unclosed = first.create("/unclosed.csv", os.O_WRONLY)
    first.write(unclosed, b"half writ", 0)
    first.uploader.shutdown(drain=False)  # the daemon dies here: nothing is drained or cleaned up
    bucket.set_fault_rate(0.0)

    second = make_fs(bucket, tmp_path)  # same cache directory
    assert second.getattr("/closed.csv").size == 23  # shown from the journal before it lands
    settle(second)
    assert bucket.objects() == {"closed.csv": b"closed before the crash"}
    assert json.loads(bucket.stat("closed.csv").metadata["octue__tags"]) == {"run": 7}


def test_reopening_while_uploads_finish_never_loses_the_file(fs, bucket):
    """Regression: a node dropped by a finishing upload between lookup and open gave ENOENT,
    or an empty new file."""
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> None:
        path, data = f"/r{i:03d}.bin", bytes([i % 251]) * (1000 + i)
        with pytest.raises(FileNotFound):
            fs.getattr(path)
        fh = fs.create(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fs.write(fh, data, 0)
        fs.flush(fh)
        fs.release(fh)
        assert read_file(fs, path) == data

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, range(300)))
    settle(fs)
    assert len(bucket.objects()) == 300


def test_an_object_deleted_in_the_bucket_meanwhile_is_not_resurrected_silently(fs, bucket):
    bucket.upload_bytes("gone.csv", b"v1")
    fh = fs.open("/gone.csv", os.O_RDWR)
    fs.write(fh, b"mine", 0)
    bucket.delete("gone.csv")  # someone deletes it meanwhile
    fs.flush(fh)
    fs.release(fh)
    settle(fs)
    objects = bucket.objects()
    assert "gone.csv" not in objects
    [copy] = [n for n in objects if n.startswith("gone.octuefs-conflict-")]
    assert objects[copy] == b"mine"
    assert fs.uploader.status()["conflicts"][-1]["theirs"] == "deleted"
