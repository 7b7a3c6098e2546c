"""Files by path: create, open, truncate and unlink. Reads, writes and closes go to the open
files' table (:mod:`octuefs.fs.files`), which keeps their Datafile semantics.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import (
    Conflict,
    FileExists,
    FileNotFound,
    InvalidArgument,
    IsADirectory,
    NotFound,
    PreconditionFailed,
)
from octuefs.fs.files import MovedMeanwhile
from octuefs.fs.filestate import UploadStates
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.fs.replacing import Replacer
from octuefs.octue import metadata as octue
from octuefs.octue import posixmeta
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)


class FileOps:
    """create, open, truncate and unlink by path (see the module docstring)."""

    def __init__(self, parts: MountParts,
                 lookups: Lookups, replacer: Replacer, states: UploadStates,
                 decoded: Callable[[ObjectInfo], octue.OctueMetadata]):
        self.bucket, self.times, self.ns, self.metacache = parts.bucket, parts.times, parts.ns, parts.metacache
        self.cache, self.uploader, self.files, self.prefetch = parts.cache, parts.uploader, parts.files, parts.prefetch
        self.lookups = lookups
        self.replacer = replacer
        self.states = states  # user.octuefs.state (filestate.py): a removed file keeps no conflict
        self.decoded = decoded  # the Octue metadata of an object (XattrSurface.decoded)

    @staticmethod
    def _opening(attempt, *args):
        """``attempt(*args)``, again while it waited for an unlink or rename of the file (then
        what it looked up is out of date: it looks again, and is ordered after that)."""
        while True:
            try:
                return attempt(*args)
            except MovedMeanwhile:
                continue

    def create(self, path: str, flags: int = os.O_WRONLY, mode: int | None = None,
               owner: dict[str, int] | None = None) -> int:
        """Open ``path`` for writing, made if new: a new file records ``mode`` (the kernel's,
        umask applied) and ``owner`` (uid, gid) with its first upload (posixmeta.py)."""
        self.lookups.check_writable()
        fh, made = self._opening(self._create, path, flags)
        if made and (mode is not None or owner):
            node = self.files.handle(fh).node
            with node.lock:
                node.posix.update(posixmeta.changes(mode=mode, **(owner or {})))
        return fh

    def _create(self, path: str, flags: int) -> tuple[int, bool]:
        """``(handle, whether the file was made by this call)``."""
        name, entry, node = self.lookups.resolve(path)
        if entry is DIR:
            raise IsADirectory(path)
        if node is not None or isinstance(entry, ObjectInfo):
            if flags & os.O_EXCL:
                raise FileExists(path)
            return self.files.open(name, None if node else entry, writable=True, truncate=True, seen=node), False
        self.ns.check_new_name(name)
        fh = self.files.open(name, None, writable=True, create=True, meta=self._left_in_backup(name))
        self.times.entry_changed(name)
        return fh, True

    def _left_in_backup(self, name: str) -> octue.OctueMetadata | None:
        """The Octue metadata a new file ``name`` takes: that of the file renamed from ``name`` to
        ``name~`` a moment ago, if that backup is still as it was moved (vim's and emacs's way to
        save: rename the original to its backup, write a new file, maybe delete the backup)."""
        left = self.files.backup_of(name)
        if left is None:
            return None
        backup, generation, metageneration = left
        node = self.lookups.node(backup)
        info = node.base if node is not None else self.lookups.lookup(backup)
        if (not isinstance(info, ObjectInfo) or (info.generation, info.metageneration) != (generation, metageneration)
                or (node is not None and node.unsaved)):
            return None
        log.info("new file %r takes the Octue metadata of %r, the original it was renamed to a moment ago",
                 name, backup)
        return self.decoded(info)

    def open(self, path: str, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self.lookups.check_writable()
        name, info, fh = self._opening(self._open, path, writable, flags)
        if not writable and info is not None and self.prefetch is not None:
            self.prefetch.opened(name, info)
        return fh

    def _open(self, path: str, writable: bool, flags: int) -> tuple[str, ObjectInfo | None, int]:
        name, info, node = self.lookups.file_info(path)
        return name, info, self.files.open(name, info, writable, truncate=bool(flags & os.O_TRUNC), seen=node)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self.lookups.check_writable()
        if length < 0:
            raise InvalidArgument("negative length")
        if fh is not None:
            self.files.truncate(self.files.handle(fh).node, length)
            return
        fh = self._opening(self._open, path, True, 0)[2]
        try:
            node = self.files.handle(fh).node
            self.files.truncate(node, length)
            self.files.save(node)
        finally:
            self.files.release(fh)

    def unlink(self, path: str) -> None:
        self.lookups.check_writable()
        name, entry, node = self.lookups.resolve(path)
        if entry is DIR and node is None:
            raise IsADirectory(path)
        if node is None and entry is MISSING:
            raise FileNotFound(path)
        # (A node even for a clean file: an open or setfattr racing the unlink shares it and is
        # ordered with it, instead of making one from the version being deleted.)
        with self.files.pinned(name, node, entry) as node, self.files.held_still(node):
            if node is not None:  # (here, where no close can seal it meanwhile)
                self.files.keep_open_content(node)  # for the handles still open on it
            # Queued versions are moot once the object is deleted, and only then.
            with self.replacer.replacing(name, node, node.base if node is not None else entry, removing=True) as info:
                if info is not None:
                    self.uploader.wait_pace(name)  # (its upload just landed: not a 429 from GCS)
                    try:
                        self.bucket.delete(name, if_generation_match=info.generation)
                    except NotFound:
                        pass
                    except PreconditionFailed as exc:
                        raise Conflict(f"{name!r} changed in the bucket since it was read; not deleted") from exc
                self.files.gone(name, info)
            if node is not None:
                self.files.forget(node)
        self.cache.drop(name)
        self.metacache.removed(name)  # (a file never uploaded, or deleted elsewhere first: no delete told it)
        self.times.entry_changed(name)
        self.states.forget(name)  # a file made there later, elsewhere, has no conflict of ours
