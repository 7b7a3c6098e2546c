"""POSIX facts of an object (mode, owners, times, symlink, special file type) as custom metadata.

The one codec for these keys; nothing else in octuefs writes them. The layout is Google's, so a
bucket written by ``gcloud storage cp --preserve-posix`` (or ``gsutil -P``) shows its modes, owners
and times through the mount, and what the mount records reads back in those tools:

* ``goog-reserved-posix-mode``: the permission bits in octal, ``644`` (four digits, ``4755``,
  only when a setuid, setgid or sticky bit is set);
* ``goog-reserved-posix-uid`` / ``goog-reserved-posix-gid``: decimal numbers;
* ``goog-reserved-file-mtime`` / ``goog-reserved-file-atime``: whole POSIX seconds;
* ``goog-reserved-file-is-symlink`` = ``true``: the object is a symbolic link whose content is its
  target (gcloud storage, gcsfuse 3.9+). Older gcsfuse kept the target in the value of
  ``gcsfuse_symlink_target`` instead; that is read too, never written.

Named pipes, sockets and device nodes have no Google layout. octuefs keeps them as empty objects
with ``octuefs-file-type`` (``fifo``, ``socket``, ``char``, ``block``) and, for devices,
``octuefs-file-rdev`` (``major:minor``).

Reading is lenient: a malformed value reads as absent (logged once at DEBUG), as does an empty one
(fake-gcs-server stores ``""`` for a deleted key). Writing is a change set: key -> text, or
``None`` to remove the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from collections.abc import Mapping

log = logging.getLogger(__name__)

MODE_KEY = "goog-reserved-posix-mode"
UID_KEY = "goog-reserved-posix-uid"
GID_KEY = "goog-reserved-posix-gid"
MTIME_KEY = "goog-reserved-file-mtime"
ATIME_KEY = "goog-reserved-file-atime"
SYMLINK_KEY = "goog-reserved-file-is-symlink"
GCSFUSE_SYMLINK_KEY = "gcsfuse_symlink_target"
TYPE_KEY = "octuefs-file-type"
RDEV_KEY = "octuefs-file-rdev"

PERMISSION_BITS = 0o7777
# Largest values shown: a uid_t or gid_t is 32 bits and (uid_t)-1 means "none"; a time past the
# year 9999 is garbage (and past ~1e300 s its nanoseconds overflow to inf). Larger reads as absent,
# or the kernel's 32-bit field would take it modulo 2**32 (uid 4294967296 shown as root).
MAX_ID = 0xFFFFFFFE
MAX_SECONDS = 253402300799.0  # 9999-12-31T23:59:59Z
# octuefs-file-type value <-> the file type bits of st_mode
SPECIAL_TYPES = {"fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "char": stat.S_IFCHR, "block": stat.S_IFBLK}
_TYPE_NAMES = {bits: name for name, bits in SPECIAL_TYPES.items()}


@dataclasses.dataclass(frozen=True)
class PosixFacts:
    """What an object's custom metadata says about it as a POSIX file; None: not recorded."""

    file_type: int = stat.S_IFREG  # S_IFREG, S_IFLNK, S_IFIFO, S_IFSOCK, S_IFCHR or S_IFBLK
    mode: int | None = None  # permission bits only
    uid: int | None = None
    gid: int | None = None
    mtime: float | None = None
    atime: float | None = None
    rdev: int = 0
    target: str | None = None  # a link's target when the metadata holds it (older gcsfuse)

    @property
    def is_symlink(self) -> bool:
        return self.file_type == stat.S_IFLNK


NOTHING = PosixFacts()  # what metadata without any POSIX key says (most objects'); compare with ``is``
# Every key decode reads: metadata with none of them (most objects) decodes to NOTHING.
_KEYS = frozenset({MODE_KEY, UID_KEY, GID_KEY, MTIME_KEY, ATIME_KEY, SYMLINK_KEY, GCSFUSE_SYMLINK_KEY, TYPE_KEY,
                   RDEV_KEY})


def _set(custom: Mapping[str, str], key: str) -> str | None:
    value = custom.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _number(custom: Mapping[str, str], key: str, parse) -> int | float | None:
    raw = _set(custom, key)
    if raw is None:
        return None
    try:
        value = parse(raw)
    except (ValueError, OverflowError):
        log.debug("ignoring malformed %s=%.40r", key, raw)
        return None
    return value if value >= 0 else None


def _octal(raw: str) -> int:
    value = int(raw[2:] if raw.lower().startswith("0o") else raw, 8)
    if value > PERMISSION_BITS:
        raise ValueError(raw)
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if value != value or value in (float("inf"), float("-inf")) or value > MAX_SECONDS:
        raise ValueError(raw)
    return value


