"""Files octuefs writes outside the daemon's private umask are private all the same."""

from __future__ import annotations

import os
import stat

from octuefs.writeback.journal import Journal


def test_the_conflict_record_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        journal = Journal(str(tmp_path))
        journal.note_conflict({"object": "secret/name.csv", "saved_as": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(journal.conflicts_path).st_mode) == 0o600
    assert journal.conflicts()[-1]["object"] == "secret/name.csv"


def test_a_state_directory_someone_else_owns_is_refused(tmp_path, monkeypatch):
    import pytest

    from octuefs.mount import MountError, state_file

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    mine = tmp_path / "octuefs-mounts"
    mine.mkdir(mode=0o755)
    mine.chmod(0o777)
    state_file("/mnt/x")  # ours, but loose: made private
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    if os.getuid() != 0:
        pytest.skip("needs root to make a directory another user owns")
    os.chown(mine, 65534, 65534)  # e.g. made first by another user in a shared /tmp
    with pytest.raises(MountError, match="not a directory of yours"):
        state_file("/mnt/x")
