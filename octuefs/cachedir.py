"""The cache directory's layout: every path under ``--cache-dir``, named here and only here.

The directory (0700, one daemon at a time: ``lock``) holds the mount's local state::

    lock                 the running daemon's pid, flock'd (mount.py): one mount per cache directory
    octuefs.log          the log of a daemon started in the background (cli.py), unless --log-file
    blocks/              clean content, block by block, by object and generation (cache/content.py);
                         emptied at every mount
    staging/             files open for writing, not yet closed (cache/content.py, fs/files.py)
    pending/             closed files waiting to be uploaded, each with its journal record
    journal/             records that cannot live in an xattr of their pending file
    conflicts.jsonl      one line per conflict; conflicts.settled and conflicts.reported beside it
                         (pending/ to conflicts.*: writeback/uploads.py)
    lost+found/          what could not be uploaded: files a dead daemon was still writing
                         (quarantined at mount) and journal entries that cannot be read
    givebacks/           take-over renames not yet settled (writeback/givebacks.py)
    parts/               the ledger of large uploads' parts in the bucket, until deleted
    local-gcs/           --local: the embedded emulator's objects (unless --local-data-dir)

:class:`CacheDir` names each path, and nothing else in octuefs spells one (tests/unit/test_layers.py):
:mod:`octuefs.assembly` builds the components on one cache directory, and each takes its own
paths from here.
"""

from __future__ import annotations

import dataclasses
import os

LOCK = "lock"
LOG = "octuefs.log"
BLOCKS = "blocks"
STAGING = "staging"
PENDING = "pending"
JOURNAL = "journal"
CONFLICTS = "conflicts.jsonl"
CONFLICTS_SETTLED = "conflicts.settled"
CONFLICTS_REPORTED = "conflicts.reported"
LOST_FOUND = "lost+found"
GIVEBACKS = "givebacks"
PARTS = "parts"
LOCAL_GCS = "local-gcs"


@dataclasses.dataclass(frozen=True)
class CacheDir:
    """The paths under one cache directory ``root``."""

    root: str

    def _at(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def lock(self) -> str:
        return self._at(LOCK)

    @property
    def log(self) -> str:
        return self._at(LOG)

    @property
    def blocks(self) -> str:
        return self._at(BLOCKS)

    @property
    def staging(self) -> str:
        return self._at(STAGING)

    @property
    def pending(self) -> str:
        return self._at(PENDING)

    @property
    def journal(self) -> str:
        return self._at(JOURNAL)

    @property
    def conflicts(self) -> str:
        return self._at(CONFLICTS)

    @property
    def conflicts_settled(self) -> str:
        return self._at(CONFLICTS_SETTLED)

    @property
    def conflicts_reported(self) -> str:
        return self._at(CONFLICTS_REPORTED)

    @property
    def lost_found(self) -> str:
        return self._at(LOST_FOUND)

    @property
    def givebacks(self) -> str:
        return self._at(GIVEBACKS)

    @property
    def parts(self) -> str:
        return self._at(PARTS)

    @property
    def local_gcs(self) -> str:
        return self._at(LOCAL_GCS)
