"""A file being replaced (deleted, or renamed over): the versions of it queued here are held
back while the bucket's object is replaced, dropped once it is, restored if that fails.
Shared by unlink (:mod:`octuefs.fs.fileops`) and rename (:mod:`octuefs.fs.rename`).
"""

from __future__ import annotations

import contextlib
import logging

from octuefs.errors import Conflict, NotFound
from octuefs.fs.files import FileNode
from octuefs.fs.parts import MountParts
from octuefs.storage.base import ObjectInfo
from octuefs.writeback.entry import is_version

log = logging.getLogger(__name__)


class Replacer:
    """The hold on a file's queued versions while its object is replaced (see the module docstring)."""

    def __init__(self, parts: MountParts):
        self.bucket, self.metacache, self.files = parts.bucket, parts.metacache, parts.files

    @contextlib.contextmanager
    def replacing(self, name: str, node: FileNode | None, info: ObjectInfo | None, *, removing: bool):
        """Around a delete of ``name`` (``removing``), or a rename onto it: the versions of
        ``node`` queued here are held back, dropped once the object is replaced, and restored
        (they go up after all) if that fails. A running one lands first. Yields the version in
        the bucket being replaced (see :meth:`_replaced_by_held`). Only a delete leaves the name
        free for a dropped version that may still land: only then is it watched for.

        ``info`` is the version read before the hold; with ``node``, the version replaced is the
        node's once the hold is taken: an upload of it that was running has landed meanwhile,
        and that version, the mount's own, is what goes (not the one read before, which would
        leave it in the bucket, or refuse it as a change made elsewhere)."""
        held = self.files.withhold(node) if node is not None else None
        if node is not None:
            with node.lock:
                info = node.base
        try:
            yield self._replaced_by_held(name, info, held) if held is not None else info
        except BaseException:
            if held is not None:
                held.restore()
            raise
        if held is not None:
            held.drop(watch_late=removing)

    def _replaced_by_held(self, name: str, info: ObjectInfo | None, held) -> ObjectInfo | None:
        """The version of ``name`` in the bucket that a delete or a rename over it replaces, given
        the versions held back: one a held upload sent with its answer lost, or (a file recovered
        from the journal after a crash, whose node knows no version) the one they replace."""
        tried = held.tried()
        bases = {e.base_generation for e in held.entries if e.base_generation}
        if info is None and bases:
            try:
                current = self.bucket.stat(name)
            except NotFound:
                return None
            if current.generation in bases or any(is_version(k, current) for k in tried):
                return current
            self.metacache.forget(name)
            raise Conflict(f"{name!r} changed in the bucket since its pending versions were closed; left as it is")
        return self._own_version(name, info, tried) if tried else info

    def _own_version(self, name: str, info: ObjectInfo | None, tried: list[dict]) -> ObjectInfo | None:
        """An upload held back after a failed attempt may have landed all the same (its answer
        lost): if the bucket holds exactly one of those versions, that is the one to replace."""
        try:
            current = self.bucket.stat(name)
        except NotFound:
            return info
        if any(is_version(k, current) for k in tried) and (info is None or current.generation != info.generation):
            log.info("a dropped upload of %r had landed after all (generation %d)", name, current.generation)
            return current
        return info
