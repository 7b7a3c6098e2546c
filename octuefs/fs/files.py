"""Open files with Datafile semantics: a node per object being read or written, and handles.

A :class:`FileNode` stands for one object while it is open or holds changes not yet in the
bucket. Reads of a clean node go through the block cache, pinned to the generation that was
opened. The first write copies the content into a private staging file. Closing (flush) a
changed node seals that file into the write-back journal (:mod:`octuefs.writeback.uploads`), which
uploads data and Octue metadata in ONE request with a generation precondition: the Datafile
context manager's meaning, without making close wait for the network (unless
``upload_on_close``). Until the upload is done the mount shows the local version. Closing an
unchanged file sends nothing.

Locks, in the order they are taken: ``OpenFiles._lock`` (the node and handle tables), then a
``FileNode.lock`` (that node's state and files), then the uploader's lock. Code that only needs
a snapshot (getattr, getxattr, readdir) reads a node's plain attributes without its lock, so a
busy file never blocks ``ls`` or other files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator

import cachetools

from octuefs.cache.content import ContentCache
from octuefs.cache.metacache import MetadataCache
from octuefs.errors import (
    FileNotFound,
    FileTooLarge,
    IsADirectory,
    NotFound,
    OctuefsError,
    StaleFile,
)
from octuefs.fs.times import Times
from octuefs.octue import metadata as octue
from octuefs.octue import posixmeta
from octuefs.storage.base import MAX_OBJECT_SIZE, Bucket, ObjectInfo
from octuefs.writeback.entry import CONFLICT, DONE, Entry, patched_object
from octuefs.writeback.merge import merge_metadata
from octuefs.writeback.uploads import Uploader, Withheld

log = logging.getLogger(__name__)

# Custom-metadata key holding an mtime set by touch/utimens, in whole POSIX seconds. It is the
# key `gcloud storage cp --preserve-posix` uses, so the two tools agree on it (posixmeta.py).
MTIME_KEY = posixmeta.MTIME_KEY
# How many versions just created through the mount (see OpenFiles.is_new) are remembered.
NEW_VERSIONS_KEPT = 4096
# How long a name left by a rename to its backup name (``data.csv~``) waits for the new file that
# editors create in its place (see FileSystem.create), in seconds.
BACKUP_WAIT = 60.0


@dataclasses.dataclass(eq=False)
class FileNode:
    """One object being read or written through the mount. ``lock`` guards all writes below."""

    name: str
    base: ObjectInfo | None  # the bucket version this node was opened from / last uploaded
    meta: octue.OctueMetadata  # current Octue metadata (immutable value; swapped whole)
    size: int
    staging: str | None = None  # private full copy once written to
    dirty: bool = False  # unsaved data (a new file is dirty until its first upload)
    meta_dirty: bool = False  # metadata changes that travel with the next upload
    mtime: float | None = None  # explicit mtime (utimens) to store with the next upload
    times: tuple[float, float] | None = None  # (mtime, ctime) of its newest change here (times.py)
    # POSIX keys (chmod, chown, atime; posixmeta.py) changed here and not yet in an upload or
    # patch: key -> text, None to remove; folded into the next one, then cleared.
    posix: dict[str, str | None] = dataclasses.field(default_factory=dict)
    content_type: str | None = None
    opens: int = 0
    unlinked: bool = False
    pending: list[Entry] = dataclasses.field(default_factory=list)  # closed versions not yet uploaded
    moving: bool = False  # a rename is putting it under another name: nothing is sealed meanwhile
    pins: int = 0  # unlinks and renames of it under way (OpenFiles.pinned): kept in the table; OpenFiles._lock
    # The custom metadata ``meta`` was last in step with (read, sent or landed): the node's own
    # changes are what ``meta`` changed from it, so changes merged in since are never undone.
    meta_from: dict[str, str] | None = None
    # Created through this mount and given no Octue metadata since: its id is one this mount
    # minted, and a rename over another file takes that file's metadata (see FileSystem.rename).
    new: bool = False
    # Metadata changes under way (OpenFiles.node_to_change): the node is not dropped meanwhile,
    # or a change would land on a node nobody sees again. Guarded by OpenFiles._lock.
    changing: int = 0
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.moved = threading.Condition(self.lock)  # notified when ``moving`` ends

    @property
    def unsaved(self) -> bool:
        return self.dirty or self.meta_dirty or bool(self.pending)

    @property
    def only_patches(self) -> bool:
        """Its only pending work is metadata patches: nothing unsaved or sealed of its content, not
        open, no unlink or rename using it. Such a node does not keep visible a file the bucket
        says is gone (:meth:`FileSystem.resolve`): its patches are moot, dropped once sent."""
        pending = self.pending
        return (self.opens == 0 and not self.dirty and not self.pins and not self.moving
                and bool(pending) and all(e.patch for e in pending))

    @property
    def idle(self) -> bool:
        """Nothing keeps it in the table: not open, nothing unsaved, no unlink or rename using it,
        no metadata change being made on it."""
        return self.opens == 0 and not self.unsaved and not self.pins and not self.changing


class MovedMeanwhile(FileNotFound):
    """An open waited for an unlink or rename of its file (:meth:`OpenFiles.open`): what it looked
    up may be out of date; the caller looks the name up again (ENOENT if it does not)."""


@dataclasses.dataclass(eq=False)
class Handle:
    node: FileNode
    writable: bool


class OpenFiles:
    """The table of open nodes and handles, and the read/write/save paths of files."""

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
                self._handles[fh] = Handle(node, writable)
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

    def gone(self, name: str, info: ObjectInfo | None) -> None:
        """This mount deleted version ``info`` of ``name`` (or renamed it away, or over it): a
        lookup of it made before is out of date, and opens nothing (see :meth:`_node_for`)."""
        if info is not None:
            with self._lock:
                self._gone[name] = info.generation

    @contextlib.contextmanager
    def pinned(self, name: str, node: FileNode | None, entry: object) -> Iterator[FileNode | None]:
        """The node of file ``name`` for an unlink or a rename of it: ``node``, else one made from
        ``entry`` (the ObjectInfo looked up; anything else: None). Every open, close and setfattr
        of the name meanwhile then shares it, so they are ordered with the unlink or rename
        (:meth:`held_still`) instead of working on a version it is removing. A node made here is
        dropped again afterwards unless it is open or holds a change; until then it stays in the
        table even once its uploads land (else a call meanwhile would make another node of the
        name, on the version being removed)."""
        with self._lock:
            current = self._nodes.get(name)
            if current is None and node is not None:
                if node.unlinked or node.name != name:
                    raise FileNotFound(name)  # unlinked or renamed away since it was looked up
                current = self._nodes[name] = node  # dropped since (its upload landed): held again
            elif current is None and isinstance(entry, ObjectInfo):
                current = self._node_for(name, entry)
            if current is not None:
                current.pins += 1
        if current is None:
            yield None
            return
        try:
            yield current
        finally:
            with self._lock:
                current.pins -= 1
                if current.idle and self._nodes.get(current.name) is current:
                    del self._nodes[current.name]

    def keep_open_content(self, node: FileNode) -> None:
        """POSIX: a file unlinked (or replaced by a rename) while open stays readable and writable
        through the handles open on it. Before its name and object go, give such a node a private
        copy of its newest content: the staging file it has, a copy of its sealed version, or
        (a clean file) its content fetched from the bucket. (Called with the node held still:
        ``opens`` is read under ``_lock``, where :meth:`open` reads ``moving``, so an open either
        counts here or waits for the move to end.)"""
        with self._lock:
            opened = node.opens > 0
        with node.lock:
            if opened and node.staging is None and not node.unlinked:
                self._ensure_staged(node)

    def renamed(self, node: FileNode | None, old_name: str, new_name: str, info: ObjectInfo, *,
                still_new: bool = False, took_over: bool = False) -> None:
        """``old_name`` is now ``new_name`` in the bucket, as ``info``; ``node`` is its live node, if
        any. ``still_new``: it was new (:meth:`is_new`) and stays so; ``took_over``: it carries the
        Octue metadata of the file it replaced instead of its own, so is no longer new."""
        with self._lock:
            self._new_versions.pop(old_name, None)
            if still_new:
                self._new_versions[new_name] = (info.generation, info.metageneration)
            if node is None:
                return
            listed = self._nodes.get(node.name) is node
            if listed:
                del self._nodes[node.name]
            node.name = new_name
            node.base = info
            if took_over:
                with node.lock:  # (settled before the rename: nothing unsaved to keep)
                    node.meta, node.meta_from = octue.decode_object_metadata(info.metadata), dict(info.metadata)
                    node.new = False
            if listed or node.opens > 0:  # (one dropped since, idle, stays dropped)
                self._nodes[new_name] = node

    # --- data ---------------------------------------------------------------------------

    def _local_copy(self, node: FileNode) -> str | None:
        """The file holding the node's newest local content, if any. Caller holds node.lock."""
        if node.staging is not None:
            return node.staging
        if node.pending and not node.pending[-1].patch:  # (a metadata change alone has the base's content)
            return self.uploader.journal.data_path(node.pending[-1].id)
        return None

    def read(self, fh: int, size: int, offset: int) -> bytes:
        node = self.handle(fh).node
        with node.lock:
            local = self._local_copy(node)
            if local is not None:
                with open(local, "rb") as f:
                    f.seek(offset)
                    return f.read(size)
            base = node.base
        if base is None:
            return b""
        try:
            return self.cache.read(base, offset, size)
        except NotFound as exc:
            raise StaleFile(f"{node.name!r} changed in the bucket while it was open; reopen it") from exc

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

    # --- saving -------------------------------------------------------------------------

    def save(self, node: FileNode) -> Entry | None:
        """Hand the node's unsaved changes to the write-back queue; return the newest entry.

        Data changes are sealed and journaled (durable locally) before this returns; so is a
        metadata-only change of a file with nothing pending, queued as one PATCH (sent within
        about a second, with the changes that follow it meanwhile).
        """
        with node.lock:
            while node.moving:  # sealed now, it would go up under the name being left
                node.moved.wait()
            if node.unlinked:
                return None
            if node.dirty:
                return self._seal(node)
            if node.meta_dirty and node.pending:  # amend the pending upload (or patch)
                custom = self._custom_metadata(node, self._identified(node))
                entry = self.uploader.resubmit(node.pending[-1], custom, node.content_type)
                self._seal_times(node, entry)  # (a new entry, or the queued one amended: its times are these now)
                node.meta_from, node.posix = custom, {}
                node.pending = [e for e in node.pending if not e.done.is_set() and e is not entry] + [entry]
                node.meta_dirty = False
                return entry
            if node.meta_dirty and node.base is not None:  # update_cloud_metadata, queued
                custom = self._custom_metadata(node, self._identified(node))
                entry = self.uploader.submit_patch(node.name, custom, node.content_type, node.base)
                self._seal_times(node, entry)
                node.meta_from, node.pending, node.meta_dirty = custom, [entry], False
                node.posix = {}
                return entry
            return node.pending[-1] if node.pending else None

    @staticmethod
    def _identified(node: FileNode) -> octue.OctueMetadata:
        """The node's metadata with an id, unless it has only a metadata change of an object
        without Octue metadata that touches no Octue field (a user attribute alone)."""
        if not node.dirty and node.base is not None and all(e.patch for e in node.pending):
            return octue.identified(node.meta, node.base.metadata)
        return node.meta.with_id()

    def _custom_metadata(self, node: FileNode, meta: octue.OctueMetadata) -> dict[str, str]:
        """The whole custom metadata for the node's next upload. Caller holds node.lock."""
        prior = dict(node.pending[-1].metadata if node.pending else (node.base.metadata if node.base else {}))
        custom = octue.encode_object_metadata(meta, prior)
        if node.meta_from is not None and prior != node.meta_from:
            # What this goes on top of moved on since ``meta`` was taken (a change made elsewhere
            # merged into an upload): apply only the node's own changes to it.
            own = octue.encode_object_metadata(meta, node.meta_from)
            merged = merge_metadata(node.meta_from, own, prior)
            if merged is not None:
                custom = merged
            else:
                log.warning("%r: a metadata key changed here and elsewhere; this mount's change is sent", node.name)
        custom = posixmeta.apply(custom, node.posix)
        custom = posixmeta.with_mtime(custom, node.mtime, keep=not node.dirty)  # new content: the upload's time
        octue.check_size_limits(custom)
        return custom

    def _seal(self, node: FileNode) -> Entry:
        if node.staging is None:
            self._ensure_staged(node)
        meta = node.meta.with_id()
        custom = self._custom_metadata(node, meta)
        try:
            entry = self.uploader.submit(node.name, node.staging, custom, node.content_type, node.base, node.size)
        except OctuefsError:
            raise
        except OSError as exc:
            raise self.cache.unwritable(exc) from exc
        times = self.times_of(node)
        with self._lock:
            self._sealed_times[entry.id] = times
        node.meta, node.staging, node.meta_from = meta, None, custom
        node.dirty = node.meta_dirty = False
        node.mtime, node.posix = None, {}
        node.times = times
        node.pending = [e for e in node.pending if not e.done.is_set()] + [entry]
        return entry

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

    def _uploaded(self, entry: Entry) -> None:
        """The uploader finished ``entry`` (in the bucket, or kept beside it after a conflict)."""
        info = entry.result
        node = self.node(entry.name)
        if info is None:  # a metadata change whose object was deleted elsewhere
            self._patch_dropped(entry, node)
            return
        with self._lock:
            times = self._sealed_times.pop(entry.id, None)
        # (landing is no change of the file: its times stay; a patch re-applied to a version made
        # elsewhere leaves that version's own)
        if times is not None and (not entry.patch or info.generation == entry.base_generation):
            self.times.made(info, *times)
        if entry.state == DONE:
            with self._lock:
                if node is not None and node.new and dict(info.metadata) == entry.metadata:
                    self._new_versions[entry.name] = (info.generation, info.metageneration)
                else:
                    self._new_versions.pop(entry.name, None)
        if entry.state == CONFLICT:
            self.metacache.forget(entry.name)
            self.metacache.wrote(info)
        if node is None:
            if entry.state == DONE:
                self.metacache.wrote(info)
            return
        with node.lock:
            if entry.state == DONE:
                # Record the new version everywhere before the entry stops counting as
                # pending: release() may drop the node the moment it does.
                if entry.patch and node.base is not None:
                    self.cache.carry_over(node.base, info)
                node.base = info
                self.metacache.wrote(info)
                if entry.patch and node.pending and node.pending[-1] is entry and not node.dirty:
                    # The content type as it landed: a patch re-applied to a version made
                    # elsewhere leaves that version's own (the next setfattr must not put it back).
                    node.content_type = info.content_type
                if (node.pending and node.pending[-1] is entry and node.staging is None and not node.unlinked
                        and not entry.patch):
                    try:  # the sealed file is exactly this generation: keep it as the cached copy
                        self.cache.adopt(info, self.uploader.journal.data_path(entry.id))
                    except OSError:
                        pass
            if entry.state == DONE and not node.unlinked and dict(info.metadata) != entry.metadata:
                # What landed holds a metadata change made elsewhere, merged into it: the node's
                # own metadata (what its next upload sends) takes that change too, keeping its own.
                ours = octue.encode_object_metadata(node.meta, entry.metadata)
                merged = merge_metadata(entry.metadata, ours, dict(info.metadata))
                if merged is not None:
                    node.meta = octue.decode_object_metadata(merged)
                    node.meta_from = dict(info.metadata)
            if (entry.state == CONFLICT and node.opens > 0 and node.staging is None and not node.unlinked
                    and node.pending and node.pending[-1] is entry):
                # Its newest version went beside: the handles open on it keep reading (and
                # extending) what they wrote, not the bucket's version, before the sealed file goes.
                path = self.cache.new_staging_path()
                shutil.copyfile(self.uploader.journal.data_path(entry.id), path)
                node.staging = path
            if entry.state == CONFLICT and node.pending and node.pending[-1] is entry:
                # What it sent went beside: its changes are again changes to the version it had.
                node.meta_from = dict(node.base.metadata) if node.base else None
            if entry in node.pending:
                node.pending.remove(entry)
            idle = not node.unsaved and node.opens == 0
        self._drop_if_idle(node, idle)

    def _patch_dropped(self, entry: Entry, node: FileNode | None) -> None:
        """A metadata change found its object deleted in the bucket: the file is gone."""
        self.metacache.forget(entry.name)
        if node is None:
            return
        with node.lock:
            if entry in node.pending:
                node.pending.remove(entry)
            if not node.pending and not node.dirty:
                node.meta_dirty = False
            idle = not node.unsaved and node.opens == 0
        self._drop_if_idle(node, idle)

    def _drop_if_idle(self, node: FileNode, idle: bool) -> None:
        if idle:
            with self._lock:
                if self._nodes.get(node.name) is node and node.idle:
                    del self._nodes[node.name]

    def settle(self, node: FileNode) -> None:
        """Let the node's uploads finish before a rename copies it.

        Waits while uploads are moving; UploadStillPending once none has moved for ``op_timeout``.
        """
        self.save(node)
        self.uploader.wait_name(node.name, idle=self.op_timeout)

    def withhold(self, node: FileNode) -> Withheld:
        """Hold back the node's queued uploads before a delete or a rename over it (see
        :meth:`Uploader.withhold`): the caller drops them once the bucket has done it, or
        restores them if it failed."""
        return self.uploader.withhold(node.name, idle=self.op_timeout)

    @contextlib.contextmanager
    def held_still(self, node: FileNode | None, settle: bool = False):
        """While a rename or unlink works on ``node``'s object in the bucket, nothing of the node
        is sealed (a close waits for the block to end): a version sealed meanwhile would go up
        under a name being left or deleted. With ``settle``, first let every change of the node
        reach the bucket (a rename copies the object)."""
        if node is None:
            yield
            return
        while True:
            if node.unlinked:  # an unlink or a rename over it won the race
                raise FileNotFound(node.name)
            if settle and node.unsaved:
                self.settle(node)  # the bucket must hold the latest version before the copy
            with node.lock:
                while node.moving:  # another rename or unlink of it
                    node.moved.wait()
                if node.unlinked:
                    raise FileNotFound(node.name)
                if not (settle and node.unsaved):
                    node.moving = True
                    break
        try:
            yield
        finally:
            with node.lock:
                node.moving = False
                node.moved.notify_all()

    def recover(self, entries: list[Entry]) -> None:
        """Show the uploads an earlier mount left (oldest first) as the files' local versions."""
        with self._lock:
            for entry in entries:
                node = self._nodes.get(entry.name)
                if node is None:
                    node = self._nodes[entry.name] = FileNode(
                        name=entry.name, base=patched_object(entry) if entry.patch else None,
                        meta=octue.decode_object_metadata(entry.metadata), size=entry.size,
                        content_type=entry.content_type)
                node.pending.append(entry)
                node.size, node.meta = entry.size, octue.decode_object_metadata(entry.metadata)
                node.meta_from = dict(entry.metadata)

    def check_fits(self, node: FileNode, meta: octue.OctueMetadata) -> None:
        """MetadataTooLarge, before anything changes, if ``meta`` would not fit in the custom
        metadata of the node's next upload or patch."""
        with node.lock:
            self._custom_metadata(node, meta.with_id())

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

    def _seal_times(self, node: FileNode, entry: Entry) -> None:
        """The times ``entry`` (a metadata change, or an upload amended with one) lands with: the
        node's now, ctime moved by the change. Without them, a PATCH landing moved the ctime
        again, and an amended upload landing showed the bucket's times. Caller holds node.lock."""
        times = self.times_of(node)
        with self._lock:
            self._sealed_times[entry.id] = times

    def touch(self, node: FileNode, mtime: float) -> None:
        """Record an explicit mtime on a node with unsaved changes; it goes up with them."""
        def change() -> None:
            node.mtime = mtime
            node.times = (mtime, time.time())  # (a touch moves the ctime too)
        self.change_metadata(node, change)

    def times_of(self, node: FileNode) -> tuple[float, float]:
        """``(mtime, ctime)`` stat shows for a live node: those of its newest change here, else
        of its version in the bucket (:class:`Times`)."""
        times = node.times
        if times is None:
            staging = node.staging
            if node.dirty and staging:  # (recovered after a crash: what was written, when)
                try:
                    mtime = os.stat(staging).st_mtime
                    times = (mtime, mtime)
                except FileNotFoundError:
                    pass
        pending = node.pending
        if times is None and node.mtime is None and pending and not node.dirty:
            # A touch queued (restored from the journal after a crash: the node's own mtime is gone).
            recorded = posixmeta.decode(pending[-1].metadata).mtime
            if recorded is not None:
                times = (recorded, recorded)
        if times is None:
            times = self.times.of(node.base) if node.base else (now := time.time(), now)
        return (node.mtime if node.mtime is not None else times[0]), times[1]

    def change_metadata(self, node: FileNode, change) -> None:
        """Apply ``change()`` to a node: merged into what is pending (a queued upload or
        metadata patch), else queued as a metadata patch. Journaled before this returns, so
        as durable as a close; the mount shows it at once."""
        with node.lock:
            before = node.times
            node.times = (self.times_of(node)[0], time.time())  # (any metadata change moves the ctime: setxattr too)
            try:
                change()
            except BaseException:  # (a change refused moves nothing)
                node.times = before
                raise
            if not node.dirty:
                node.meta_dirty = True
                try:
                    self.save(node)
                except BaseException:  # not journaled: the mount must not show what is not kept
                    self._reread(node)
                    node.times = before
                    raise

    def _reread(self, node: FileNode) -> None:
        """Undo a change that could not be journaled: back to what is pending, or the base."""
        node.meta_dirty, node.posix = False, {}
        source = node.pending[-1] if node.pending else None
        custom = source.metadata if source is not None else (node.base.metadata if node.base else {})
        node.meta, node.meta_from = octue.decode_object_metadata(custom), dict(custom)
        node.content_type = source.content_type if source is not None else (
            node.base.content_type if node.base else node.content_type)

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
