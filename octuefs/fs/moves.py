"""Open files while a rename or an unlink works on their objects.

:class:`Moves` is the part of :class:`octuefs.fs.files.OpenFiles` that orders renames and
unlinks with the opens, closes and metadata changes of the same file: the node is pinned in the
table (:meth:`Moves.pinned`) and held still (:meth:`Moves.held_still`: nothing of it is sealed
meanwhile), its uploads are settled or withheld first, handles open on it keep a private copy of
its content (POSIX), and afterwards the node follows its new name (:meth:`Moves.renamed`) or is
remembered as gone. Locks: as stated in :mod:`octuefs.fs.files`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from octuefs.errors import FileNotFound
from octuefs.fs.filenode import FileNode
from octuefs.octue import metadata as octue
from octuefs.storage.base import ObjectInfo
from octuefs.writeback.uploads import Withheld


class Moves:
    """Renames and unlinks of files that may be open (a mixin of :class:`~octuefs.fs.files.OpenFiles`)."""

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
