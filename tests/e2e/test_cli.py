"""The octuefs command: clear one-line errors, --local, and mount(8) / fstab through mount.fuse3."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from .conftest import force_unmount, octuefs_command, run_octuefs, wait_until

pytestmark = pytest.mark.fuse


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("octuefs: error:")
    for needle in needles:
        assert needle in lines[0]


def test_missing_bucket(emulator, tmp_path):
    (tmp_path / "mp").mkdir()
    result = run_octuefs("mount", "no-such-bucket-x", str(tmp_path / "mp"), check=False)
    assert_one_line_error(result, "no-such-bucket-x", "does not exist")
    assert not os.path.ismount(tmp_path / "mp")


def test_unreachable_server(tmp_path, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    (tmp_path / "mp").mkdir()
    result = run_octuefs("mount", "some-bucket", str(tmp_path / "mp"), check=False)
    assert_one_line_error(result)


def test_bad_mountpoints(emulator, tmp_path):
    emulator.create_bucket("cli-bucket")
    result = run_octuefs("mount", "cli-bucket", str(tmp_path / "absent"), check=False)
    assert_one_line_error(result, "does not exist")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    result = run_octuefs("mount", "cli-bucket", str(full), check=False)
    assert_one_line_error(result, "not empty")


def test_a_cache_dir_or_log_file_inside_the_mountpoint_is_refused(tmp_path):
    """The daemon's own accesses to them would go through its own mount: a hang nothing ends."""
    mp = tmp_path / "mp"
    mp.mkdir()
    try:
        for extra in (["--cache-dir", str(mp / ".cache")], ["--cache-dir", str(mp)],
                      ["--cache-dir", str(tmp_path / "cache"), "--log-file", str(mp / "octuefs.log")],
                      ["-f", "--cache-dir", str(tmp_path / "cache"), "--log-file", str(mp / "octuefs.log")]):
            result = run_octuefs("mount", "--local", "some-bucket", str(mp), *extra, check=False, timeout=60)
            assert_one_line_error(result, "inside the mountpoint")
            assert not os.path.ismount(mp)
            assert list(mp.iterdir()) == []
    finally:
        force_unmount(mp)


def test_unmount_of_something_not_mounted(tmp_path):
    result = run_octuefs("unmount", str(tmp_path), check=False)
    assert_one_line_error(result, "not mounted")


def test_local_mount_keeps_data_across_remounts(tmp_path):
    mp, cache = tmp_path / "mp", tmp_path / "cache"
    mp.mkdir()
    args = ("mount", "--local", "localbucket", str(mp), "--cache-dir", str(cache), "--log-file", str(tmp_path / "log"))
    try:
        run_octuefs(*args)
        (mp / "kept.txt").write_bytes(b"kept")
        os.setxattr(mp / "kept.txt", "user.octue.labels", b"local")
        run_octuefs("unmount", str(mp))
        assert not os.path.ismount(mp)
        run_octuefs(*args)
        assert (mp / "kept.txt").read_bytes() == b"kept"
        assert os.getxattr(mp / "kept.txt", "user.octue.labels") == b"local"
        run_octuefs("unmount", str(mp))
    finally:
        force_unmount(mp)
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_demo_mount_has_files_with_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    mp = tmp_path / "demo"
    try:
        result = run_octuefs("demo", str(mp))
        assert "getfattr" in result.stdout
        assert "anemometer-2024-01-01.csv" in os.listdir(mp / "wind")
        assert os.getxattr(mp / "wind/anemometer-2024-01-01.csv", "user.octue.tags.instrument") == b"anemometer"
        run_octuefs("unmount", str(mp))
    finally:
        force_unmount(mp)


