"""What a mount path is: its object name, what the bucket (or the mount's caches) says it is,
and the live node of a file the mount has open or pending upload.

Every other part of the core asks here (:class:`Lookups`) rather than the caches directly, so a
file written here and not yet uploaded is seen the same way everywhere.
"""

from __future__ import annotations

import logging

from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import FileNotFound, IsADirectory, ReadOnlyFilesystem, StorageError
from octuefs.fs.files import FileNode
from octuefs.fs.parts import MountParts
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)


class Lookups:
    """What a path is (see the module docstring); the read-only check every change makes first."""

    def __init__(self, parts: MountParts):
        self.config, self.ns, self.metacache, self.fills = parts.config, parts.ns, parts.metacache, parts.fills
        self.files = parts.files
        self.bucket, self.givebacks = parts.bucket, parts.givebacks

    def lookup(self, name: str) -> ObjectInfo | object:
        """What object name ``name`` is: its ObjectInfo, ``DIR`` or ``MISSING``. From the
        metadata cache, else from its directory's listing (one request for every name there),
        else by asking for it alone (see :mod:`octuefs.cache.listings`)."""
        if name == self.ns.prefix.rstrip("/") or not name:
            return DIR
        if self.givebacks.owes(name):  # a failed take-over's: the source's own metadata first
            self.givebacks.settle_owed(self.bucket, name)
            self.metacache.forget(name)
        known = self.metacache.lookup(name)
        if known is not None:
            return known
        return self.fills.lookup(name)

    def node(self, name: str) -> FileNode | None:
        """The live node of ``name`` (one unlinked is none)."""
        node = self.files.node(name)
        return node if node is not None and not node.unlinked else None

    def resolve(self, path: str | None, gone_hides: bool = False) -> tuple[str, ObjectInfo | object, FileNode | None]:
        """``(object name, ObjectInfo | DIR | MISSING, live node or None)`` of a path.

        ``None`` is what libfuse passes for a file unlinked while open: it has no name.

        ``gone_hides`` (a stat, a getfattr, a setfattr, chmod, chown, touch): a node whose only
        pending work is metadata patches (:attr:`FileNode.only_patches`) is looked up as a clean
        file is (the metadata cache, else the bucket) and, if the name is missing there, the file
        is: deleted elsewhere, its patches are moot (dropped once sent), and a change made now
        would be acknowledged and then dropped with them. Open or with content pending, a node
        stays shown whatever the bucket says (open handles survive an unlink elsewhere; content
        goes up as the upload rules say).
        """
        if path is None:
            raise FileNotFound("(a file unlinked while open has no path)")
        name = self.ns.object_name(path)
        node = self.node(name) if path != "/" else None
        if node is not None:
            if gone_hides and self._gone_behind(name, node):
                return name, MISSING, None
            return name, node.base, node
        return name, self.lookup(name), None

    def _gone_behind(self, name: str, node: FileNode) -> bool:
        """Whether ``node`` holds only metadata patches of a file the lookup says is gone (see
        :meth:`resolve`). A bucket that cannot be asked leaves the node shown, as before."""
        if not node.only_patches:
            return False
        try:
            gone = self.lookup(name) is MISSING
        except StorageError as exc:
            log.debug("looking %r up failed (%s): its pending metadata change keeps it shown", name, exc)
            return False
        if gone:
            log.info("%r is deleted in the bucket; the metadata change(s) queued for it here go with it", name)
        return gone

    def file_info(self, path: str) -> tuple[str, ObjectInfo | None, FileNode | None]:
        """A path that must be a file: ``(name, info or None for a new file, node)``."""
        name, entry, node = self.resolve(path)
        if node is not None:
            return name, node.base, node
        if entry is DIR:
            raise IsADirectory(path)
        if entry is MISSING:
            raise FileNotFound(path)
        return name, entry, None

    def new_nodes_under(self, prefix: str) -> list[FileNode]:
        """The live nodes under ``prefix``: files written here, maybe not in the bucket yet."""
        return [n for n in self.files.nodes_under(prefix) if not n.unlinked]

    def check_writable(self) -> None:
        if self.config.read_only:
            raise ReadOnlyFilesystem("the mount is read-only")
