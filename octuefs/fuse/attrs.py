"""What stat shows of an entry: its core :class:`~octuefs.fs.core.Attr` as ``st_*`` values, and
who may change its owners (chown's rule, for a mount the kernel does not check).

The mount's defaults and owners (``--file-mode``, ``--dir-mode``, ``--uid``, ``--gid``,
``--ignore-stored-owners``, ``--read-only``) are applied here, once, for both answers the FUSE
adapter gives: the ``st_*`` dictionary of getattr and the packed ``struct stat`` of
READDIRPLUS (:meth:`octuefs.fuse.ops.OctueOperations.packed`). Nothing here speaks FUSE.
"""

from __future__ import annotations

import stat

from octuefs.config import MountConfig
from octuefs.fs.posixfs import Attr


class StatAttrs:
    """``st_*`` values of entries under one mount's configuration."""

    def __init__(self, cfg: MountConfig):
        self.uid, self.gid = cfg.uid, cfg.gid
        self._stored_owners = not cfg.ignore_stored_owners
        self._mask = 0o555 if cfg.read_only else 0o7777
        self._file_mode = cfg.file_mode & 0o7777
        self._dir_mode = cfg.dir_mode & 0o7777

    def mode(self, attr: Attr) -> int:
        """st_mode: the entry's type and recorded permissions, else the mount's defaults."""
        if attr.is_dir:
            kind, default = stat.S_IFDIR, self._dir_mode
        else:
            kind = attr.file_type or stat.S_IFREG
            default = 0o777 if kind == stat.S_IFLNK else self._file_mode
        bits = default if attr.mode is None else attr.mode
        return kind | (bits if kind == stat.S_IFLNK else bits & self._mask)

    def owners(self, attr: Attr) -> tuple[int, int]:
        if not self._stored_owners:
            return self.uid, self.gid
        return (self.uid if attr.uid is None else attr.uid), (self.gid if attr.gid is None else attr.gid)

    def may_chown(self, attr: Attr, caller: int, caller_gid: int, pid: int, uid: int, gid: int) -> bool:
        """chown(2)'s rule for a caller that is not root (process ``pid``): it may not give the
        entry away, and may set its group only to one of its own if it owns it."""
        owner, group = self.owners(attr)
        return uid in (-1, owner) and (gid in (-1, group) or (caller == owner and gid in _groups(pid, caller_gid)))

    def st(self, attr: Attr) -> dict | None:
        """The ``st_*`` dictionary of getattr (times in integer nanoseconds), or None for an entry
        whose attributes are not known."""
        if not attr.known:
            return None
        ns = int(attr.mtime * 1e9)
        cns = ns if attr.ctime is None else int(attr.ctime * 1e9)
        uid, gid = self.owners(attr)
        return {
            "st_mode": self.mode(attr),
            "st_nlink": 2 if attr.is_dir else 1,
            "st_size": attr.size,
            "st_blocks": (attr.size + 511) // 512,
            "st_uid": uid,
            "st_gid": gid,
            "st_mtime": ns,
            "st_ctime": cns,
            "st_atime": ns if attr.atime is None else int(attr.atime * 1e9),
            "st_rdev": attr.rdev,
        }


def _groups(pid: int, gid: int) -> set[int]:
    """The groups of process ``pid`` (its gid and supplementary groups)."""
    groups = {gid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    groups.update(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return groups
