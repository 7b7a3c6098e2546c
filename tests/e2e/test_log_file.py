"""The daemon's log is private (0600) from its creation, in the foreground and in the background."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid

from .conftest import force_unmount, is_mounted, octuefs_command, run_octuefs, wait_until


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_foreground_log_file_is_0600_under_umask_022(emulator, mount_factory, tmp_path):
    name = f"log-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    mp, log = tmp_path / "mp", tmp_path / "fg.log"
    mp.mkdir()
    daemon = subprocess.Popen(
        [*octuefs_command(), "mount", name, str(mp), "-f", "--cache-dir", str(tmp_path / "cache"),
         "--log-file", str(log), "-v"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, umask=0o022,
    )  # fmt: skip
    try:
        assert wait_until(lambda: is_mounted(mp) or daemon.poll() is not None, timeout=60)
        assert is_mounted(mp), daemon.stderr.read().decode(errors="replace")[-2000:]
        assert os.listdir(mp) == []  # answered: the daemon is past FUSE's INIT
        assert mode(log) == 0o600
        # Not `octuefs unmount`: it waits for the daemon's PID to go, and our child stays a zombie
        # until we reap it. A foreground daemon exits once unmounted.
        result = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert daemon.wait(60) == 0
    finally:
        force_unmount(mp)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_the_background_log_file_and_cache_are_private_under_umask_022(emulator, mount_factory, tmp_path):
    name = f"log-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    mp, cache = tmp_path / "mp", tmp_path / "cache"
    mp.mkdir()
    try:
        result = subprocess.run([*octuefs_command(), "mount", name, str(mp), "--cache-dir", str(cache)],
                                capture_output=True, text=True, timeout=120, umask=0o022)
        assert result.returncode == 0, result.stderr
        assert mode(cache / "octuefs.log") == 0o600  # the default place: CACHE_DIR/octuefs.log
        assert mode(cache) == 0o700
        run_octuefs("unmount", str(mp))
    finally:
        force_unmount(mp)
