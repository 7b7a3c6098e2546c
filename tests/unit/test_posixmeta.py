"""The POSIX-keys codec (octuefs/octue/posixmeta.py), and the filesystem core on it without FUSE."""

from __future__ import annotations

import os
import stat

import pytest

from octuefs.errors import FileExists, InvalidArgument, NotPermitted
from octuefs.octue import posixmeta as pm
from octuefs.storage.fake import FakeBucket
from tests.unit.corekit import close_write, make_fs

# --- the codec --------------------------------------------------------------------------------


def test_keys_written_by_preserve_posix_decode():
    facts = pm.decode({"goog-reserved-posix-mode": "640", "goog-reserved-posix-uid": "1001",
                       "goog-reserved-posix-gid": "1002", "goog-reserved-file-mtime": "1700000000",
                       "goog-reserved-file-atime": "1600000000", "octue__id": '"x"'})
    assert facts == pm.PosixFacts(mode=0o640, uid=1001, gid=1002, mtime=1_700_000_000, atime=1_600_000_000)
    assert facts.file_type == stat.S_IFREG and not facts.is_symlink


def test_nothing_recorded_is_all_none():
    assert pm.decode({}) == pm.decode(None) == pm.PosixFacts()


@pytest.mark.parametrize("raw", ["", "  ", "abc", "999", "-1", "77777", "6.5"])
def test_a_malformed_or_empty_mode_reads_as_absent(raw):
    assert pm.decode({"goog-reserved-posix-mode": raw}).mode is None


@pytest.mark.parametrize("raw", ["", "x", "-5", "1e3"])
def test_a_malformed_owner_reads_as_absent(raw):
    assert pm.decode({"goog-reserved-posix-uid": raw}).uid is None


@pytest.mark.parametrize("raw", ["", "nan", "inf", "soon", "-3"])
def test_a_malformed_time_reads_as_absent(raw):
    assert pm.decode({"goog-reserved-file-atime": raw}).atime is None


def test_modes_are_written_in_octal_with_special_bits_as_four_digits():
    assert pm.changes(mode=0o644) == {"goog-reserved-posix-mode": "644"}
    assert pm.changes(mode=0o7) == {"goog-reserved-posix-mode": "007"}
    assert pm.changes(mode=0o4755) == {"goog-reserved-posix-mode": "4755"}
    assert pm.changes(mode=stat.S_IFREG | 0o1777) == {"goog-reserved-posix-mode": "1777"}  # type bits dropped
    for mode in (0o644, 0o7, 0o4755, 0o2750, 0o1777):
        assert pm.decode(pm.changes(mode=mode)).mode == mode


def test_owners_of_minus_one_are_left_unchanged():
    assert pm.changes(uid=-1, gid=-1) == {}
    assert pm.changes(uid=0, gid=-1) == {"goog-reserved-posix-uid": "0"}


def test_times_are_whole_seconds():
    assert pm.changes(atime=1_600_000_000.9) == {"goog-reserved-file-atime": "1600000000"}


def test_symlinks_in_both_layouts():
    new = pm.decode(pm.symlink_metadata())
    assert new.is_symlink and new.target is None  # the target is the content
    assert pm.decode({"goog-reserved-file-is-symlink": "True"}).is_symlink
    assert not pm.decode({"goog-reserved-file-is-symlink": "false"}).is_symlink
    old = pm.decode({"gcsfuse_symlink_target": "../a b"})
    assert old.is_symlink and old.target == "../a b"


def test_special_files_round_trip_with_their_device_numbers():
    for kind in (stat.S_IFIFO, stat.S_IFSOCK):
        assert pm.decode(pm.special_metadata(kind)).file_type == kind
    meta = pm.special_metadata(stat.S_IFBLK | 0o600, os.makedev(8, 17))
    assert meta == {"octuefs-file-type": "block", "octuefs-file-rdev": "8:17"}
    facts = pm.decode(meta)
    assert facts.file_type == stat.S_IFBLK and (os.major(facts.rdev), os.minor(facts.rdev)) == (8, 17)
    assert pm.decode({"octuefs-file-type": "char", "octuefs-file-rdev": "x:y"}).rdev == 0
    assert pm.decode({"octuefs-file-type": "teapot"}).file_type == stat.S_IFREG
    with pytest.raises(ValueError):
        pm.special_metadata(stat.S_IFDIR)


def test_apply_sets_and_removes_keys_and_keeps_the_rest():
    custom = {"octue__id": '"x"', "goog-reserved-posix-uid": "5", "other": "kept"}
    assert pm.apply(custom, {"goog-reserved-posix-uid": None, "goog-reserved-posix-mode": "600"}) == {
        "octue__id": '"x"', "other": "kept", "goog-reserved-posix-mode": "600"}


def test_an_upload_of_new_content_drops_the_recorded_mtime_unless_one_is_given():
    custom = {"goog-reserved-file-mtime": "100", "k": "v"}
    assert pm.with_mtime(custom, None, keep=True) == custom
    assert pm.with_mtime(custom, None, keep=False) == {"k": "v"}
    assert pm.with_mtime(custom, 200.7, keep=False) == {"k": "v", "goog-reserved-file-mtime": "200"}


# --- the filesystem core (no FUSE) ------------------------------------------------------------


@pytest.fixture
def fs_on(tmp_path):
    made = []

    def make(bucket, **options):
        fs = make_fs(bucket, tmp_path, patch_pace=0.05, **options)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.shutdown()


