"""What stat shows of an entry: its core :class:`~octuefs.fs.core.Attr` as ``st_*`` values, and
who may change its owners (chown's rule, for a mount the kernel does not check).

The mount's defaults and owners (``--file-mode``, ``--dir-mode``, ``--uid``, ``--gid``,
``--ignore-stored-owners``, ``--read-only``) are applied here, once, for both answers the FUSE
adapter gives: the ``st_*`` dictionary of getattr and the packed ``struct stat`` of
READDIRPLUS (:meth:`StatAttrs.packed`, in the layout of the ctypes struct the adapter's binding
gives). Nothing here speaks FUSE.
"""

from __future__ import annotations

import ctypes
import stat
import struct
from collections.abc import Callable

from octuefs.config import MountConfig
from octuefs.fs.posixfs import Attr

_NS = 10**9
# The fields of a struct stat that packed() sets, in the order it gives their values (their order
# in memory on x86-64 Linux); every other byte stays zero.
STAT_FIELDS = ("st_nlink", "st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks",
               "st_atimespec.tv_sec", "st_atimespec.tv_nsec", "st_mtimespec.tv_sec", "st_mtimespec.tv_nsec",
               "st_ctimespec.tv_sec", "st_ctimespec.tv_nsec")


class StatAttrs:
    """``st_*`` values of entries under one mount's configuration; ``stat_type``: the ctypes
    ``struct stat`` READDIRPLUS answers are packed as (none: :meth:`packed` is not used)."""

    def __init__(self, cfg: MountConfig, stat_type: type[ctypes.Structure] | None = None):
        self.uid, self.gid = cfg.uid, cfg.gid
        self._stored_owners = not cfg.ignore_stored_owners
        self._mask = 0o555 if cfg.read_only else 0o7777
        self._file_mode = cfg.file_mode & 0o7777
        self._dir_mode = cfg.dir_mode & 0o7777
        # What a file with no POSIX facts of its own shows (most objects): mode, uid, gid
        self._plain_file = (stat.S_IFREG | (self._file_mode & self._mask), self.uid, self.gid)
        self._stat_type = stat_type
        self._pack = struct_packer(stat_type, STAT_FIELDS) if stat_type is not None else None

    def mode(self, attr: Attr) -> int:
        """st_mode: the entry's type and recorded permissions, else the mount's defaults."""
        if attr.is_dir:
            kind, default = stat.S_IFDIR, self._dir_mode
        else:
            kind = attr.file_type or stat.S_IFREG
            default = 0o777 if kind == stat.S_IFLNK else self._file_mode
        bits = default if attr.mode is None else attr.mode
        return kind | (bits if kind == stat.S_IFLNK else bits & self._mask)

    def mode_owners(self, attr: Attr) -> tuple[int, int, int]:
        """(:meth:`mode`, uid, gid) at once (a listing asks for thousands)."""
        if not attr.is_dir and attr.file_type is None and attr.mode is None and attr.uid is None and attr.gid is None:
            return self._plain_file
        return (self.mode(attr), *self.owners(attr))

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


    def packed(self, attr: Attr) -> bytes | None:
        """The ``struct stat`` of READDIRPLUS, as bytes: what :meth:`st` says, in ``stat_type``'s
        layout (zeros where it says nothing). None for an entry whose attributes are not known
        (sent without: the kernel asks for them). Kept as bytes: 177 bytes an entry where the
        ctypes struct takes 288, for a listing held whole. Packed with ``struct`` (a listing
        packs thousands: a quarter of the time of setting a ctypes struct's fields one by one),
        and through the ctypes struct itself where struct refuses a value (out of its field's
        range: ctypes wraps it, as before)."""
        if not attr.known:
            return None
        mode, uid, gid = self.mode_owners(attr)
        size, mtime, ctime, atime = attr.size, attr.mtime, attr.ctime, attr.atime
        m = int(mtime * 1e9)
        c = m if ctime is None else int(ctime * 1e9)
        a = m if atime is None else int(atime * 1e9)
        values = (2 if attr.is_dir else 1, mode, uid, gid, attr.rdev, size, (size + 511) // 512,
                  a // _NS, a % _NS, m // _NS, m % _NS, c // _NS, c % _NS)
        if self._pack is not None:
            try:
                return self._pack(*values)
            except struct.error:
                pass
        return set_fields(self._stat_type, STAT_FIELDS, values)


def set_fields(ctype: type[ctypes.Structure], fields: tuple[str, ...], values: tuple[int, ...]) -> bytes:
    """The bytes of a zeroed ``ctype`` with ``fields`` (dotted for nested structs) set to ``values``."""
    st = ctype()
    for field, value in zip(fields, values):
        *path, last = field.split(".")
        target = st
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return bytes(st)


def struct_packer(ctype: type[ctypes.Structure], fields: tuple[str, ...]) -> Callable[..., bytes] | None:
    """:func:`set_fields` of ``ctype`` and ``fields`` as one ``struct.pack`` (values in the order
    of ``fields``; ``struct.error`` for a value out of its field's range, where ctypes would wrap
    it). None if ``ctype`` is not a layout of plain integers (then only set_fields packs)."""
    place: dict[str, tuple[int, str]] = {}

    def walk(t: type, base: int, prefix: str) -> None:
        for field in t._fields_:
            name, kind = field[0], field[1]
            offset = getattr(t, name).offset + base
            if isinstance(kind, type) and issubclass(kind, ctypes.Structure):
                walk(kind, offset, prefix + name + ".")
                continue
            code = getattr(kind, "_type_", None)
            if len(field) == 2 and isinstance(code, str) and code in "bBhHiIlLqQ":  # (no bit fields)
                size = ctypes.sizeof(kind)
                place[prefix + name] = (offset, ("bhiq" if code.islower() else "BHIQ")[(1, 2, 4, 8).index(size)])

    try:
        walk(ctype, 0, "")
        chosen = sorted((*place[f], f) for f in fields)
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    fmt, at = "=", 0
    for offset, code, _ in chosen:
        if offset < at:
            return None
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize("=" + code)
    fmt += "x" * (ctypes.sizeof(ctype) - at)
    packer = struct.Struct(fmt)
    if packer.size != ctypes.sizeof(ctype):
        return None
    order = [fields.index(f) for _, _, f in chosen]
    if order == list(range(len(fields))):
        return packer.pack
    return lambda *values: packer.pack(*[values[i] for i in order])


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
