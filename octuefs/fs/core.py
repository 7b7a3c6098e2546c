"""The filesystem in plain Python: the one object FUSE calls (:class:`FileSystem`).

Nothing here knows about FUSE: calls take mount paths (``/a/b.txt``) and return plain values
(:class:`Attr`, bytes, names), and failures are octuefs's own exceptions from
:mod:`octuefs.errors`. ``fuse_ops`` turns those into errno values. Tests drive this class
directly against the in-memory bucket, without FUSE.

:class:`FileSystem` is a facade: it wires the core's parts together and hands each call to the
one that does it. What a path is: :mod:`octuefs.fs.lookups`; stat, listings, mkdir, rmdir:
:mod:`octuefs.fs.directories`; create, open, truncate, unlink: :mod:`octuefs.fs.fileops`; open
files and their Datafile semantics: :mod:`octuefs.fs.files`; rename: :mod:`octuefs.fs.rename`
(with :mod:`~octuefs.fs.takeover` and :mod:`~octuefs.fs.dirrename`); extended attributes:
:mod:`octuefs.fs.xattrs`; modes, owners, times and links: :mod:`octuefs.fs.posixfs`. The caches
and write-back it works on are built by :mod:`octuefs.assembly` and given to it
(:class:`~octuefs.fs.parts.MountParts`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from octuefs.errors import OctuefsError
from octuefs.fs.directories import Directories
from octuefs.fs.dirrename import DirectoryRenames
from octuefs.fs.fileops import FileOps
from octuefs.fs.files import FileNode
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.fs.posixfs import Attr, PosixSurface
from octuefs.fs.rename import Renames
from octuefs.fs.replacing import Replacer
from octuefs.fs.takeover import TakeOvers
from octuefs.fs.xattrs import PREFIXES as XATTR_PREFIXES  # noqa: F401  (fuse_ops answers other names itself)
from octuefs.fs.xattrs import XattrSurface
from octuefs.octue import metadata as octue
from octuefs.octue import posixmeta
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)


class FileSystem:
    """What the FUSE layer (and ``octuefs``'s control socket) calls; see the module docstring."""

    def __init__(self, parts: MountParts, givebacks_settled: threading.Thread | None = None):
        self.config, self.bucket, self.times, self.ns = parts.config, parts.bucket, parts.times, parts.ns
        self.metacache, self.fills, self.cache = parts.metacache, parts.fills, parts.cache
        self.journal, self.uploader = parts.journal, parts.uploader
        self.files, self.prefetch = parts.files, parts.prefetch
        self.givebacks = parts.givebacks
        self._started = parts.started
        # Take-over renames an earlier mount left half done, settled in the background (assembly.py).
        self.givebacks_settled = givebacks_settled
        self.lookups = Lookups(parts)
        self.xattrs = XattrSurface(parts, self.lookups)
        self.posix = PosixSurface(parts, self.lookups, self.xattrs.changing)  # modes, owners, times, links
        self.fills.on_marker = self.posix.marker_listed
        self.dirs = Directories(parts, self.lookups, self.posix)
        replacer = Replacer(parts)
        self.fileops = FileOps(parts, self.lookups, replacer, self.xattrs.states, self.xattrs.decoded)
        self.takeovers = TakeOvers(parts)
        self.dir_renames = DirectoryRenames(parts, self.lookups, self.xattrs.datasets, self.posix.forget_markers)
        self.renames = Renames(parts, self.lookups, replacer, self.takeovers, self.dir_renames, self.xattrs.states)
        self.leave_pending = False  # set by `octuefs unmount --leave-pending`

    # --- lookups (lookups.py) ---------------------------------------------------------------

    def lookup(self, name: str) -> ObjectInfo | object:
        return self.lookups.lookup(name)

    def resolve(self, path: str | None, gone_hides: bool = False) -> tuple[str, ObjectInfo | object, FileNode | None]:
        return self.lookups.resolve(path, gone_hides)

    def file_info(self, path: str) -> tuple[str, ObjectInfo | None, FileNode | None]:
        return self.lookups.file_info(path)

    def check_writable(self) -> None:
        self.lookups.check_writable()

    @property
    def started(self) -> float:
        """When the mount started: the mtime of a directory that records none."""
        return self._started

    # --- attributes and directories (directories.py) -------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> Attr:
        return self.dirs.getattr(path, fh)

    def statfs(self) -> dict[str, int]:
        blocks = 1 << 40  # a bucket has no size; report 4 PiB of 4 KiB blocks, all free
        return {"bsize": 4096, "frsize": 4096, "blocks": blocks, "bfree": blocks, "bavail": blocks,
                "files": 1 << 32, "ffree": 1 << 32, "namemax": 255}

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        return self.dirs.readdir(path)

    def readdir_batches(self, path: str) -> Iterator[tuple[list[tuple[str, Attr]], bool]]:
        return self.dirs.readdir_batches(path)

    def dir_epoch(self, path: str) -> tuple[int, int]:
        return self.dirs.dir_epoch(path)

    def live_names(self, path: str) -> frozenset[str]:
        return self.dirs.live_names(path)

    def mkdir(self, path: str, mode: int | None = None, owner: dict[str, int] | None = None) -> None:
        self.dirs.mkdir(path, mode, owner)

    def rmdir(self, path: str) -> None:
        self.dirs.rmdir(path)

    # --- files (fileops.py, files.py) -------------------------------------------------------------

    def create(self, path: str, flags: int = os.O_WRONLY, mode: int | None = None,
               owner: dict[str, int] | None = None) -> int:
        return self.fileops.create(path, flags, mode, owner)

    def open(self, path: str, flags: int) -> int:
        return self.fileops.open(path, flags)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return self.files.read(fh, size, offset)

    def read_into(self, fh: int, offset: int, buf: memoryview) -> int:
        return self.files.read_into(fh, offset, buf)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        return self.files.write(fh, data, offset)

    def flush(self, fh: int) -> None:
        self.files.flush(fh)

    def fsync(self, fh: int) -> None:
        self.files.fsync(fh)

    def release(self, fh: int) -> None:
        self.files.release(fh)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self.fileops.truncate(path, length, fh)

    def unlink(self, path: str) -> None:
        self.fileops.unlink(path)

    def rename(self, old: str, new: str) -> None:
        self.renames.rename(old, new)

    # --- POSIX attributes (posixfs.py) -----------------------------------------------------------

    def utimens(self, path: str, mtime: float | None = None, atime: float | None = None) -> None:
        """touch: ``mtime`` (None: now) and ``atime`` (None: unchanged); see :mod:`octuefs.fs.posixfs`."""
        self.set_times(path, atime, time.time() if mtime is None else mtime)

    def set_times(self, path: str, atime: float | None, mtime: float | None) -> None:
        """utimensat: each time given is set, None leaves it as it is (UTIME_OMIT)."""
        self.posix.utimens(path, atime, mtime)

    def chmod(self, path: str, mode: int) -> None:
        self.posix.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """-1 (or None) leaves the owner or group as it is."""
        self.posix.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)

    def symlink(self, path: str, target: str, owner: dict[str, int] | None = None) -> None:
        self.posix.symlink(path, target, posixmeta.changes(**(owner or {})))

    def readlink(self, path: str) -> str:
        return self.posix.readlink(path)

    def mknod(self, path: str, mode: int, rdev: int = 0, owner: dict[str, int] | None = None) -> None:
        self.posix.mknod(path, mode, rdev, posixmeta.changes(**(owner or {})))

    def link(self, path: str, target: str) -> None:
        self.posix.link(path, target)

    # --- extended attributes (xattrs.py) ---------------------------------------------------------

    def getxattr(self, path: str, name: str) -> bytes:
        return self.xattrs.get(path, name)

    def listxattr(self, path: str) -> list[str]:
        return self.xattrs.list(path)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self.xattrs.set(path, name, value, flags)

    def removexattr(self, path: str, name: str) -> None:
        self.xattrs.remove(path, name)

    def metadata_of(self, info: ObjectInfo) -> octue.OctueMetadata:
        return self.xattrs.decoded(info)

    # --- what the control socket asks (control.py) -------------------------------------------------

    @property
    def bucket_name(self) -> str:
        return self.bucket.name

    def upload_status(self) -> dict:
        return {**self.uploader.status(), "give_backs": self.givebacks.status()}

    def pending_uploads(self) -> list:
        """The uploads queued or running now (the uploader's snapshot)."""
        return self.uploader.snapshot()

    def sync_uploads(self, timeout: float | None, progress: Callable[[int, int], None]) -> int:
        """Wait for the pending uploads; how many are left. Take-overs' give-backs still owed
        count as pending: a source carrying the id of the file it failed to replace is not what
        the mount shows."""
        pending = self.uploader.sync(timeout, progress=progress)
        return pending + self.givebacks.settle_owed(self.bucket)

    def unreported_conflicts(self) -> tuple[int, list]:
        return self.journal.unreported_conflicts()

    def mark_conflicts_reported(self, upto: int) -> None:
        self.journal.mark_reported(upto)

    def cache_usage(self) -> dict:
        """For ``octuefs status``: clean bytes held and their limit, and unsaved bytes."""
        usage = self.cache.usage()
        usage["unsaved_bytes"] = self.cache.staging_bytes() + self.journal.pending_bytes()
        problem = self.cache.write_problem(self.journal.pending_dir)
        if problem is not None:
            usage["error"] = problem
            log.error("the cache directory %s cannot be written (%s): writes into the mount fail (EIO) until it can",
                      self.config.cache_dir, problem)
        return usage

    # --- lifetime ---------------------------------------------------------------------------

    def shutdown(self, drain: bool | None = None) -> int:
        """Seal what is still unsaved, then finish the uploads (unless ``drain`` is False:
        then they stay journaled for the next mount). Returns how many are left."""
        for node in self.files.all_nodes():
            if node.dirty or node.meta_dirty:
                try:
                    self.files.save(node)
                except (OctuefsError, OSError) as exc:
                    log.error("could not save %r at unmount (%s); its content stays in %s", node.name, exc, node.staging)
                except Exception:
                    log.exception("could not save %r at unmount; it stays in %s", node.name, node.staging)
        if self.prefetch is not None:
            self.prefetch.close()  # nothing more fetched ahead for readers who are leaving
        self.posix.links.close()
        drain = not self.leave_pending if drain is None else drain
        self.givebacks.stop()  # (what is still owed stays journaled for the next mount)
        left = self.uploader.shutdown(drain=drain)
        if drain:
            left += self.givebacks.settle_owed(self.bucket)
        self.cache.close()
        return left
