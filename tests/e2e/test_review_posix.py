"""Review of issue 16 parts 1-4 through real mounts: a hostile local user, another machine (the
client library writing what gcloud or gcsfuse would) and odd values in the bucket."""

from __future__ import annotations

import os
import signal
import stat
import subprocess

import pytest

from .test_posix import NOBODY, as_nobody, shared  # noqa: F401 (shared: a fixture)

MODE, UID, GID = "goog-reserved-posix-mode", "goog-reserved-posix-uid", "goog-reserved-posix-gid"
MTIME, ATIME = "goog-reserved-file-mtime", "goog-reserved-file-atime"
SYMLINK = "goog-reserved-file-is-symlink"


def test_odd_values_written_elsewhere_never_break_ls(mount):
    """Another tool's keys with odd values: the listing and each stat answer, nothing shows a
    wrapped owner (root) or a time from outside 0..9999 AD, and the daemon logs no traceback."""
    odd = {
        "t-huge": {MTIME: "1e300"}, "t-1e20": {MTIME: "1e20", ATIME: "1e300"}, "t-neg": {MTIME: "-5"},
        "t-nan": {MTIME: "NaN"}, "m-999": {MODE: "999"}, "m-0o": {MODE: "0o640"}, "m-suid": {MODE: "4755"},
        "m-neg": {MODE: "-1"}, "u-abc": {UID: "abc", GID: "x"}, "u-wrap": {UID: "4294967296", GID: "4294967296"},
        "u-big": {UID: "1" * 40}, "lnk-bin": {SYMLINK: "true"},
    }
    for name, meta in odd.items():
        mount.bucket.upload_bytes(name, b"\xff\x00bin" if name == "lnk-bin" else b"x", meta)
    out = subprocess.run(["ls", "-ln", str(mount.path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name in odd:
        st = os.lstat(mount / name)
        assert 0 <= st.st_mtime < 253402300800 and 0 <= st.st_atime < 253402300800, name
        assert st.st_uid in (os.getuid(), 0) and (name != "u-wrap" or st.st_uid == os.getuid()), (name, st.st_uid)
    assert stat.S_IMODE(os.lstat(mount / "m-0o").st_mode) == 0o640
    assert os.readlink(mount / "lnk-bin").startswith("\udcff")  # bytes up to the NUL


def test_the_mount_is_nosuid_and_nodev_and_a_device_made_here_cannot_be_opened(mount):
    mount.bucket.upload_bytes("disk", b"", {"octuefs-file-type": "block", "octuefs-file-rdev": "8:0", MODE: "666"})
    flags = os.statvfs(mount.path).f_flag
    assert flags & os.ST_NOSUID and flags & os.ST_NODEV
    os.mknod(mount / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert stat.S_ISCHR(os.lstat(mount / "null").st_mode)
    with pytest.raises(PermissionError):
        open(mount / "null", "rb")  # nodev: not /dev/null, and not a disk either
    with pytest.raises(PermissionError):
        open(mount / "disk", "rb")


def test_another_user_cannot_chown_or_chmod_what_they_do_not_own(shared):
    m = shared
    (m / "roots").write_text("r")
    os.chmod(m / "roots", 0o666)
    for cmd in (["chown", f"{NOBODY}", str(m / "roots")], ["chmod", "4777", str(m / "roots")],
                ["touch", "-d", "@5", str(m / "roots")]):
        refused = as_nobody(*cmd)
        assert refused.returncode != 0 and "Operation not permitted" in refused.stderr, (cmd, refused)
    (m / "pub").mkdir()
    os.chmod(m / "pub", 0o1777)
    made = as_nobody("sh", "-c", f"echo n > {m / 'pub/theirs'} && chmod 4755 {m / 'pub/theirs'}")
    assert made.returncode == 0, made.stderr
    refused = as_nobody("chown", "0", str(m / "pub/theirs"))  # giving it to root: EPERM
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr
    m.sync()
    meta = m.bucket.stat("pub/theirs").metadata
    assert (meta[UID], meta[MODE]) == (str(NOBODY), "4755")
    assert m.bucket.stat("roots").metadata.get(MODE) == "666" and UID not in m.bucket.stat("roots").metadata


def test_a_link_repointed_on_another_machine_reads_within_the_stat_ttl(mount):
    (mount / "a").write_text("A")
    (mount / "b").write_text("B")
    os.symlink("a", mount / "ln")
    mount.sync()
    os.lstat(mount / "ln")
    mount.bucket.upload_bytes("ln", b"b", {SYMLINK: "true"})  # gcloud on another machine: a new generation
    assert os.readlink(mount / "ln") in ("a", "b")  # not ENOENT
    assert (mount / "ln").read_text() in ("A", "B")


def test_a_directory_chmod_then_emptied_then_rmdir_is_gone_from_the_bucket(mount):
    mount.bucket.upload_bytes("implicit/f", b"x")
    os.chmod(mount / "implicit", 0o700)
    assert mount.bucket.stat("implicit/").metadata[MODE] == "700"
    os.unlink(mount / "implicit/f")
    mount.sync()
    os.rmdir(mount / "implicit")
    assert not os.path.lexists(mount / "implicit")
    assert [o.name for o in mount.bucket.list_page("implicit", "/").objects] == []


def test_chmod_then_kill_9_then_remount_keeps_the_mode(mount_factory):
    from octuefs.mount import read_state

    from .conftest import force_unmount, run_octuefs

    m = mount_factory("--upload-hold", "60")
    (m / "f").write_text("data")
    os.chmod(m / "f", 0o600)
    os.utime(m / "f", (1000, 2000))
    os.kill(int(read_state(str(m.path))["pid"]), signal.SIGKILL)
    force_unmount(m.path)
    run_octuefs("mount", m.spec, str(m.path), "--cache-dir", str(m.cache), "--log-file", str(m.log), "-vv")
    st = os.stat(m / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o600, 2000)
    m.sync()
    meta = m.bucket.stat("f").metadata
    assert (meta[MODE], meta[MTIME]) == ("600", "2000")
    assert m.bucket.read_range("f", 0, 10) == b"data"


def test_the_sdk_reads_a_file_the_mount_wrote_with_posix_keys(mount, tmp_path):
    """The Octue SDK (its own venv, scripts/install) describes a file written through the mount
    after chmod, chown, touch and a setfattr, and a directory holding a link and a pipe: the
    goog-reserved and octuefs-file keys change nothing the SDK reads."""
    from tests.integration.test_sdk_parity import SDK_VERSION, sdk, sdk_venv  # noqa: F401

    python = sdk_venv() / "bin" / "python"
    if not python.exists():
        pytest.skip("no SDK venv")
    d = mount / "d"
    d.mkdir(mode=0o750)
    (d / "f.csv").write_text("a,b\n1,2\n")
    os.setxattr(d / "f.csv", "user.octue.tags.run", b"7")
    os.chmod(d / "f.csv", 0o640)
    os.chown(d / "f.csv", 123, 456)
    os.utime(d / "f.csv", (1_000_000_000, 1_100_000_000))
    os.symlink("f.csv", d / "ln")
    os.mkfifo(d / "pipe")
    mount.sync()
    meta = mount.bucket.stat("d/f.csv").metadata
    assert (meta[MODE], meta[UID], meta[MTIME]) == ("640", "123", "1100000000")
    described, = sdk(str(python), tmp_path, dict(op="describe", path=f"gs://{mount.bucket.name}/d/f.csv"))
    assert described["tags"] == {"run": 7}
    assert described["size_bytes"] == len("a,b\n1,2\n")
