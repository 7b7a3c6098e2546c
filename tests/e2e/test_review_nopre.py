"""Review of 4eb480b (the bucket checked in the mount daemon, not in the command): what a user
sees, and what is left on disk, when a background mount fails."""

from __future__ import annotations

import os
import uuid

from .conftest import run_octuefs
from .test_cli import assert_one_line_error


def test_a_mount_of_a_missing_bucket_leaves_nothing_on_disk(emulator, tmp_path, monkeypatch):
    """A typo in the bucket's name made ~/.cache/octuefs/<typo>/octuefs.log (a 0755 directory);
    before 4eb480b it made nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "mp").mkdir()
    result = run_octuefs("mount", "no-such-bucket-y", str(tmp_path / "mp"), check=False)
    assert_one_line_error(result, "no-such-bucket-y", "does not exist")
    assert not os.path.exists(tmp_path / "xdg" / "octuefs" / "no-such-bucket-y")


def test_an_earlier_mounts_error_in_a_reused_log_is_not_shown(emulator, tmp_path):
    """The bucket's error is now written to the log; a later mount of another bucket that fails
    without such a line was told that the earlier bucket does not exist."""
    name = f"nopre-{uuid.uuid4().hex[:8]}"
    emulator.create_bucket(name)
    (tmp_path / "mp").mkdir()
    log = str(tmp_path / "shared.log")
    first = run_octuefs("mount", "no-such-bucket-z", str(tmp_path / "mp"), "--log-file", log,
                        "--cache-dir", str(tmp_path / "c1"), check=False)
    assert_one_line_error(first, "no-such-bucket-z")
    (tmp_path / "file").write_text("x")  # a cache directory under a regular file: the daemon fails
    second = run_octuefs("mount", name, str(tmp_path / "mp"), "--log-file", log,
                         "--cache-dir", str(tmp_path / "file" / "cache"), check=False)
    assert second.returncode != 0
    assert "no-such-bucket-z" not in second.stderr, second.stderr
    assert not os.path.ismount(tmp_path / "mp")


def test_a_log_file_that_cannot_be_written_is_one_line_even_with_a_missing_bucket(emulator, tmp_path):
    """The log is now opened before the bucket is checked: its OSError came out as a traceback
    (before, the missing bucket's line came first)."""
    (tmp_path / "mp").mkdir()
    (tmp_path / "file").write_text("x")
    log = str(tmp_path / "file" / "octuefs.log")
    result = run_octuefs("mount", "no-such-bucket-w", str(tmp_path / "mp"), "--log-file", log,
                         "--cache-dir", str(tmp_path / "c"), check=False)
    assert_one_line_error(result)
    assert "no-such-bucket-w" in result.stderr or log in result.stderr
