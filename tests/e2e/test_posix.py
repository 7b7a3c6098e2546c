"""POSIX attributes through a real mount: symbolic links, modes, owners, times, special files and
hard links, in the layout ``gcloud storage cp --preserve-posix`` and gcsfuse use; the bucket's
keys are checked too, and objects written with those keys through the client library (as gcloud
writes them) show through the mount."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from .conftest import run_octuefs

MODE, UID, GID = "goog-reserved-posix-mode", "goog-reserved-posix-uid", "goog-reserved-posix-gid"
MTIME, ATIME = "goog-reserved-file-mtime", "goog-reserved-file-atime"
SYMLINK, OLD_SYMLINK = "goog-reserved-file-is-symlink", "gcsfuse_symlink_target"
NOBODY = 65534


def remount(mount_factory, m):
    run_octuefs("unmount", str(m.path))
    return mount_factory(bucket=m.bucket.name)


def as_nobody(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60, **kwargs)


# --- symbolic links ------------------------------------------------------------------------


def test_ln_s_makes_a_link_gcloud_and_gcsfuse_read(mount):
    (mount / "data").mkdir()
    (mount / "data/real.csv").write_text("1,2\n")
    subprocess.run(["ln", "-s", "data/real.csv", str(mount / "link")], check=True)
    assert os.readlink(mount / "link") == "data/real.csv"
    assert stat.S_ISLNK(os.lstat(mount / "link").st_mode)
    assert os.lstat(mount / "link").st_size == len("data/real.csv")
    assert (mount / "link").read_text() == "1,2\n"  # the kernel follows it
    listing = subprocess.run(["ls", "-l", str(mount.path)], capture_output=True, text=True, check=True).stdout
    assert any(line.startswith("l") and "link -> data/real.csv" in line for line in listing.splitlines())
    assert [e.name for e in os.scandir(mount.path) if e.is_symlink()] == ["link"]
    # In the bucket: the target as content, marked as gcloud storage and gcsfuse 3.9+ mark it.
    info = mount.bucket.stat("link")
    assert info.metadata[SYMLINK] == "true"
    assert mount.bucket.read_range("link", 0, 100) == b"data/real.csv"


def test_mv_of_a_link_moves_the_link(mount):
    (mount / "t.txt").write_text("x")
    os.symlink("t.txt", mount / "a")
    subprocess.run(["mv", str(mount / "a"), str(mount / "b")], check=True)
    assert not os.path.lexists(mount / "a")
    assert os.readlink(mount / "b") == "t.txt" and (mount / "b").read_text() == "x"
    assert mount.bucket.stat("b").metadata[SYMLINK] == "true"
    assert mount.bucket.read_range("b", 0, 100) == b"t.txt"
    assert (mount / "t.txt").read_text() == "x"  # the target itself is untouched


def test_links_made_by_gcloud_and_older_gcsfuse_are_links(mount):
    mount.bucket.upload_bytes("new-style", b"../elsewhere/file", {SYMLINK: "true"})
    mount.bucket.upload_bytes("old-style", b"", {OLD_SYMLINK: "some/target"})
    assert os.readlink(mount / "new-style") == "../elsewhere/file"
    assert os.readlink(mount / "old-style") == "some/target"
    assert os.lstat(mount / "old-style").st_size == len("some/target")
    kinds = {e.name: e.is_symlink() for e in os.scandir(mount.path)}
    assert kinds == {"new-style": True, "old-style": True}
    with pytest.raises(OSError) as err:  # a link to nowhere: the kernel follows, the daemon does not
        (mount / "old-style").read_text()
    assert err.value.errno == errno.ENOENT


def test_a_directory_of_links_made_elsewhere_reads_right_through_ls_cp_and_ln_sf(mount, tmp_path):
    # Its links' targets are read ahead once the first is read (fs/linktargets.py): whatever the
    # order, and with links replaced through the mount while reads ahead are in flight, every
    # link shows its own target, as the bucket holds it.
    made = {}
    for i in range(120):
        target = f"../t/{i:04d}-\u00e9t\u00e9.csv" if i % 3 else f"/abs/{'x' * (i + 1)}"
        mount.bucket.upload_bytes(f"links/l{i:04d}", target.encode(), {SYMLINK: "true"})
        made[f"l{i:04d}"] = target
    mount.bucket.upload_bytes("links/plain", b"not a link")
    assert len(os.listdir(mount / "links")) == 121
    assert os.readlink(mount / "links/l0000") == made["l0000"]  # the next ones of the listing are read ahead
    for i in range(10, 20):  # replaced here while those reads are in flight
        subprocess.run(["ln", "-sfn", f"new/{i}", str(mount / f"links/l{i:04d}")], check=True)
        made[f"l{i:04d}"] = f"new/{i}"
    listing = subprocess.run(["ls", "-l", str(mount / "links")], capture_output=True, text=True, check=True,
                             env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
    shown = dict(re.search(r" (l\d{4}) -> (.*)$", line).groups() for line in listing.splitlines() if line[0] == "l")
    assert shown == made
    subprocess.run(["cp", "-a", str(mount / "links"), str(tmp_path / "copy")], check=True)
    assert {n: os.readlink(tmp_path / "copy" / n) for n in made} == made
    assert (tmp_path / "copy/plain").read_bytes() == b"not a link"
    for name, target in made.items():  # and in the bucket
        assert mount.bucket.read_range(f"links/{name}", 0, 4096).decode() == target


def test_readlink_of_a_plain_file_is_einval(mount):
    (mount / "f").write_text("x")
    with pytest.raises(OSError) as err:
        os.readlink(mount / "f")
    assert err.value.errno == errno.EINVAL


# --- modes, owners, times -----------------------------------------------------------------


def test_chmod_x_then_the_script_runs_from_the_mount(mount):
    script = mount / "run.sh"
    script.write_text("#!/bin/sh\necho ran from the mount\n")
    assert os.stat(script).st_mode & 0o777 == 0o644  # what the mount's default shows
    with pytest.raises(PermissionError):
        subprocess.run([str(script)], check=True)
    subprocess.run(["chmod", "+x", str(script)], check=True)
    assert os.stat(script).st_mode & 0o777 == 0o755
    assert subprocess.run([str(script)], capture_output=True, text=True, check=True).stdout == "ran from the mount\n"
    mount.sync()
    assert mount.bucket.stat("run.sh").metadata[MODE] == "755"


def test_modes_owners_and_times_persist_across_a_remount(mount_factory):
    m = mount_factory()
    f, d = m / "f.csv", m / "d"
    f.write_text("data")
    d.mkdir()
    os.chmod(f, 0o640)
    os.chown(f, 1234, 5678)
    os.utime(f, (1_600_000_000, 1_700_000_000))
    os.chmod(d, 0o750)
    os.chown(d, 4321, -1)
    m.sync()
    keys = dict(m.bucket.stat("f.csv").metadata)
    assert {k: keys[k] for k in (MODE, UID, GID, MTIME, ATIME)} == {
        MODE: "640", UID: "1234", GID: "5678", MTIME: "1700000000", ATIME: "1600000000"}
    assert not any(k.startswith("octuefs.user.") for k in keys)
    marker = dict(m.bucket.stat("d/").metadata)
    assert (marker[MODE], marker[UID]) == ("750", "4321")
    again = remount(mount_factory, m)
    st = os.stat(again / "f.csv")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert (st.st_mtime, st.st_atime) == (1_700_000_000, 1_600_000_000)
    st = os.stat(again / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o750, 4321)


def test_a_created_file_records_its_mode_with_umask_applied(mount):
    old = os.umask(0o027)
    try:
        fd = os.open(mount / "made", os.O_WRONLY | os.O_CREAT, 0o666)
        os.write(fd, b"x")
        os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(mount / "made").st_mode) == 0o640
    mount.sync()
    assert mount.bucket.stat("made").metadata[MODE] == "640"


def test_chmod_keeps_the_octue_metadata_and_goes_with_a_pending_upload(mount):
    f = mount / "f.csv"
    f.write_text("v1")
    os.setxattr(f, "user.octue.tags.site", b"north")
    os.chmod(f, 0o600)  # folded into the pending upload or patch
    mount.sync()
    info = mount.bucket.stat("f.csv")
    assert info.metadata[MODE] == "600"
    assert os.getxattr(f, "user.octue.tags.site") == b"north"
    assert '"site": "north"' in info.metadata["octue__tags"]
    assert not [n for n in os.listxattr(f) if "posix" in n or "goog" in n]  # the keys are not attributes


def test_a_bucket_written_with_preserve_posix_shows_its_modes_owners_times_and_links(mount):
    """The keys written with the client library, as ``gcloud storage cp --preserve-posix`` does."""
    mount.bucket.upload_bytes("p/", b"", {MODE: "710", UID: "2001", GID: "2002"})
    mount.bucket.upload_bytes("p/secret.bin", b"s", {MODE: "600", UID: "1001", GID: "1002",
                                                     MTIME: "1500000000", ATIME: "1400000000"})
    mount.bucket.upload_bytes("p/tool", b"#!/bin/sh\n", {MODE: "4755", UID: "0", GID: "0"})
    mount.bucket.upload_bytes("p/to-secret", b"secret.bin", {SYMLINK: "true"})
    entries = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(mount / "p")}
    st = entries["secret.bin"]
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1001, 1002)
    assert (st.st_mtime, st.st_atime) == (1_500_000_000, 1_400_000_000)
    assert stat.S_IMODE(entries["tool"].st_mode) == 0o4755
    assert stat.S_ISLNK(entries["to-secret"].st_mode)
    assert os.readlink(mount / "p/to-secret") == "secret.bin"
    st = os.stat(mount / "p")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o710, 2001, 2002)
    ls = subprocess.run(["ls", "-ln", str(mount / "p")], capture_output=True, text=True, check=True).stdout
    assert any(line.startswith("-rw------- 1 1001 1002") for line in ls.splitlines()), ls


def test_ignore_stored_owners_shows_the_mounts_own(mount_factory):
    m = mount_factory("--ignore-stored-owners", "--uid", "4242", "--gid", "4343")
    m.bucket.upload_bytes("f", b"x", {MODE: "600", UID: "1001", GID: "1002"})
    st = os.stat(m / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 4242, 4343)


def test_chmod_of_a_directory_without_a_marker_makes_one(mount):
    mount.bucket.upload_bytes("implicit/file", b"x")
    os.chmod(mount / "implicit", 0o700)
    assert stat.S_IMODE(os.stat(mount / "implicit").st_mode) == 0o700
    assert mount.bucket.stat("implicit/").metadata[MODE] == "700"
    assert mount.bucket.stat("implicit/").size == 0


def test_the_mounts_root_takes_no_mode_or_owner_and_ignores_times(mount):
    with pytest.raises(PermissionError) as err:
        os.chmod(mount.path, 0o700)
    assert err.value.errno == errno.EPERM
    os.chmod(mount.path, 0o755)  # what it is: a no-op
    os.chown(mount.path, os.getuid(), os.getgid())
    os.utime(mount.path, (1, 2))  # accepted, not kept (rsync -a into the mount stays clean)
    assert stat.S_IMODE(os.stat(mount.path).st_mode) == 0o755


# --- special files, hard links --------------------------------------------------------------


def test_mkfifo_and_mknod_make_special_files_that_persist(mount_factory):
    m = mount_factory()
    subprocess.run(["mkfifo", "-m", "620", str(m / "pipe")], check=True)
    subprocess.run(["mknod", "-m", "600", str(m / "null"), "c", "1", "3"], check=True)
    assert stat.S_ISFIFO(os.lstat(m / "pipe").st_mode)
    assert stat.S_IMODE(os.lstat(m / "pipe").st_mode) == 0o620
    assert m.bucket.stat("pipe").metadata["octuefs-file-type"] == "fifo"
    assert m.bucket.stat("null").metadata["octuefs-file-type"] == "char"
    assert m.bucket.stat("null").metadata["octuefs-file-rdev"] == "1:3"
    assert m.bucket.stat("pipe").size == 0
    again = remount(mount_factory, m)
    st = os.lstat(again / "null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO(os.lstat(again / "pipe").st_mode)
    # The mount is nodev: a device node read from a bucket opens nothing on this machine.
    with pytest.raises(PermissionError):
        open(again / "null", "rb")
    # A pipe works as a pipe (the kernel serves it; nothing reaches the bucket).
    writer = subprocess.Popen(["sh", "-c", f"echo through > {again / 'pipe'}"])
    assert (again / "pipe").read_text() == "through\n"
    assert writer.wait(timeout=30) == 0
    assert again.bucket.stat("pipe").size == 0


def test_a_hard_link_is_eperm(mount):
    (mount / "a").write_text("x")
    result = subprocess.run(["ln", str(mount / "a"), str(mount / "b")], capture_output=True, text=True)
    assert result.returncode != 0 and "Operation not permitted" in result.stderr
    with pytest.raises(PermissionError) as err:
        os.link(mount / "a", mount / "c")
    assert err.value.errno == errno.EPERM
    assert not os.path.lexists(mount / "b")
    assert os.stat(mount / "a").st_nlink == 1


# --- permissions enforced for other users (-o allow_other) ----------------------------------


@pytest.fixture
def shared(public_dir, mount_factory):
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    return mount_factory("-o", "allow_other", parent=public_dir)


def test_another_user_gets_eacces_where_the_modes_say_so(shared):
    m = shared
    (m / "open.txt").write_text("for all")
    (m / "mine.txt").write_text("private")
    os.chmod(m / "mine.txt", 0o600)
    assert as_nobody("cat", str(m / "open.txt")).stdout == "for all"
    denied = as_nobody("cat", str(m / "mine.txt"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    denied = as_nobody("sh", "-c", f"echo x >> {m / 'open.txt'}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    (m / "closed").mkdir(mode=0o700)
    denied = as_nobody("ls", str(m / "closed"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    denied = as_nobody("touch", str(m / "new-at-root"))  # the root is 755, root's
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert (m / "mine.txt").read_text() == "private"


def test_the_sticky_bit_keeps_others_from_removing_a_file(shared):
    m = shared
    tmp = m / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    (tmp / "roots").write_text("x")
    os.chmod(tmp / "roots", 0o666)
    made = as_nobody("sh", "-c", f"echo n > {tmp / 'nobodys'}")
    assert made.returncode == 0, made.stderr
    assert os.stat(tmp / "nobodys").st_uid == NOBODY  # the creator is recorded
    refused = as_nobody("rm", "-f", str(tmp / "roots"))
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr
    refused = as_nobody("mv", str(tmp / "roots"), str(tmp / "taken"))
    assert refused.returncode != 0
    assert (tmp / "roots").read_text() == "x"
    assert as_nobody("rm", str(tmp / "nobodys")).returncode == 0
    m.sync()
    assert m.bucket.stat("tmp/").metadata[MODE] == "1777"


def test_a_write_by_another_user_clears_setuid_and_it_persists(shared):
    m = shared
    tool = m / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o4777)
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o4777
    wrote = as_nobody("sh", "-c", f"echo more >> {tool}")
    assert wrote.returncode == 0, wrote.stderr
    assert stat.S_IMODE(os.stat(tool).st_mode) == 0o777
    m.sync()
    assert m.bucket.stat("tool").metadata[MODE] == "777"


# --- where the mount differs from a local disk (docs/semantics.md, "POSIX attributes") --------


def test_reading_does_not_change_atime_and_a_change_of_times_or_mode_moves_the_ctime(mount):
    f = mount / "f"
    f.write_text("x")
    before = time.time()
    os.utime(f, (1_000_000_000, 1_100_000_000))
    f.read_text()
    st = os.stat(f)
    assert (st.st_atime, st.st_mtime) == (1_000_000_000, 1_100_000_000)
    assert st.st_ctime >= int(before)  # utimensat sets the ctime to now, as POSIX says
    time.sleep(0.05)
    os.chmod(f, 0o600)  # so does a change of mode
    assert os.stat(f).st_ctime > st.st_ctime


def test_a_file_made_in_a_setgid_directory_takes_the_creators_group(mount):
    d = mount / "shared"
    d.mkdir()
    os.chown(d, -1, 4321)
    os.chmod(d, 0o2775)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o2775
    (d / "f").write_text("x")
    assert os.stat(d / "f").st_gid == os.getgid()  # a local disk would give it 4321


def test_times_are_whole_seconds(mount):
    f = mount / "f"
    f.write_text("x")
    os.utime(f, (1_000_000_000.75, 1_100_000_000.5))
    st = os.stat(f)
    assert (st.st_atime, st.st_mtime) == (1_000_000_000, 1_100_000_000)
