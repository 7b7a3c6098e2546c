"""Files and directories through a real mount, driven by ordinary tools; the bucket is checked too."""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest

from octuefs.errors import NotFound
from octuefs.mount import wait_for_exit


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(list(cmd), capture_output=True, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {result.stderr!r}")
    return result


def test_cp_in_and_cat_back(mount, tmp_path):
    src = tmp_path / "src.csv"
    src.write_bytes(b"time,value\n0,1.5\n")
    sh("cp", str(src), str(mount / "data.csv"))
    assert sh("cat", str(mount / "data.csv")).stdout == b"time,value\n0,1.5\n"
    mount.sync()
    assert mount.bucket.read_range("data.csv", 0, 100) == b"time,value\n0,1.5\n"
    meta = mount.bucket.stat("data.csv").metadata
    assert len(json.loads(meta["octue__id"])) == 36  # a new file gets a fresh Octue id


def test_objects_already_in_the_bucket_show_with_sizes(mount):
    mount.bucket.upload_bytes("a/b/c.txt", b"12345")
    mount.bucket.upload_bytes("top.bin", b"x" * 1000)
    out = sh("ls", "-l", str(mount.path)).stdout.decode()
    assert "top.bin" in out and " 1000 " in out and out.count("\nd") == 1
    assert sh("cat", str(mount / "a/b/c.txt")).stdout == b"12345"


def test_dd_random_write_and_append(mount):
    mount.bucket.upload_bytes("f.bin", b"0123456789")
    sh("dd", "of=" + str(mount / "f.bin"), "bs=1", "seek=3", "conv=notrunc", input=b"AB")
    mount.sync()
    assert mount.bucket.read_range("f.bin", 0, 100) == b"012AB56789"
    with open(mount / "f.bin", "ab") as f:
        f.write(b"++")
    mount.sync()
    assert mount.bucket.read_range("f.bin", 0, 100) == b"012AB56789++"
    assert (mount / "f.bin").read_bytes() == b"012AB56789++"


def test_truncate_command(mount):
    mount.bucket.upload_bytes("t.txt", b"abcdef")
    sh("truncate", "-s", "2", str(mount / "t.txt"))
    mount.sync()
    assert mount.bucket.read_range("t.txt", 0, 100) == b"ab"
    sh("truncate", "-s", "4", str(mount / "t.txt"))
    mount.sync()
    assert mount.bucket.read_range("t.txt", 0, 100) == b"ab\0\0"


def test_mv_keeps_metadata_and_rm_deletes(mount):
    (mount / "a.txt").write_bytes(b"data")
    os.setxattr(mount / "a.txt", "user.octue.labels", b"raw")
    mount.sync()
    before = dict(mount.bucket.stat("a.txt").metadata)
    sh("mv", str(mount / "a.txt"), str(mount / "b.txt"))
    with pytest.raises(NotFound):
        mount.bucket.stat("a.txt")
    assert dict(mount.bucket.stat("b.txt").metadata) == before
    assert os.getxattr(mount / "b.txt", "user.octue.labels") == b"raw"
    sh("rm", str(mount / "b.txt"))
    with pytest.raises(NotFound):
        mount.bucket.stat("b.txt")
    assert not (mount / "b.txt").exists()


def test_mkdir_rmdir_and_directory_rename(mount):
    sh("mkdir", str(mount / "d"))
    assert mount.bucket.stat("d/").size == 0
    (mount / "d" / "x.txt").write_bytes(b"x")
    result = sh("rmdir", str(mount / "d"), check=False)
    assert result.returncode != 0 and b"not empty" in result.stderr
    sh("mv", str(mount / "d"), str(mount / "e"))
    mount.sync()
    assert mount.bucket.read_range("e/x.txt", 0, 10) == b"x"
    assert sorted(os.listdir(mount / "e")) == ["x.txt"]
    sh("rm", str(mount / "e" / "x.txt"))
    sh("rmdir", str(mount / "e"))
    assert os.listdir(mount.path) == []


def test_touch_sets_an_mtime_kept_in_the_bucket(mount):
    mount.bucket.upload_bytes("old.txt", b"x")
    sh("touch", "-m", "-d", "2001-02-03 04:05:06 UTC", str(mount / "old.txt"))
    assert int(os.stat(mount / "old.txt").st_mtime) == 981173106  # shown at once
    mount.sync()  # written back like a setfattr: in the bucket within about a second
    assert mount.bucket.stat("old.txt").metadata["goog-reserved-file-mtime"] == "981173106"
    sh("touch", str(mount / "new.txt"))
    mount.sync()
    assert mount.bucket.stat("new.txt").size == 0


def test_python_open_modes(mount):
    p = mount / "py.txt"
    with open(p, "w") as f:
        f.write("hello")
    with open(p, "r+") as f:
        f.seek(1)
        f.write("E")
    assert p.read_text() == "hEllo"
    with pytest.raises(FileExistsError):
        open(p, "x")
    with pytest.raises(IsADirectoryError):
        open(mount.path, "w")
    with pytest.raises(FileNotFoundError):
        open(mount / "missing.txt")
    mount.sync()
    assert mount.bucket.read_range("py.txt", 0, 100) == b"hEllo"


def test_read_only_mount_refuses_writes(mount_factory):
    m = mount_factory("-o", "ro")
    m.bucket.upload_bytes("r.txt", b"r")
    assert (m / "r.txt").read_bytes() == b"r"
    with pytest.raises(OSError) as info:
        (m / "w.txt").write_bytes(b"w")
    assert info.value.errno == errno.EROFS


def test_prefix_mount_shows_only_the_prefix(mount_factory):
    m = mount_factory(prefix="project/run1")
    m.bucket.upload_bytes("project/run1/result.csv", b"1")
    m.bucket.upload_bytes("elsewhere.csv", b"2")
    assert os.listdir(m.path) == ["result.csv"]
    (m / "new.csv").write_bytes(b"3")
    m.sync()
    assert m.bucket.read_range("project/run1/new.csv", 0, 10) == b"3"


def test_odd_object_names_are_skipped_not_fatal(mount):
    mount.bucket.upload_bytes("ok.txt", b"1")
    mount.bucket.upload_bytes("a//b", b"2")
    mount.bucket.upload_bytes("n" * 300, b"3")
    assert sorted(os.listdir(mount.path)) == ["a", "ok.txt"]
    assert "skipping object" in mount.log_text()


def test_fsync_returns_once_the_file_is_in_the_bucket(mount):
    with open(mount / "synced.bin", "wb") as f:
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
        assert mount.bucket.read_range("synced.bin", 0, 100) == b"durable"  # before close


def test_close_of_an_unchanged_file_sends_nothing(mount):
    mount.bucket.upload_bytes("same.txt", b"same")
    generation = mount.bucket.stat("same.txt").generation
    with open(mount / "same.txt", "r+b") as f:
        assert f.read() == b"same"
    assert mount.bucket.stat("same.txt").generation == generation


def test_lazy_unmount_still_saves_a_file_open_at_the_time(mount):
    from octuefs.mount import read_state

    pid = read_state(str(mount.path))["pid"]
    f = open(mount / "open.txt", "wb")
    try:
        f.write(b"written while unmounting")
        result = subprocess.run(["octuefs", "unmount", "--lazy", str(mount.path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(mount.path)
    finally:
        f.close()  # the daemon still serves open files after a lazy unmount; close saves
    wait_for_exit(pid, 30)  # ... and the daemon finishes its uploads before it exits
    assert mount.bucket.read_range("open.txt", 0, 100) == b"written while unmounting"


def test_unmount_refuses_while_a_file_is_open(mount):
    with open(mount / "busy.txt", "wb") as f:
        f.write(b"x")
        result = subprocess.run(["octuefs", "unmount", str(mount.path)], capture_output=True, text=True)
        assert result.returncode != 0
        assert result.stderr.startswith("octuefs: error: cannot unmount") and "busy" in result.stderr
        assert os.path.ismount(mount.path)
    mount.sync()
    assert mount.bucket.read_range("busy.txt", 0, 10) == b"x"


def test_many_threads_write_and_read_different_files_at_once(mount):
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> bytes:
        data = os.urandom(1000 + i * 997)
        (mount / f"t{i:02d}.bin").write_bytes(data)
        assert (mount / f"t{i:02d}.bin").read_bytes() == data
        return data

    with ThreadPoolExecutor(16) as pool:
        written = list(pool.map(work, range(32)))
    mount.sync()
    for i, data in enumerate(written):
        assert mount.bucket.read_range(f"t{i:02d}.bin", 0, 1 << 20) == data
    assert len(os.listdir(mount.path)) == 32


def test_df_reports_a_filesystem(mount):
    out = sh("df", "-P", str(mount.path)).stdout.decode()
    assert "octuefs:" in out
    assert os.statvfs(mount.path).f_namemax == 255


def test_a_large_file_goes_up_in_parallel_parts_and_arrives_whole(mount):
    """From 64 MiB a file is uploaded as parts composed into the object (writeback.composite)."""
    data = os.urandom(1 << 20) * 70  # 70 MiB
    with open(mount / "big.bin", "wb") as f:
        f.write(data)
    os.setxattr(mount / "big.bin", "user.octue.labels", b"large")
    mount.sync()
    info = mount.bucket.stat("big.bin")
    assert info.size == len(data) and json.loads(info.metadata["octue__labels"])["items"] == ["large"]
    assert mount.bucket.read_range("big.bin", 0, len(data)) == data
    assert os.listdir(mount.path) == ["big.bin"]  # no parts left, and their place is hidden
    assert not list(mount.bucket.iter_pages(".octuefs-parts/", delimiter=None))[0].objects