def test_chmod_chown_touch_of_a_saved_file_are_one_patch_and_keep_octue_metadata(fs_on):
    bucket = FakeBucket("b")
    bucket.upload_bytes("f", b"data", {"octue__tags": '{"a": 1}', "someone": "else"})
    fs = fs_on(bucket)
    before = bucket.stat("f")
    fs.chmod("/f", 0o600)
    fs.chown("/f", 7, 8)
    fs.set_times("/f", 1000.0, None)
    attr = fs.getattr("/f")  # shown at once
    assert (attr.mode, attr.uid, attr.gid, attr.atime) == (0o600, 7, 8, 1000.0)
    assert fs.uploader.sync(timeout=30) == 0
    after = bucket.stat("f")
    assert (after.generation, after.md5) == (before.generation, before.md5)  # content untouched
    assert dict(after.metadata) == {"octue__tags": '{"a": 1}', "someone": "else", "goog-reserved-posix-mode": "600",
                                    "goog-reserved-posix-uid": "7", "goog-reserved-posix-gid": "8",
                                    "goog-reserved-file-atime": "1000"}


def test_a_new_file_records_its_create_mode_and_creator(fs_on):
    bucket = FakeBucket("b")
    fs = fs_on(bucket)
    fh = fs.create("/n", os.O_WRONLY | os.O_CREAT, 0o640, {"uid": 9})
    fs.write(fh, b"x", 0)
    fs.release(fh)
    assert fs.getattr("/n").mode == 0o640
    assert fs.uploader.sync(timeout=30) == 0
    meta = bucket.stat("n").metadata
    assert (meta["goog-reserved-posix-mode"], meta["goog-reserved-posix-uid"]) == ("640", "9")
    fh = fs.create("/n", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # an existing file keeps its mode
    fs.release(fh)
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.stat("n").metadata["goog-reserved-posix-mode"] == "640"


def test_a_chmod_while_writing_goes_with_the_upload(fs_on):
    bucket = FakeBucket("b")
    fs = fs_on(bucket)
    fh = fs.create("/w", os.O_WRONLY | os.O_CREAT)
    fs.write(fh, b"x", 0)
    fs.chmod("/w", 0o700)
    assert fs.getattr("/w").mode == 0o700
    fs.flush(fh)
    fs.release(fh)
    assert fs.uploader.sync(timeout=30) == 0
    assert bucket.stat("w").metadata["goog-reserved-posix-mode"] == "700"


def test_symlink_readlink_costs_one_get_per_generation(fs_on):
    bucket = FakeBucket("b")
    bucket.upload_bytes("elsewhere", b"target/path", {"goog-reserved-file-is-symlink": "true"})
    fs = fs_on(bucket)
    entries = dict(fs.readdir("/"))
    assert entries["elsewhere"].file_type == stat.S_IFLNK
    reads = []
    real = fs.bucket.read_range
    fs.bucket.read_range = lambda *a, **k: reads.append(a) or real(*a, **k)
    assert fs.readlink("/elsewhere") == "target/path"
    assert fs.readlink("/elsewhere") == "target/path"
    assert len(reads) == 1
    fs.symlink("/mine", "x/y")
    assert fs.readlink("/mine") == "x/y" and len(reads) == 1  # a link made here costs none
    assert bucket.objects()["mine"] == b"x/y"
    with pytest.raises(FileExists):
        fs.symlink("/mine", "z")
    close_write(fs, "/plain", b"p")
    with pytest.raises(InvalidArgument):
        fs.readlink("/plain")


def test_directories_keep_modes_on_their_markers(fs_on):
    bucket = FakeBucket("b")
    bucket.upload_bytes("d/", b"", {"goog-reserved-posix-mode": "700"})
    bucket.upload_bytes("implicit/f", b"x")
    fs = fs_on(bucket)
    assert fs.getattr("/d").mode == 0o700
    fs.chmod("/implicit", 0o750)  # no marker: one is made
    assert bucket.stat("implicit/").metadata["goog-reserved-posix-mode"] == "750"
    fs.mkdir("/m", 0o711)
    assert fs.getattr("/m").mode == 0o711 and bucket.stat("m/").metadata["goog-reserved-posix-mode"] == "711"
    fs.rename("/d", "/e")  # a directory rename keeps its marker's keys
    assert fs.getattr("/e").mode == 0o700
    with pytest.raises(NotPermitted):
        fs.chmod("/", 0o700)
    fs.chmod("/", 0o755)  # the mount's own: a no-op
    fs.set_times("/", 1.0, 2.0)  # accepted, not kept


def test_the_parents_listing_brings_each_subdirectorys_marker(fs_on):
    bucket = FakeBucket("b")
    bucket.upload_bytes("d/", b"", {"goog-reserved-posix-mode": "700"})
    bucket.upload_bytes("e/x", b"x")  # a directory without a marker: the defaults, known
    fs = fs_on(bucket)
    bucket.reset_calls()
    listed = dict(fs.readdir("/"))
    assert listed["d"].known and listed["d"].mode == 0o700
    assert listed["e"].known
    assert bucket.calls["stat"] == 0 and bucket.calls["list"] == 1  # no request per subdirectory


def test_special_files_and_hard_links(fs_on):
    bucket = FakeBucket("b")
    fs = fs_on(bucket)
    fs.mknod("/p", stat.S_IFIFO | 0o600)
    fs.mknod("/c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert fs.getattr("/p").file_type == stat.S_IFIFO
    assert fs.getattr("/c").rdev == os.makedev(1, 3)
    assert bucket.objects()["p"] == b""
    with pytest.raises(NotPermitted):
        fs.link("/q", "/p")
    with pytest.raises(InvalidArgument):
        fs.mknod("/x", stat.S_IFDIR | 0o700)
