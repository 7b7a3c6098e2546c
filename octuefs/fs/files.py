"""Open files with Datafile semantics: a node per object being read or written, and handles.

A :class:`FileNode` stands for one object while it is open or holds changes not yet in the
bucket. Reads of a clean node go through the block cache, pinned to the generation that was
opened. The first write copies the content into a private staging file. Closing (flush) a
changed node seals that file into the write-back journal (:mod:`octuefs.writeback.uploads`), which
uploads data and Octue metadata in ONE request with a generation precondition: the Datafile
context manager's meaning, without making close wait for the network (unless
``upload_on_close``). Until the upload is done the mount shows the local version. Closing an
unchanged file sends nothing.

Here: the tables, opening and closing, reads and writes. Beside it: the node itself
(:mod:`octuefs.fs.filenode`), saving (:mod:`octuefs.fs.saving`), what write-back reports back
(:mod:`octuefs.fs.landing`) and renames and unlinks of open files (:mod:`octuefs.fs.moves`).

Locks, in the order they are taken: ``OpenFiles._lock`` (the node and handle tables), then a
``FileNode.lock`` (that node's state and files), then the uploader's lock. Code that only needs
a snapshot (getattr, getxattr, readdir) reads a node's plain attributes without its lock, so a
busy file never blocks ``ls`` or other files.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator

import cachetools

from octuefs.cache.content import ContentCache, pread_into
from octuefs.cache.metacache import MetadataCache
from octuefs.errors import (
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    NotFound,
    OctuefsError,
    StaleFile,
)
from octuefs.fs.filenode import FileNode, Handle, MovedMeanwhile
from octuefs.fs.landing import Landing
from octuefs.fs.moves import Moves
from octuefs.fs.saving import Saving
from octuefs.fs.times import Times
from octuefs.octue import metadata as octue
from octuefs.octue import posixmeta
from octuefs.storage.base import MAX_OBJECT_SIZE, Bucket, ObjectInfo
from octuefs.writeback.uploads import Uploader

log = logging.getLogger(__name__)

# Custom-metadata key holding an mtime set by touch/utimens, in whole POSIX seconds. It is the
# key `gcloud storage cp --preserve-posix` uses, so the two tools agree on it (posixmeta.py).
MTIME_KEY = posixmeta.MTIME_KEY
# How many versions just created through the mount (see OpenFiles.is_new) are remembered.
NEW_VERSIONS_KEPT = 4096
# How long a name left by a rename to its backup name (``data.csv~``) waits for the new file that
# editors create in its place (see FileSystem.create), in seconds.
BACKUP_WAIT = 60.0


class OpenFiles(Moves, Saving, Landing):
    """The table of open nodes and handles, and the read/write/save paths of files.

    Saving is :class:`~octuefs.fs.saving.Saving`, write-back's reports :class:`~octuefs.fs.landing.Landing`,
    renames and unlinks :class:`~octuefs.fs.moves.Moves`: one table, its parts in their own modules."""

    def __init__(self, bucket: Bucket, cache: ContentCache, metacache: MetadataCache, uploader: Uploader,
                 upload_on_close: bool = False, fsync_timeout: float | None = None, op_timeout: float | None = None,
                 times: Times | None = None):
        self.bucket = bucket
        self.times = times or Times(time.time())
        self.cache = cache
        self.metacache = metacache
        self.uploader = uploader
        uploader.on_done = self._uploaded
        self.upload_on_close = upload_on_close
        self.fsync_timeout = fsync_timeout
        self.op_timeout = op_timeout  # how long a rename or unlink waits for uploads that do not move
        self._lock = threading.Lock()
        self._nodes: dict[str, FileNode] = {}  # by object name; guarded by _lock
        self._handles: dict[int, Handle] = {}  # guarded by _lock
        self._next_fh = itertools.count(1)
        # name -> (generation, metageneration) of the last version a ``new`` node put in the
        # bucket: the file stays new once its node is gone; guarded by _lock
        self._new_versions: cachetools.LRUCache[str, tuple[int, int]] = cachetools.LRUCache(NEW_VERSIONS_KEPT)
        # name -> (backup name, generation, metageneration) of a file just renamed to its backup
        # name, whose metadata the next new file of that name takes; guarded by _lock
        self._backups: cachetools.TTLCache[str, tuple[str, int, int]] = cachetools.TTLCache(NEW_VERSIONS_KEPT,
                                                                                           BACKUP_WAIT)
        # name -> generation of a version this mount deleted, or renamed away or over: a call that
        # looked the name up before and makes its node after finds no file; guarded by _lock
        self._gone: cachetools.LRUCache[str, int] = cachetools.LRUCache(NEW_VERSIONS_KEPT)
        # entry id -> (mtime, ctime) of the version it uploads, for Times once it lands; guarded by _lock
        self._sealed_times: cachetools.LRUCache[str, tuple[float, float]] = cachetools.LRUCache(NEW_VERSIONS_KEPT)
        # Told, at each close of a reader of a clean file, whether it read the file whole from
        # offset 0 (the prefetcher: ``released(name, info, whole)``); set by the assembly.
        self.watch = None

    # --- the tables ---------------------------------------------------------------------

    def node(self, name: str) -> FileNode | None:
        with self._lock:
            return self._nodes.get(name)

    def nodes_under(self, prefix: str) -> list[FileNode]:
        with self._lock:
            return [n for name, n in self._nodes.items() if name.startswith(prefix)]

    def all_nodes(self) -> list[FileNode]:
        with self._lock:
            return list(self._nodes.values())

    def handle(self, fh: int) -> Handle:
        with self._lock:
            return self._handles[fh]

    def _node_for(self, name: str, info: ObjectInfo | None, meta: octue.OctueMetadata | None = None) -> FileNode:
        """The live node of ``name``, made from ``info`` if there is none (a new file: with ``meta``
        if given, else none but a new id). Caller holds _lock."""
        node = self._nodes.get(name)
        if node is None and info is not None and self._gone.get(name) == info.generation:
            raise FileNotFound(name)  # removed (or moved) by this mount since it was looked up
        if node is None:
            taken = meta is not None
            if meta is None:
                meta = octue.decode_object_metadata(info.metadata) if info else octue.OctueMetadata().with_id()
            node = FileNode(
                name=name,
                base=info,
                meta=meta,
                size=info.size if info else 0,
                content_type=info.content_type if info else None,
                dirty=info is None,
                meta_from=dict(info.metadata) if info else None,
                new=not taken and (info is None
                                   or self._new_versions.get(name) == (info.generation, info.metageneration)),
            )
            self._nodes[name] = node
        return node

    def open(self, name: str, info: ObjectInfo | None, writable: bool, truncate: bool = False,
             seen: FileNode | None = None, create: bool = False,
             meta: octue.OctueMetadata | None = None) -> int:
        """Open ``name``: its live node, else one made from ``info`` (``create``: a new empty file,
        with Octue metadata ``meta`` if given).

        ``seen`` is the node the caller found a moment ago: if it has since been dropped (its
        upload finished and nobody had it open), its final version is what to open.

        A node being unlinked or renamed (:meth:`held_still`) is not opened: once that ends,
        :class:`MovedMeanwhile` tells the caller to look the name up again, so the open is
        ordered after the unlink or rename, never on a version it removed.
        """
        if info is not None and info.is_dir_marker:
            raise IsADirectory(name)
        with self._lock:
            if name not in self._nodes:
                if seen is not None:
                    if seen.unlinked or seen.base is None or seen.name != name:  # (gone, or moved away)
                        raise FileNotFound(name)
                    info = seen.base
                elif info is None and not create:
                    raise FileNotFound(name)
            made = name not in self._nodes
            node = self._node_for(name, info, meta if create else None)
            moving = node.moving  # (read under _lock: see keep_open_content)
            if not moving:
                node.opens += 1
                fh = next(self._next_fh)
                handle = self._handles[fh] = Handle(node, writable)
                if not writable and self.watch is not None and node.base is not None and not node.unsaved:
                    handle.watched, handle.lock = node.base, threading.Lock()
        if moving:
            with node.lock:
                while node.moving:
                    node.moved.wait()
            raise MovedMeanwhile(name)
        if create and made:
            # Its staging file now, not at the first write: a cache that cannot take it fails
            # the create itself, and no empty file that can never be saved stays behind.
            try:
                with node.lock:
                    self._ensure_staged(node)
                    node.times = (now := time.time(), now)
            except BaseException:
                self.forget(node)
                self.release(fh)
                raise
        if truncate and writable:
            try:
                self.truncate(node, 0)
            except BaseException:
                self.release(fh)
                raise
        return fh

    def release(self, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
            if handle is None:
                return
            watched = handle.watched
            node = handle.node
            node.opens -= 1
            if node.idle and self._nodes.get(node.name) is node:
                del self._nodes[node.name]
        if node.opens == 0 and node.dirty and not node.unlinked:
            # Written after its last close: a shared mapping's pages reach us between the
            # flush of close(fd) and this release (munmap). Nothing else would ever save them.
            log.debug("saving %r at release: written after its last close (a shared mapping)", node.name)
            self.save(node)
        if node.opens == 0 and node.staging and (node.unlinked or not node.unsaved):
            # An unlinked node's writes after its unlink have nowhere to go: drop them too.
            _unlink_quietly(node.staging)
            node.staging = None
        if watched is not None and self.watch is not None:
            self.watch.released(watched.name, watched, handle.whole)

    def forget(self, node: FileNode) -> None:
        """Drop a node that no longer stands for anything (its object was deleted).

        Handles still open on it keep working on its private copy (see :meth:`keep_open_content`)
        until the last one is released; nothing of it is ever saved again.
        """
        with self._lock:
            if self._nodes.get(node.name) is node:
                del self._nodes[node.name]
            with node.lock:
                node.unlinked = True
                node.dirty = node.meta_dirty = False
                node.pending = []  # dropped with it (Uploader.withhold), or never to go up
                if node.staging and node.opens == 0:
                    _unlink_quietly(node.staging)
                    node.staging = None

    # --- data ---------------------------------------------------------------------------

    def _local_copy(self, node: FileNode) -> str | None:
        """The file holding the node's newest local content, if any. Caller holds node.lock."""
        if node.staging is not None:
            return node.staging
        if node.pending and not node.pending[-1].patch:  # (a metadata change alone has the base's content)
            return self.uploader.journal.data_path(node.pending[-1].id)
        return None

    def read(self, fh: int, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end)."""
        buf, n = self._read(fh, offset, size, None)
        return bytes(buf[:n])

    def read_into(self, fh: int, offset: int, buf: memoryview) -> int:
        """:meth:`read` of ``len(buf)`` bytes into ``buf``: how many it holds now (the FUSE
        adapter's way, with memory libfuse owns: no bytes object per read)."""
        return self._read(fh, offset, len(buf), buf)[1]

    def _read(self, fh: int, offset: int, size: int, buf: memoryview | None) -> tuple[memoryview, int]:
        """The one way an open file is read (:meth:`read`, :meth:`read_into`): into ``buf``, or if
        None into a new buffer no longer than the bytes there are (a caller may ask for 1 GiB);
        that buffer, and how many bytes it holds."""
        handle = self.handle(fh)
        node = handle.node
        with node.lock:
            local = self._local_copy(node)
            if local is not None:
                fd = os.open(local, os.O_RDONLY)
                try:
                    buf = _buffer(buf, size, os.fstat(fd).st_size - offset)
                    return buf, pread_into(fd, buf, offset)
                finally:
                    os.close(fd)
            base = node.base
        buf = _buffer(buf, size, 0 if base is None else base.size - offset)
        if base is None:
            return buf, 0
        try:
            n = self.cache.read_into(base, offset, buf)
        except NotFound as exc:
            raise StaleFile(f"{node.name!r} changed in the bucket while it was open; reopen it") from exc
        if handle.watched is not None and not handle.whole:
            _count_read(handle, offset, n)
        return buf, n

    def write(self, fh: int, data: bytes, offset: int) -> int:
        node = self.handle(fh).node
        _fits(node, offset + len(data))
        with node.lock:
            self._ensure_staged(node)
            try:
                with open(node.staging, "r+b") as f:
                    f.seek(offset)
                    f.write(data)
            except OSError as exc:
                raise self.cache.unwritable(exc) from exc
            node.size = max(node.size, offset + len(data))
            node.dirty = True
            node.mtime = None
            node.times = (now := time.time(), now)
        return len(data)

    def truncate(self, node: FileNode, length: int) -> None:
        _fits(node, length)
        with node.lock:
            self._ensure_staged(node, length)
            try:
                os.truncate(node.staging, length)
            except OSError as exc:
                if exc.errno == errno.EFBIG:
                    raise FileTooLarge(f"{node.name!r}: {length} bytes is more than the cache's filesystem takes") \
                        from exc
                raise
            node.size = length
            node.dirty = True
            node.mtime = None
            node.times = (now := time.time(), now)

    def _ensure_staged(self, node: FileNode, length: int | None = None) -> None:
        """Give the node a private full copy to write to. Caller holds node.lock.

        A cache directory that cannot be written is :class:`CacheUnwritable` (EIO), not the
        bare ENOENT or EACCES of the file inside it, which would name the wrong file."""
        if node.staging is not None:
            return
        if node.pending and not node.pending[-1].patch:  # the newest version is sealed: write to a copy of it
            path = self.cache.new_staging_path()
            try:
                with open(self.uploader.journal.data_path(node.pending[-1].id), "rb") as src, \
                        open(path, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                    if length is not None:
                        dst.truncate(length)
            except OSError as exc:
                _unlink_quietly(path)
                raise self.cache.unwritable(exc) from exc
            node.staging = path
        else:
            try:
                node.staging = self.cache.stage(node.base, length)
            except OctuefsError:
                raise
            except OSError as exc:
                raise self.cache.unwritable(exc) from exc

    # --- closing ------------------------------------------------------------------------

    def flush(self, fh: int) -> None:
        """close(2) of a handle: a writer's close saves; a reader's close never uploads."""
        handle = self.handle(fh)
        if handle.writable:
            self.save(handle.node)
            if self.upload_on_close:
                self.uploader.wait_name(handle.node.name, self.fsync_timeout)

    def fsync(self, fh: int) -> None:
        """fsync(2): returns once the file (whoever changed it) is in the bucket."""
        node = self.handle(fh).node
        if node.unlinked:
            return  # it has no name left to save under
        self.save(node)
        self.uploader.wait_name(node.name, self.fsync_timeout)

    # --- new files, and the backups editors leave ------------------------------------------

    def is_new(self, name: str, node: FileNode | None, info: ObjectInfo | None) -> bool:
        """Whether version ``info`` of ``name`` is one this mount made from a file just created
        here and never given Octue metadata (by ``node``, if it is still there)."""
        if info is None or (node is not None and not node.new):
            return False
        with self._lock:
            return self._new_versions.get(name) == (info.generation, info.metageneration)

    def left_for_backup(self, name: str, backup: ObjectInfo) -> None:
        """``name`` was just renamed to its backup name: the new file an editor writes in its place
        soon takes its metadata (:meth:`backup_of`)."""
        with self._lock:
            self._backups[name] = (backup.name, backup.generation, backup.metageneration)

    def backup_of(self, name: str) -> tuple[str, int, int] | None:
        """``(backup name, generation, metageneration)`` that ``name`` left a moment ago, once."""
        with self._lock:
            return self._backups.pop(name, None)

    def given_metadata(self, name: str) -> None:
        """A ``user.octue.*`` attribute of ``name`` is being set or removed here: it is no longer
        new (:meth:`is_new`), whether or not the change is accepted or lands."""
        with self._lock:
            self._new_versions.pop(name, None)
            node = self._nodes.get(name)
            if node is not None:
                node.new = False

    @contextlib.contextmanager
    def node_to_change(self, name: str, info: ObjectInfo | None, seen: FileNode | None = None) -> Iterator[FileNode]:
        """The node of ``name`` (made from ``info`` if it has none) for a metadata change, kept
        in the table while the change is made (an upload landing meanwhile does not drop it);
        a node made here is dropped again afterwards unless it then holds a change. ``seen``:
        the node the caller found a moment ago; if it was dropped since (its upload landed),
        its final version is what the change applies to."""
        with self._lock:
            if name not in self._nodes and seen is not None:
                if seen.unlinked or seen.base is None:
                    raise FileNotFound(name)
                info = seen.base
            node = self._node_for(name, info)
            node.changing += 1
        try:
            yield node
        finally:
            with self._lock:
                node.changing -= 1
                if node.idle and self._nodes.get(name) is node:
                    del self._nodes[name]


def _fits(node: FileNode, size: int) -> None:
    """Refuse a size no upload could ever put in the bucket, before anything is written."""
    if size > MAX_OBJECT_SIZE:
        raise FileTooLarge(f"{node.name!r}: {size} bytes is more than a GCS object holds (5 TiB)")


def _buffer(buf: memoryview | None, size: int, there: int) -> memoryview:
    """``buf``, or a new one for a read of up to ``size`` bytes of which ``there`` are there."""
    return buf if buf is not None else memoryview(bytearray(max(0, min(size, there))))


def _count_read(handle: Handle, offset: int, n: int) -> None:
    """A reader's bytes: once it has read its file whole from offset 0, its release tells the
    prefetcher so (the kernel's reads of one file may come out of order: bytes are counted, not
    ranges)."""
    with handle.lock:
        handle.got += n
        handle.from_zero = handle.from_zero or offset == 0
        handle.whole = handle.from_zero and handle.got >= handle.watched.size


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mtime_of(info: ObjectInfo) -> float:
    """The file's mtime: the one kept in metadata after touch/utimens, else the object's time."""
    recorded = posixmeta.decoded(info).mtime
    return recorded if recorded is not None else info.updated.timestamp()


def now() -> float:
    return time.time()
