"""A file being read or written through the mount: its :class:`FileNode`, and the :class:`Handle`
open on it.

A node stands for one object while it is open or holds changes not yet in the bucket; the
table of nodes and what is done with them is :class:`octuefs.fs.files.OpenFiles`. A node's
``lock`` guards its state and files; code that only needs a snapshot reads its plain
attributes without it (see the lock order in :mod:`octuefs.fs.files`).
"""

from __future__ import annotations

import dataclasses
import threading

from octuefs.errors import FileNotFound
from octuefs.octue import metadata as octue
from octuefs.storage.base import ObjectInfo
from octuefs.writeback.entry import Entry


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
    # A reader of a clean file: the version it reads, and whether it read it whole from offset 0
    # (told to the prefetcher, octuefs.cache.prefetch). ``lock`` guards the three after it.
    watched: ObjectInfo | None = None
    got: int = 0  # bytes read through this handle
    from_zero: bool = False  # one of its reads began at offset 0
    whole: bool = False  # both, and ``got`` reached the size
    lock: threading.Lock | None = None
