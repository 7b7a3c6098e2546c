"""POSIX edge cases of the core calls through a real mount (issue 16 part 5), each checked in
the bucket too: rename over files and directories and the errors POSIX names, name lengths,
O_EXCL and O_TRUNC, and the times a write, a truncate and a rename move.

One mount for the module (every test works in a directory of its own), with the kernel's
attribute and entry caches off, so that every ``stat`` asks the daemon: the times checked are
the mount's, not the kernel's memory of them. The tests at the end show the divergences
docs/semantics.md lists ("POSIX: what octuefs does not do and why").
"""

from __future__ import annotations

import errno
import os
import time
import uuid

import pytest

from octuefs.errors import NotFound
from octuefs.namespace import CONFLICT_MARK_BYTES, OBJECT_NAME_MAX


@pytest.fixture(scope="module")
def shared(module_mount_factory):
    return module_mount_factory("--attr-timeout", "0", "--entry-timeout", "0", "--rename-dir-limit", "20")


@pytest.fixture
def m(shared):
    """The module's mount, and a fresh directory on it for this test: ``m.d`` (path), ``m.p`` (object prefix)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    os.mkdir(shared / name)
    shared.d, shared.p = shared.path / name, name + "/"
    return shared


def put(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def objects(m) -> dict[str, bytes]:
    """Every object under the test's directory, synced first: name (after it) -> content."""
    m.sync()
    return {o.name[len(m.p):]: m.bucket.read_range(o.name, 0, 1 << 20) if o.size else b""
            for o in m.bucket.list_all(m.p, delimiter=None)[0]}


def fails(code: int, call, *args) -> None:
    with pytest.raises(OSError) as info:
        call(*args)
    assert info.value.errno == code, f"{call.__name__}{args}: {info.value!r}, not {errno.errorcode[code]}"


# --- rename ------------------------------------------------------------------------------------


def test_rename_over_an_existing_file_replaces_it(m):
    put(m.d / "a", b"new")
    put(m.d / "b", b"old content")
    os.rename(m.d / "a", m.d / "b")
    assert not os.path.exists(m.d / "a") and (m.d / "b").read_bytes() == b"new"
    assert objects(m) == {"": b"", "b": b"new"}


def test_rename_of_a_directory_over_an_empty_one_replaces_it(m):
    os.makedirs(m.d / "src/sub")
    put(m.d / "src/sub/f", b"f")
    os.mkdir(m.d / "empty")
    os.rename(m.d / "src", m.d / "empty")
    assert sorted(os.listdir(m.d)) == ["empty"] and (m.d / "empty/sub/f").read_bytes() == b"f"
    assert objects(m) == {"": b"", "empty/": b"", "empty/sub/": b"", "empty/sub/f": b"f"}


def test_rename_over_a_directory_that_is_not_empty_is_enotempty_and_moves_nothing(m):
    os.mkdir(m.d / "src")
    put(m.d / "src/f", b"1")
    os.mkdir(m.d / "full")
    put(m.d / "full/g", b"2")
    before = objects(m)
    fails(errno.ENOTEMPTY, os.rename, m.d / "src", m.d / "full")
    assert objects(m) == before


def test_rename_of_a_file_over_a_directory_is_eisdir_and_the_reverse_enotdir(m):
    put(m.d / "f", b"file")
    os.mkdir(m.d / "dir")
    before = objects(m)
    fails(errno.EISDIR, os.rename, m.d / "f", m.d / "dir")
    fails(errno.ENOTDIR, os.rename, m.d / "dir", m.d / "f")
    assert objects(m) == before and (m.d / "f").read_bytes() == b"file"


def test_rename_of_a_directory_into_its_own_subtree_is_einval(m):
    os.makedirs(m.d / "a/b")
    fails(errno.EINVAL, os.rename, m.d / "a", m.d / "a/b/c")
    assert os.path.isdir(m.d / "a/b") and not os.path.exists(m.d / "a/b/c")


def test_a_rename_over_a_file_changed_elsewhere_is_refused_and_loses_nothing(m):
    put(m.d / "src", b"mine")
    put(m.d / "dst", b"first")
    m.sync()
    assert (m.d / "dst").read_bytes() == b"first"  # the mount has seen this version
    m.bucket.upload_bytes(m.p + "dst", b"changed elsewhere")
    fails(errno.EIO, os.rename, m.d / "src", m.d / "dst")
    assert m.bucket.read_range(m.p + "dst", 0, 100) == b"changed elsewhere"
    assert m.bucket.read_range(m.p + "src", 0, 100) == b"mine"


# --- errors POSIX names --------------------------------------------------------------------------


