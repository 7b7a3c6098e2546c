"""Renaming a file: copy, then delete, with preconditions on both sides; the versions of the
target queued here are held back until it is replaced. A file just made here renamed over
another takes its Octue metadata (:mod:`octuefs.fs.takeover`); a directory is moved object by
object (:mod:`octuefs.fs.dirrename`).
"""

from __future__ import annotations

import contextlib
import logging

from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import (
    BucketUnreachable,
    Conflict,
    FileNotFound,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    PreconditionFailed,
)
from octuefs.fs.dirrename import DirectoryRenames
from octuefs.fs.files import FileNode
from octuefs.fs.filestate import UploadStates
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.fs.replacing import Replacer
from octuefs.fs.takeover import TakeOver, TakeOvers
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)

# The name editors (vim, emacs) give the original they rename away before writing a new file.
BACKUP_SUFFIX = "~"


class Renames:
    """``rename``: of a file here, of a directory by :class:`~octuefs.fs.dirrename.DirectoryRenames`."""

    def __init__(self, parts: MountParts,
                 lookups: Lookups, replacer: Replacer, takeovers: TakeOvers, dir_renames: DirectoryRenames,
                 states: UploadStates):
        self.bucket, self.times, self.ns, self.metacache = parts.bucket, parts.times, parts.ns, parts.metacache
        self.cache, self.uploader, self.files = parts.cache, parts.uploader, parts.files
        self.lookups = lookups
        self.replacer = replacer
        self.takeovers = takeovers
        self.dir_renames = dir_renames
        self.states = states  # user.octuefs.state (filestate.py): neither name keeps a conflict

    def rename(self, old: str, new: str) -> None:
        self.lookups.check_writable()
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise InvalidArgument(f"cannot move {old!r} into itself")
        src_name, src, node = self.lookups.resolve(old)
        dst_name, dst, dst_node = self.lookups.resolve(new)
        if node is None and src is MISSING:
            raise FileNotFound(old)
        if src is DIR and node is None:
            if dst_node is not None:  # a file here, maybe not in the bucket yet (its base None)
                raise NotADirectory(new)
            self.dir_renames.rename_dir(old, new, src_name, dst_name, dst)
            for prefix in (src_name + "/", dst_name + "/"):
                self.states.forget(prefix, under=True)
            return
        if dst is DIR and dst_node is None:
            raise IsADirectory(new)
        self.ns.check_new_name(dst_name)
        # (Nodes even for clean files, as for unlink: an open racing the rename waits for it and
        # looks again; a setfattr of the source follows it to its new name.)
        with self.files.pinned(src_name, node, src) as node, self.files.pinned(dst_name, dst_node, dst) as dst_node:
            self._rename_file(src_name, src, node, dst_name, dst, dst_node)
        # Neither name keeps a conflict: the new one holds the mount's bytes, the old none.
        self.states.forget(src_name)
        self.states.forget(dst_name)

    def _rename_file(self, src_name: str, src: object, node: FileNode | None, dst_name: str, dst: object,
                     dst_node: FileNode | None) -> None:
        # The source's latest version is in the bucket, and stays its latest until the rename
        # ends; the target's queued versions are held back, dropped only once it is replaced.
        with self._held_still_both(node, dst_node):
            if dst_node is not None:
                self.files.keep_open_content(dst_node)  # for the handles still open on it
            dst_info = dst_node.base if dst_node is not None else (dst if isinstance(dst, ObjectInfo) else None)
            src_info = node.base if node is not None else src
            mtime = self.files.times_of(node)[0] if node is not None else self.times.of(src_info)[0]
            new = self.files.is_new(src_name, node, src_info)
            took_over = new and (dst_node is not None or dst_info is not None)
            with self.replacer.replacing(dst_name, dst_node, dst_info, removing=False) as dst_info:
                if took_over:
                    with self.takeovers.taking_over(src_name, src_info, dst_name, dst_node, dst_info) as take:
                        moved = self._move_file(src_name, dst_name, take.taken, dst_info, take=take)
                else:
                    moved = self._move_file(src_name, dst_name, src_info, dst_info)
                self.files.gone(src_name, src_info)
                self.files.gone(dst_name, dst_info)
            if dst_node is not None:
                self.files.forget(dst_node)
            self.cache.drop(dst_name)
            self.files.renamed(node, src_name, dst_name, moved, still_new=new and not took_over, took_over=took_over)
            if dst_name == src_name + BACKUP_SUFFIX and not took_over:  # (over an older backup too: emacs)
                self.files.left_for_backup(src_name, moved)
            self.cache.drop(src_name)
            now = self.times.renamed(src_name, dst_name, moved, mtime)
            if node is not None:
                with node.lock:
                    node.times = (mtime, now)

    @contextlib.contextmanager
    def _held_still_both(self, node: FileNode | None, dst_node: FileNode | None):
        """:meth:`OpenFiles.held_still` of a rename's source (settled) and target, taken in name
        order so that two renames between the same files never wait for each other."""
        holds = [(node, True), (dst_node, False)]
        holds.sort(key=lambda h: h[0].name if h[0] is not None else "")
        with contextlib.ExitStack() as stack:
            for held_node, settle in holds:
                stack.enter_context(self.files.held_still(held_node, settle=settle))
            yield

    def _move_file(self, src_name: str, dst_name: str, info: ObjectInfo, dst_info: ObjectInfo | None,
                   take: TakeOver | None = None) -> ObjectInfo:
        """Copy, then delete the source: the bucket half of a file rename. ``take``: a take-over
        (see :meth:`TakeOvers.taking_over`), whose copy has metageneration preconditions on both sides."""
        try:
            try:
                for tries_left in range(3, 0, -1):
                    try:
                        moved = self.bucket.copy(
                            src_name, dst_name,
                            if_source_generation_match=info.generation,
                            if_generation_match=dst_info.generation if dst_info else 0,
                            **(take.copy_preconditions() if take is not None else {}),
                        )
                        break
                    except PreconditionFailed:
                        if take is None or not tries_left - 1:
                            raise
                        self.takeovers.retake(take)  # merged in a change made elsewhere, or Conflict
                        info = take.taken
            except BucketUnreachable as exc:  # a request that timed out may have been carried out
                self.metacache.forget(dst_name)
                left = (f"{src_name!r} is untouched" if take is None
                        else f"{src_name!r} is still there")
                raise BucketUnreachable(f"{exc}; {dst_name!r} may exist now, if the copy reached the bucket "
                                        f"and only its answer was lost; {left}") from exc
            for _ in range(3):
                try:
                    self._delete_after_copy(src_name, info, moved)
                    break
                except PreconditionFailed:
                    # A metadata change (elsewhere, or a setfattr here) after the copy: copy again,
                    # with it, if the content is still the one copied; else refuse below.
                    current = self.bucket.stat(src_name)
                    if current.generation != info.generation:
                        raise
                    info = current
                    moved = self.bucket.copy(src_name, dst_name, if_source_generation_match=info.generation,
                                             if_generation_match=moved.generation)
            else:
                raise PreconditionFailed(f"{src_name!r} kept changing during the rename")
        except PreconditionFailed as exc:
            self.metacache.forget(src_name)
            self.metacache.forget(dst_name)
            raise Conflict(f"{src_name!r} or {dst_name!r} changed in the bucket during the rename") from exc
        return moved

    def _delete_after_copy(self, name: str, info: ObjectInfo, copied: ObjectInfo) -> None:
        """The second half of a file rename. If the bucket stops answering here, the file is
        under both names: say so, and show the copy too."""
        self.uploader.wait_pace(name)  # (an upload or setfattr landed just before the copy: not a 429 from GCS)
        try:
            self.bucket.delete(name, if_generation_match=info.generation, if_metageneration_match=info.metageneration)
        except BucketUnreachable as exc:  # (the caches know the copy: cache/ownwrites.py)
            raise BucketUnreachable(f"{exc}; it was copied to {copied.name!r} first, so it is under both names now") \
                from exc
