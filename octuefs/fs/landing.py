"""What open files learn from write-back: an upload landed, went beside as a conflict, or was dropped.

:class:`Landing` is the part of :class:`octuefs.fs.files.OpenFiles` the uploader calls back
(``on_done``): it records the version that landed everywhere (the node, the caches, its times),
keeps a metadata change made elsewhere that was merged into it, gives handles still open on a
version that went beside a copy of what they wrote, and drops nodes left with nothing to do. It
also shows the uploads an earlier mount left as the files' local versions (:meth:`Landing.recover`).
Locks: as stated in :mod:`octuefs.fs.files`.
"""

from __future__ import annotations

import shutil

from octuefs.fs.filenode import FileNode
from octuefs.octue import metadata as octue
from octuefs.octue.merge import merge_metadata
from octuefs.writeback.entry import CONFLICT, DONE, Entry, patched_object


class Landing:
    """Write-back's reports, applied to the nodes (a mixin of :class:`~octuefs.fs.files.OpenFiles`)."""

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
        # (The caches learnt of the version as the bucket answered: cache/ownwrites.py. The
        # object at a conflict's name is someone else's, not known here.)
        if entry.state == CONFLICT:
            self.metacache.forget(entry.name)
        if node is None:
            return
        with node.lock:
            if entry.state == DONE:
                # Record the new version everywhere before the entry stops counting as
                # pending: release() may drop the node the moment it does.
                if entry.patch and node.base is not None:
                    self.cache.carry_over(node.base, info)
                node.base = info
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
