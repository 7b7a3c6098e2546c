"""Files octuefs writes outside the daemon's private umask are private all the same."""

from __future__ import annotations

import os
import stat

from octuefs.uploads import Journal


def test_the_conflict_record_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        journal = Journal(str(tmp_path))
        journal.note_conflict({"object": "secret/name.csv", "saved_as": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(journal.conflicts_path).st_mode) == 0o600
    assert journal.conflicts()[-1]["object"] == "secret/name.csv"