@pytest.mark.skipif(not shutil.which("mount.fuse3") and not os.path.exists("/sbin/mount.fuse3"), reason="no mount.fuse3")
def test_mount_t_fuse_octuefs_as_fstab_would(emulator, tmp_path):
    if not shutil.which("octuefs", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"):
        pytest.skip("octuefs is not on the system PATH mount(8) uses; scripts/install links it there as root")
    name = f"fstab-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    mp, cache = tmp_path / "mp", tmp_path / "cache"
    mp.mkdir()
    # The same line as in /etc/fstab: "NAME  MP  fuse.octuefs  cache_dir=...,file_mode=600,_netdev  0 0"
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{name} {mp} fuse.octuefs cache_dir={cache},file_mode=600,_netdev,nofail 0 0\n")
    try:
        result = subprocess.run(["mount", "-T", str(fstab), str(mp)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert os.path.ismount(mp)
        from octuefs.storage.gcs import GCSBucket

        GCSBucket(name).upload_bytes("other.txt", b"by another tool")  # records no mode: file_mode shows
        assert oct(os.stat(mp / "other.txt").st_mode & 0o777) == "0o600"
        (mp / "f.txt").write_bytes(b"via fstab")  # a file made here records its own (create mode, umask)
        assert os.stat(mp / "f.txt").st_size == len(b"via fstab")
        run_octuefs("unmount", str(mp))
    finally:
        force_unmount(mp)


def test_bad_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    key = tmp_path / "key.json"
    key.write_text('{"type": "service_account", "broken": true}')
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    (tmp_path / "mp").mkdir()
    result = run_octuefs("mount", "some-bucket", str(tmp_path / "mp"), check=False)
    assert_one_line_error(result, "credentials")


def test_a_relative_cache_dir_is_where_the_command_was_typed(emulator, tmp_path):
    """`octuefs mount B mnt --cache-dir lc` from a directory: writes reach the bucket (they
    failed with ENOENT, leaving a 0-byte file, when the daemon in "/" took lc as /lc)."""
    from octuefs.storage.gcs import GCSBucket

    name = f"relcache-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    (tmp_path / "mnt").mkdir()
    try:
        run_octuefs("mount", name, "mnt", "--cache-dir", "caches/lc", "--log-file", "octuefs.log", cwd=tmp_path)
        (tmp_path / "mnt/x.txt").write_bytes(b"hello\n")
        assert (tmp_path / "mnt/x.txt").read_bytes() == b"hello\n"
        run_octuefs("sync", "mnt", cwd=tmp_path)
        assert GCSBucket(name).read_range("x.txt", 0, 100) == b"hello\n"
        assert (tmp_path / "caches/lc/lock").exists() and (tmp_path / "octuefs.log").exists()
        run_octuefs("unmount", "mnt", cwd=tmp_path)
    finally:
        force_unmount(tmp_path / "mnt")
    assert "Traceback" not in (tmp_path / "octuefs.log").read_text()


def test_a_mount_logs_no_libfuse_thread_warning(mount):
    """libfuse 3.14 refused its own default max_idle_threads (UINT_MAX) with a line at every mount."""
    (mount / "f.txt").write_bytes(b"x")
    assert "Ignoring invalid max threads" not in mount.log_text()


def test_a_cache_that_cannot_be_written_fails_writes_clearly_and_shows_in_status(mount):
    """The cache's staging directory removed under a running daemon (a cleaner emptying
    ~/.cache, say): a new file fails with EIO at once, no empty file stays in the mount, and
    `octuefs status` (text and --json) and the log say why; mended, writes work again."""
    import errno
    import json

    (mount / "before.txt").write_bytes(b"kept")
    mount.sync()
    shutil.rmtree(mount.cache / "staging")
    with pytest.raises(OSError) as failed:
        (mount / "x.txt").write_bytes(b"hello\n")
    assert failed.value.errno == errno.EIO
    assert sorted(os.listdir(mount.path)) == ["before.txt"]
    assert not (mount / "x.txt").exists()
    status = run_octuefs("status", str(mount.path))
    assert f"cannot write {mount.cache / 'staging'}" in status.stdout, status.stdout
    report = json.loads(run_octuefs("status", "--json", str(mount.path)).stdout)
    assert "cannot write" in report["cache"]["error"]
    assert f"cannot write the cache directory {mount.cache}" in mount.log_text()

    (mount.cache / "staging").mkdir(mode=0o700)
    (mount / "x.txt").write_bytes(b"hello\n")
    mount.sync()
    assert mount.bucket.read_range("x.txt", 0, 100) == b"hello\n"
    assert "ERROR" not in run_octuefs("status", str(mount.path)).stdout
    assert "error" not in json.loads(run_octuefs("status", "--json", str(mount.path)).stdout)["cache"]


def _conflict(mount, name: str, mine: bytes) -> None:
    """Change ``name`` in the bucket while the mount has it open, then close the mount's change."""
    with open(mount / name, "r+b") as f:
        f.read()
        mount.bucket.upload_bytes(name, b"their version")  # another machine, meanwhile
        f.seek(0)
        f.write(mine)


def test_sync_exits_non_zero_and_names_each_conflict_once(mount):
    """Every conflict no sync has reported yet, whether it happened during this sync or in the
    background before it: printed (which file, where your version went), exit status 3, and
    the next sync, with nothing new, exits 0."""
    mount.bucket.upload_bytes("early.csv", b"v1")
    mount.bucket.upload_bytes("late.csv", b"v1")
    _conflict(mount, "early.csv", b"mine early")
    assert wait_until(lambda: json.loads(run_octuefs("status", "--json", str(mount.path)).stdout)["conflicts"])
    first = run_octuefs("sync", str(mount.path), check=False)
    [copy] = [o.name for o in mount.bucket.list_all("")[0] if o.name.startswith("early.octuefs-conflict-")]
    assert first.returncode == 3, first.stderr
    assert (f"octuefs: conflict: early.csv changed in the bucket" in first.stderr
            and f"saved as gs://{mount.bucket.name}/{copy} ({mount.path / copy})" in first.stderr), first.stderr
    assert mount.bucket.read_range(copy, 0, 100) == b"mine early"
    assert run_octuefs("sync", str(mount.path), check=False).returncode == 0

    _conflict(mount, "late.csv", b"mine late")
    second = run_octuefs("sync", str(mount.path), check=False)
    assert second.returncode == 3 and "late.csv changed in the bucket" in second.stderr, second.stderr
    assert "early.csv" not in second.stderr
    assert run_octuefs("sync", str(mount.path), check=False).returncode == 0


@pytest.mark.parametrize("form", [[], ["--json"]])
def test_status_into_a_closed_pipe_ends_quietly(mount, form):
    """`octuefs status MNT | head -1`: the reader is gone before status writes."""
    for i in range(3):
        (mount / f"f{i}.txt").write_bytes(b"x")
    proc = subprocess.Popen([*octuefs_command(), "status", *form, str(mount.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like head, done reading
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 141