def test_directory_calls_on_files_and_file_calls_on_directories(m):
    put(m.d / "f", b"x")
    os.mkdir(m.d / "dir")
    put(m.d / "dir/inner", b"y")
    fails(errno.ENOTDIR, os.rmdir, m.d / "f")
    fails(errno.EISDIR, os.unlink, m.d / "dir")
    fails(errno.ENOTEMPTY, os.rmdir, m.d / "dir")
    fails(errno.EEXIST, os.mkdir, m.d / "f")
    fails(errno.EEXIST, os.mkdir, m.d / "dir")
    fails(errno.ENOTDIR, os.open, m.d / "f/under", os.O_CREAT | os.O_WRONLY)
    fails(errno.ENOTDIR, os.mkdir, m.d / "f/under")
    fails(errno.ENOTDIR, os.listdir, m.d / "f")
    fails(errno.EISDIR, os.open, m.d / "dir", os.O_WRONLY)
    assert objects(m) == {"": b"", "f": b"x", "dir/": b"", "dir/inner": b"y"}


def test_a_name_over_255_bytes_is_enametoolong_and_makes_nothing(m):
    long = "n" * 256
    fails(errno.ENAMETOOLONG, os.open, m.d / long, os.O_CREAT | os.O_WRONLY)
    fails(errno.ENAMETOOLONG, os.mkdir, m.d / long)
    put(m.d / "f", b"x")
    fails(errno.ENAMETOOLONG, os.rename, m.d / "f", m.d / long)
    put(m.d / ("n" * 255), b"255 is fine")
    assert objects(m) == {"": b"", "f": b"x", "n" * 255: b"255 is fine"}


def test_an_object_name_over_what_gcs_takes_is_enametoolong_and_makes_nothing(m):
    # Directories of 200-byte names until the object name passes GCS's 1,024 bytes, less the
    # room a conflict copy's mark needs.
    limit = OBJECT_NAME_MAX - CONFLICT_MARK_BYTES
    path, name = m.d, m.p
    while len((name + "d" * 200 + "/").encode()) <= limit:
        path, name = path / ("d" * 200), name + "d" * 200 + "/"
        os.mkdir(path)
    fits = limit - len(name.encode())
    put(path / ("f" * fits), b"fits")
    fails(errno.ENAMETOOLONG, os.open, path / ("f" * (fits + 1)), os.O_CREAT | os.O_WRONLY)
    fails(errno.ENAMETOOLONG, os.mkdir, path / ("g" * (fits + 1)))
    fails(errno.ENAMETOOLONG, os.rename, path / ("f" * fits), path / ("f" * (fits + 1)))
    m.sync()
    assert m.bucket.read_range(name + "f" * fits, 0, 10) == b"fits"
    assert [o.name for o in m.bucket.list_all(name, delimiter=None)[0] if not o.name.endswith("/")] == [name + "f" * fits]