def _id(raw: str) -> int:
    value = int(raw)
    if value > MAX_ID:
        raise ValueError(raw)
    return value


def _rdev(raw: str | None) -> int:
    if raw is None:
        return 0
    try:
        major, _, minor = raw.partition(":")
        return os.makedev(int(major), int(minor))
    except (ValueError, OverflowError):
        log.debug("ignoring malformed %s=%.40r", RDEV_KEY, raw)
        return 0


def decode(custom: Mapping[str, str] | None) -> PosixFacts:
    """The POSIX facts of an object with custom metadata ``custom``. Never raises."""
    if not custom or _KEYS.isdisjoint(custom):  # (one set operation: a listing decodes thousands)
        return NOTHING
    file_type, target = stat.S_IFREG, None
    if (_set(custom, SYMLINK_KEY) or "").lower() == "true":
        file_type = stat.S_IFLNK
    elif _set(custom, GCSFUSE_SYMLINK_KEY) is not None:
        file_type, target = stat.S_IFLNK, custom[GCSFUSE_SYMLINK_KEY]
    elif _set(custom, TYPE_KEY) in SPECIAL_TYPES:
        file_type = SPECIAL_TYPES[_set(custom, TYPE_KEY)]
    rdev = _rdev(_set(custom, RDEV_KEY)) if file_type in (stat.S_IFCHR, stat.S_IFBLK) else 0
    return PosixFacts(file_type=file_type, mode=_number(custom, MODE_KEY, _octal),
                      uid=_number(custom, UID_KEY, _id), gid=_number(custom, GID_KEY, _id),
                      mtime=_number(custom, MTIME_KEY, _seconds), atime=_number(custom, ATIME_KEY, _seconds),
                      rdev=rdev, target=target)


def decoded(info) -> PosixFacts:
    """:func:`decode` of an ObjectInfo's metadata, memoized on it (an ObjectInfo never changes)."""
    custom = info.metadata
    if not custom or _KEYS.isdisjoint(custom):  # (no memo needed: nothing to decode)
        return NOTHING
    facts = info.__dict__.get("_posix_memo")
    if facts is None:
        facts = decode(info.metadata)
        object.__setattr__(info, "_posix_memo", facts)
    return facts


# --- writing: change sets -------------------------------------------------------------------


def mode_text(mode: int) -> str:
    bits = mode & PERMISSION_BITS
    return f"{bits:04o}" if bits > 0o777 else f"{bits:03o}"


def seconds_text(seconds: float) -> str:
    return str(int(seconds))


def changes(*, mode: int | None = None, uid: int | None = None, gid: int | None = None,
            atime: float | None = None) -> dict[str, str]:
    """The keys to set for the given facts (those given only; -1 owners mean "unchanged")."""
    out: dict[str, str] = {}
    if mode is not None:
        out[MODE_KEY] = mode_text(mode)
    if uid is not None and uid >= 0:
        out[UID_KEY] = str(uid)
    if gid is not None and gid >= 0:
        out[GID_KEY] = str(gid)
    if atime is not None:
        out[ATIME_KEY] = seconds_text(atime)
    return out


def apply(custom: Mapping[str, str], change_set: Mapping[str, str | None]) -> dict[str, str]:
    """``custom`` with ``change_set`` applied (a None value removes its key)."""
    result = dict(custom)
    for key, value in change_set.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def with_mtime(custom: Mapping[str, str], mtime: float | None, keep: bool) -> dict[str, str]:
    """``custom`` for an upload: the mtime key set to ``mtime`` if given, else kept only when
    ``keep`` (the same content keeps its recorded mtime; new content takes the upload's time)."""
    result = dict(custom)
    kept = result.pop(MTIME_KEY, None) if keep else None
    result.pop(MTIME_KEY, None)
    if mtime is not None:
        result[MTIME_KEY] = seconds_text(mtime)
    elif kept is not None:
        result[MTIME_KEY] = kept
    return result


def symlink_metadata() -> dict[str, str]:
    """The custom metadata of a new symbolic link (its target is the object's content)."""
    return {SYMLINK_KEY: "true"}


def special_metadata(file_type: int, rdev: int = 0) -> dict[str, str]:
    """The custom metadata of a new named pipe, socket or device node; ValueError for another type."""
    name = _TYPE_NAMES.get(stat.S_IFMT(file_type))
    if name is None:
        raise ValueError(f"no special file type 0o{stat.S_IFMT(file_type):o}")
    out = {TYPE_KEY: name}
    if name in ("char", "block"):
        out[RDEV_KEY] = f"{os.major(rdev)}:{os.minor(rdev)}"
    return out
