"""Mapping between mount paths (``/a/b.txt``) and object names (``prefix/a/b.txt``).

Object names that a POSIX path cannot show (``a//b``, ``.`` or ``..`` segments, a segment over
255 bytes, a NUL) are skipped, with one warning per name for the life of the mount.
"""

from __future__ import annotations

import logging
import threading

from octuefs.errors import InvalidArgument, NameTooLong
from octuefs.storage.base import PARTS_PREFIX

log = logging.getLogger(__name__)

NAME_MAX = 255
OBJECT_NAME_MAX = 1024  # bytes of UTF-8: GCS refuses longer object names
# What a conflict copy adds to a name (writeback.conflicts.conflict_name): ".octuefs-conflict-20261125T101500Z-1a2b3c"
CONFLICT_MARK_BYTES = len(".octuefs-conflict-") + len("20261125T101500Z") + len("-1a2b3c")


def bad_segment_reason(segment: str) -> str | None:
    """Why ``segment`` cannot be a file name here, or None if it can."""
    if segment == "":
        return "an empty path segment (a double slash)"
    if segment in (".", ".."):
        return f"a {segment!r} segment"
    if "\0" in segment:
        return "a NUL character"
    if len(segment.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"a segment longer than {NAME_MAX} bytes"
    return None


class Namespace:
    """Path <-> object-name translation for one mount of ``bucket[/prefix]``."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix  # "" or ends with "/"
        self._warned: set[str] = set()  # guarded by _warned_lock
        self._warned_lock = threading.Lock()

    # --- paths -> names ---------------------------------------------------------------

    def object_name(self, path: str) -> str:
        """``/a/b`` -> ``prefix + "a/b"``. Refuses paths with segments POSIX would refuse too."""
        rel = path.strip("/")
        if not rel:
            return self.prefix.rstrip("/")  # the mount's root
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 reach us as surrogates
            raise InvalidArgument(f"{path!r} is not UTF-8 text, which every GCS object name is") from None
        for segment in rel.split("/") if rel else ():
            if len(segment.encode("utf-8", "surrogateescape")) > NAME_MAX:
                raise NameTooLong(path)
            if segment in ("", ".", ".."):
                raise InvalidArgument(f"bad path {path!r}")
        return self.prefix + rel

    @staticmethod
    def check_new_name(name: str) -> None:
        """Refuse a name for a new object that GCS would refuse, before anything is written:
        an upload that can never land must not be accepted at close. The limit leaves room for
        the mark a conflict copy adds (a version that loses a race goes up beside the object)."""
        if "\r" in name or "\n" in name:
            raise InvalidArgument(f"{name!r}: GCS object names cannot hold a carriage return or a line feed")
        limit = OBJECT_NAME_MAX - CONFLICT_MARK_BYTES
        if len(name.encode("utf-8", "surrogateescape")) > limit:
            raise NameTooLong(f"{name[:60]!r}...: an object name (with the mount's prefix) is at most {limit} bytes "
                              f"here ({OBJECT_NAME_MAX} in GCS, less room for a conflict copy's mark)")
        if name.startswith(".well-known/acme-challenge/"):
            raise InvalidArgument(f"{name!r}: GCS refuses object names under .well-known/acme-challenge/")

    def dir_prefix(self, path: str) -> str:
        """The listing prefix of the directory at ``path``: ``""`` or ``"prefix/a/"``."""
        name = self.object_name(path)
        return name + "/" if name else ""

    @staticmethod
    def parent(path: str) -> str:
        parent = path.rstrip("/").rsplit("/", 1)[0]
        return parent or "/"

    @staticmethod
    def basename(path: str) -> str:
        return path.rstrip("/").rsplit("/", 1)[-1]

    @staticmethod
    def join(directory: str, child: str) -> str:
        return directory.rstrip("/") + "/" + child

    # --- names -> entries -------------------------------------------------------------

    def entry_name(self, dir_prefix: str, object_name: str) -> str | None:
        """The directory entry an object (or ``dir/`` prefix) of a listing shows as, or None.

        ``object_name`` starts with ``dir_prefix``. Returns None for the directory's own marker
        and for names a path cannot show (warning once per name).
        """
        rest = object_name[len(dir_prefix) :]
        if rest == "":
            return None  # the directory's own marker object
        if rest == PARTS_PREFIX:
            return None  # parts of large uploads being composed (writeback/composite.py)
        if rest.endswith("/"):
            rest = rest[:-1]
        reason = bad_segment_reason(rest) if "/" not in rest else "a double slash"
        if reason is not None:
            self.warn_once(object_name, reason)
            return None
        return rest

    def warn_once(self, object_name: str, reason: str) -> None:
        with self._warned_lock:
            if object_name in self._warned:
                return
            self._warned.add(object_name)
        log.warning("skipping object %r: its name has %s, which a path cannot show", object_name, reason)