def test_o_excl_refuses_an_existing_file_and_o_trunc_empties_one(m):
    put(m.d / "f", b"content")
    m.sync()
    fails(errno.EEXIST, os.open, m.d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.mkdir(m.d / "dir")
    fails(errno.EEXIST, os.open, m.d / "dir", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert objects(m)["f"] == b"content"
    fd = os.open(m.d / "f", os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.close(fd)
    assert objects(m)["f"] == b""
    fd = os.open(m.d / "g", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, b"new")
    os.close(fd)
    assert objects(m)["g"] == b"new"


def test_a_file_larger_than_a_gcs_object_is_efbig_and_changes_nothing(m):
    put(m.d / "f", b"keep")
    m.sync()
    fails(errno.EFBIG, os.truncate, m.d / "f", 999999999999999)
    with open(m.d / "f", "r+b") as f:
        fails(errno.EFBIG, os.pwrite, f.fileno(), b"x", 6 * 1024**4)
    assert objects(m)["f"] == b"keep" and os.stat(m.d / "f").st_size == 4


# --- times -------------------------------------------------------------------------------------


def times(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_ctime_ns


def test_a_write_moves_mtime_and_ctime_and_its_upload_landing_moves_neither(m):
    put(m.d / "f", b"one")
    first = times(m.d / "f")
    time.sleep(0.05)
    with open(m.d / "f", "ab") as f:
        f.write(b"two")
    written = times(m.d / "f")
    assert written[0] > first[0] and written[1] > first[1]
    time.sleep(1.1)  # the upload lands in a later second than the write
    m.sync()
    assert times(m.d / "f") == written
    os.listdir(m.d)  # a listing's entries show the same
    assert times(m.d / "f") == written


def test_truncate_moves_mtime_and_ctime_and_a_failed_one_moves_neither(m):
    put(m.d / "f", b"abcdef")
    before = times(m.d / "f")
    time.sleep(0.05)
    os.truncate(m.d / "f", 2)
    after = times(m.d / "f")
    assert after[0] > before[0] and after[1] > before[1]
    fails(errno.EFBIG, os.truncate, m.d / "f", 10**16)
    assert times(m.d / "f") == after
    assert objects(m)["f"] == b"ab"


def test_a_rename_moves_the_ctime_and_keeps_the_mtime(m):
    put(m.d / "f", b"data")
    m.sync()
    mtime, ctime = times(m.d / "f")
    time.sleep(0.05)
    os.rename(m.d / "f", m.d / "g")
    renamed = times(m.d / "g")
    assert renamed[0] == mtime and renamed[1] > ctime
    assert objects(m) == {"": b"", "g": b"data"}


def test_a_directory_rename_moves_each_files_ctime_and_keeps_its_mtime(m):
    os.mkdir(m.d / "dir")
    put(m.d / "dir/clean", b"saved")
    m.sync()
    with open(m.d / "dir/open", "wb") as f:  # open (and written) through the rename
        f.write(b"open")
        before = {name: times(m.d / "dir" / name) for name in ("clean", "open")}
        time.sleep(0.05)
        os.rename(m.d / "dir", m.d / "moved")
        for name, (mtime, ctime) in before.items():
            after = times(m.d / "moved" / name)
            assert after[0] == mtime and after[1] > ctime, name
    assert objects(m) == {"": b"", "moved/": b"", "moved/clean": b"saved", "moved/open": b"open"}


def test_making_and_removing_entries_moves_the_directory_times(m):
    os.mkdir(m.d / "dir")
    seen = [times(m.d / "dir")]
    for change in (lambda: put(m.d / "dir/f", b"x"), lambda: os.rename(m.d / "dir/f", m.d / "dir/g"),
                   lambda: os.unlink(m.d / "dir/g"), lambda: os.mkdir(m.d / "dir/sub"),
                   lambda: os.rmdir(m.d / "dir/sub")):
        time.sleep(0.05)
        change()
        seen.append(times(m.d / "dir"))
        assert seen[-1][0] > seen[-2][0] and seen[-1][1] > seen[-2][1]
    time.sleep(0.05)
    with open(m.d / "dir/f2", "wb") as f:  # a file made, then only written: the directory moves once
        made = times(m.d / "dir")
        time.sleep(0.05)
        f.write(b"data")
    assert times(m.d / "dir") == made


# --- what octuefs does not do (docs/semantics.md, "POSIX: what octuefs does not do and why") ---


def test_a_directory_rename_moves_object_by_object_and_refuses_past_its_limit(m):
    os.mkdir(m.d / "big")
    for i in range(20):  # with its marker, 21 objects; the module's mount: --rename-dir-limit 20
        put(m.d / f"big/{i:02d}", b"x")
    before = objects(m)
    fails(errno.ENOTSUP, os.rename, m.d / "big", m.d / "moved")
    assert objects(m) == before and not os.path.exists(m.d / "moved")
    os.unlink(m.d / "big/19")
    os.rename(m.d / "big", m.d / "moved")  # one copy and one delete per object, not atomic
    after = objects(m)
    assert sorted(after) == ["", "moved/"] + [f"moved/{i:02d}" for i in range(19)]


def test_a_directory_has_two_links_whatever_it_holds(m):
    os.makedirs(m.d / "dir/a")
    os.makedirs(m.d / "dir/b")
    assert os.stat(m.d / "dir").st_nlink == 2  # POSIX filesystems say 4: 2 + one per subdirectory


def test_a_sparse_file_goes_up_whole_with_its_holes_as_zeros(m):
    with open(m.d / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(10)
        f.write(b"x")
    m.sync()
    info = m.bucket.stat(m.p + "sparse")
    assert info.size == 1 << 20
    assert m.bucket.read_range(m.p + "sparse", 0, 16) == b"\0" * 10 + b"x" + b"\0" * 5


def test_times_kept_in_memory_only_another_mount_shows_the_buckets(m, mount_factory):
    put(m.d / "f", b"data")
    written = times(m.d / "f")
    time.sleep(1.1)
    m.sync()
    started = time.time()
    other = mount_factory("--attr-timeout", "0", bucket=m.bucket.name)
    uploaded = m.bucket.stat(m.p + "f").updated.timestamp()
    theirs = times(other / (m.p + "f"))
    assert theirs[0] == theirs[1] == int(uploaded * 1e9) > written[0]
    assert os.stat(other / m.p).st_mtime >= started  # a directory: that mount's start time


def test_a_name_the_bucket_cannot_hold_is_refused_though_posix_allows_it(m):
    with pytest.raises(OSError) as info:
        put(m.d / "line\nfeed", b"x")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(NotFound):
        m.bucket.stat(m.p + "line\nfeed")
