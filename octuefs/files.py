"""Open files with Datafile semantics: a node per object being read or written, and handles.

A :class:`FileNode` stands for one object while it is open or holds unsaved changes. Reads of
a clean node go through the block cache, pinned to the generation that was opened. The first
write copies the content into a private staging file; closing (flush) a changed node uploads
data and Octue metadata in ONE request with a generation precondition (0 for a new file): the
Datafile context manager's meaning. Closing an unchanged file sends nothing.

Locks, in the order they are taken: ``OpenFiles._lock`` (the node and handle tables) before a
``FileNode.lock`` (that node's state and staging file). ``FileNode.lock`` may be held across an
upload of that file; code that only needs a snapshot (getattr, getxattr, readdir) reads the
node's plain attributes without it, so a slow upload never blocks ``ls`` or other files.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time

from . import metadata as octue
from .cache import ContentCache
from .errors import Conflict, IsADirectory, NotFound, PreconditionFailed, StaleFile, TransientError, UploadFailed
from .metacache import MetadataCache
from .storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)

# Custom-metadata key holding an mtime set by touch/utimens, in whole POSIX seconds. It is the
# key `gcloud storage cp --preserve-posix` uses, so the two tools agree on it.
MTIME_KEY = "goog-reserved-file-mtime"


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
    content_type: str | None = None
    opens: int = 0
    unlinked: bool = False
    lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

    @property
    def unsaved(self) -> bool:
        return self.dirty or self.meta_dirty


@dataclasses.dataclass(eq=False)
class Handle:
    node: FileNode
    writable: bool


class OpenFiles:
    """The table of open nodes and handles, and the read/write/save paths of files."""

    def __init__(self, bucket: Bucket, cache: ContentCache, metacache: MetadataCache, read_only: bool = False):
        self.bucket = bucket
        self.cache = cache
        self.metacache = metacache
        self.read_only = read_only
        self._lock = threading.Lock()
        self._nodes: dict[str, FileNode] = {}  # by object name; guarded by _lock
        self._handles: dict[int, Handle] = {}  # guarded by _lock
        self._next_fh = itertools.count(1)

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

    def _node_for(self, name: str, info: ObjectInfo | None) -> FileNode:
        """The live node of ``name``, made from ``info`` if there is none. Caller holds _lock."""
        node = self._nodes.get(name)
        if node is None:
            meta = octue.decode_object_metadata(info.metadata) if info else octue.OctueMetadata().with_id()
            node = FileNode(
                name=name,
                base=info,
                meta=meta,
                size=info.size if info else 0,
                content_type=info.content_type if info else None,
                dirty=info is None,
            )
            self._nodes[name] = node
        return node

    def open(self, name: str, info: ObjectInfo | None, writable: bool, truncate: bool = False) -> int:
        """Open ``name`` (``info`` None: create a new, empty file). Returns a handle number."""
        if info is not None and info.is_dir_marker:
            raise IsADirectory(name)
        with self._lock:
            node = self._node_for(name, info)
            node.opens += 1
            fh = next(self._next_fh)
            self._handles[fh] = Handle(node, writable)
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
            if node.opens == 0 and not node.unsaved and self._nodes.get(node.name) is node:
                del self._nodes[node.name]
        if node.opens == 0 and node.staging and not node.unsaved:
            _unlink_quietly(node.staging)
            node.staging = None

    def forget(self, node: FileNode) -> None:
        """Drop a node that no longer stands for anything (its object was deleted)."""
        with self._lock:
            if self._nodes.get(node.name) is node:
                del self._nodes[node.name]
        with node.lock:
            node.unlinked = True
            node.dirty = node.meta_dirty = False
            if node.staging:
                _unlink_quietly(node.staging)
                node.staging = None

    def renamed(self, node: FileNode, new_name: str, info: ObjectInfo) -> None:
        with self._lock:
            if self._nodes.get(node.name) is node:
                del self._nodes[node.name]
            node.name = new_name
            node.base = info
            self._nodes[new_name] = node

    # --- data ---------------------------------------------------------------------------

    def read(self, fh: int, size: int, offset: int) -> bytes:
        node = self.handle(fh).node
        with node.lock:
            if node.staging is not None:
                with open(node.staging, "rb") as f:
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
        with node.lock:
            self._ensure_staged(node)
            with open(node.staging, "r+b") as f:
                f.seek(offset)
                f.write(data)
            node.size = max(node.size, offset + len(data))
            node.dirty = True
            node.mtime = None
        return len(data)

    def truncate(self, node: FileNode, length: int) -> None:
        with node.lock:
            self._ensure_staged(node, length)
            os.truncate(node.staging, length)
            node.size = length
            node.dirty = True
            node.mtime = None

    def _ensure_staged(self, node: FileNode, length: int | None = None) -> None:
        """Give the node a private full copy to write to. Caller holds node.lock."""
        if node.staging is None:
            node.staging = self.cache.stage(node.base, length)

    # --- saving -------------------------------------------------------------------------

    def save(self, node: FileNode) -> None:
        """Upload the node's data and metadata if anything is unsaved; otherwise do nothing."""
        with node.lock:
            if not node.unsaved or node.unlinked:
                return
            if not node.dirty and node.base is not None:  # metadata only: no re-upload
                info = self.patch_octue(node.base, node.meta)
                node.base, node.meta, node.meta_dirty = info, octue.decode_object_metadata(info.metadata), False
                return
            if node.staging is None:
                self._ensure_staged(node)
            meta = node.meta.with_id()
            custom = octue.encode_object_metadata(meta, node.base.metadata if node.base else {})
            custom.pop(MTIME_KEY, None)
            if node.mtime is not None:
                custom[MTIME_KEY] = str(int(node.mtime))
            octue.check_size_limits(custom)
            expected = node.base.generation if node.base else 0
            try:
                info = self.bucket.upload_file(
                    node.name, node.staging, custom, if_generation_match=expected, content_type=node.content_type
                )
            except PreconditionFailed as exc:
                self.metacache.forget(node.name)
                log.warning(
                    "not saving %r: it changed in the bucket since it was opened (expected generation %s); "
                    "the local version is kept in %s",
                    node.name,
                    expected,
                    node.staging,
                )
                raise Conflict(f"{node.name!r} changed in the bucket since it was opened") from exc
            except TransientError as exc:
                log.error("could not upload %r, the data stays in %s: %s", node.name, node.staging, exc)
                raise UploadFailed(str(exc)) from exc
            node.base, node.meta = info, meta
            node.dirty = node.meta_dirty = False
            node.mtime = None
            node.size = info.size
            self.cache.adopt(info, node.staging)
            node.staging = None
        self.metacache.wrote(info)
        log.debug("saved %r as generation %s (%d bytes)", info.name, info.generation, info.size)

    def patch_octue(self, info: ObjectInfo, meta: octue.OctueMetadata) -> ObjectInfo:
        """update_cloud_metadata: one metadata PATCH, content untouched; ``info`` if nothing changed.

        Preconditions on both generation and metageneration make a concurrent change in the
        bucket fail the patch (PreconditionFailed) instead of being overwritten.
        """
        changes = octue.metadata_patch(info.metadata, meta.with_id())
        if not changes:
            return info
        merged = {k: v for k, v in {**info.metadata, **changes}.items() if v is not None}
        octue.check_size_limits(merged)
        new = self.bucket.patch_metadata(
            info.name, changes, if_generation_match=info.generation, if_metageneration_match=info.metageneration
        )
        self.cache.carry_over(info, new)
        self.metacache.wrote(new)
        log.debug("patched metadata of %r: %s", info.name, sorted(changes))
        return new

    def flush(self, fh: int) -> None:
        """close(2) of a handle: a writer's close saves; a reader's close never uploads."""
        handle = self.handle(fh)
        if handle.writable:
            self.save(handle.node)

    def fsync(self, fh: int) -> None:
        """fsync(2): returns once the file (whoever changed it) is in the bucket."""
        self.save(self.handle(fh).node)

    def touch(self, node: FileNode, mtime: float) -> None:
        """Record an explicit mtime on a node with unsaved data (saved with it)."""
        with node.lock:
            node.mtime = mtime


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mtime_of(info: ObjectInfo) -> float:
    """The file's mtime: the one kept in metadata after touch/utimens, else the object's time."""
    raw = info.metadata.get(MTIME_KEY)
    if raw:
        try:
            return float(raw)
        except ValueError:
            pass
    return info.updated.timestamp()


def now() -> float:
    return time.time()
