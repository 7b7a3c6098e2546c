"""Saving open files: what a node hands to write-back, and the times and metadata it shows meanwhile.

:class:`Saving` is the part of :class:`octuefs.fs.files.OpenFiles` that seals a changed node
into the write-back journal (content and Octue metadata for ONE upload), queues or amends a
metadata-only change as a patch, works out the custom metadata an upload carries (merging a
change made elsewhere), and says which ``(mtime, ctime)`` a node shows. Locks: as stated in
:mod:`octuefs.fs.files` (``OpenFiles._lock``, then a ``FileNode.lock``, then the uploader's).
"""

from __future__ import annotations

import logging
import os
import time

from octuefs.errors import OctuefsError
from octuefs.fs.filenode import FileNode
from octuefs.octue import metadata as octue
from octuefs.octue import posixmeta
from octuefs.octue.merge import merge_metadata
from octuefs.writeback.entry import Entry

log = logging.getLogger(__name__)


class Saving:
    """Handing a node's changes to write-back (a mixin of :class:`~octuefs.fs.files.OpenFiles`,
    whose tables, cache, uploader and times it uses)."""

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

    def check_fits(self, node: FileNode, meta: octue.OctueMetadata) -> None:
        """MetadataTooLarge, before anything changes, if ``meta`` would not fit in the custom
        metadata of the node's next upload or patch."""
        with node.lock:
            self._custom_metadata(node, meta.with_id())

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
