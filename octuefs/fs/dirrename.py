"""Renaming a directory: every object under it copied under the new name, then the originals
deleted, one by one (not atomic; at most ``--rename-dir-limit`` objects). The dataset records
under it are held still meanwhile, so a setfattr of this mount is never lost.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from collections.abc import Callable

from octuefs.cache.metacache import DIR
from octuefs.errors import (
    Conflict,
    DirectoryNotEmpty,
    NotADirectory,
    NotFound,
    NotSupported,
    OctuefsError,
    PreconditionFailed,
)
from octuefs.fs.dirxattrs import DatasetXattrs
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.octue.dataset_record import RECORD_NAME
from octuefs.storage.base import PARTS_PREFIX, ObjectInfo

log = logging.getLogger(__name__)


class DirectoryRenames:
    """The rename of a directory (see the module docstring)."""

    def __init__(self, parts: MountParts,
                 lookups: Lookups, datasets: DatasetXattrs, forget_markers: Callable[[], None]):
        self.config, self.bucket, self.times, self.ns = parts.config, parts.bucket, parts.times, parts.ns
        self.metacache, self.cache, self.files = parts.metacache, parts.cache, parts.files
        self.lookups = lookups
        self.datasets = datasets  # directories' dataset records, held still while they move (dirxattrs.py)
        self.forget_markers = forget_markers  # the directory markers posixfs.py remembers

    def rename_dir(self, old: str, new: str, src_name: str, dst_name: str, dst: object) -> None:
        """Copy every object under the directory, then delete the originals. Not atomic."""
        if isinstance(dst, ObjectInfo):
            raise NotADirectory(new)
        src_prefix, dst_prefix = src_name + "/", dst_name + "/"
        # Empty means empty here too, as for rmdir: a file written under the target and not yet
        # uploaded counts (else the move would merge into it and displace that file).
        if self.lookups.new_nodes_under(dst_prefix):
            raise DirectoryNotEmpty(new)
        if dst is DIR:
            page = self.bucket.list_page(dst_prefix, "/", max_results=2)
            if page.prefixes or any(o.name != dst_prefix for o in page.objects):
                raise DirectoryNotEmpty(new)
        with contextlib.ExitStack() as stack:
            # Every file under it reaches the bucket first, and none is sealed until the move ends
            # (it would go up under a name being left).
            for node in sorted(self.lookups.new_nodes_under(src_prefix), key=lambda n: n.name):
                stack.enter_context(self.files.held_still(node, settle=True))
            objects = self._objects_to_move(old, src_prefix)
            for info in objects:
                self.ns.check_new_name(dst_prefix + info.name[len(src_prefix) :])
            log.info("renaming directory %r to %r: %d objects, one by one (not atomic)", old, new, len(objects))
            # A setfattr of a directory under it rewrites that directory's .octue at once: one
            # landing after the copy would be deleted with the originals (or, its delete failing,
            # left behind alone) while the moved dataset lacks it. So the records are held still
            # from the copy's end to the last delete, and one this mount wrote meanwhile is copied
            # again: an acknowledged change is never lost.
            datasets = self.datasets
            written = stack.enter_context(datasets.watch(src_prefix))
            moved = self._copy_all(objects, src_prefix, dst_prefix, new)
            now = time.time()
            for info in objects:
                if info.name in moved:  # (each file keeps its mtime; its ctime moves)
                    self.times.made(moved[info.name], self.times.of(info)[0], now)
            records = {src_prefix + RECORD_NAME} | {posixpath.dirname(o.name) + "/" + RECORD_NAME for o in objects
                                                    if o.name != src_prefix}
            stack.enter_context(datasets.holding(records, timeout=self.config.op_timeout))
            again = set(written)
            for info in objects:
                try:
                    self.bucket.delete(info.name, if_generation_match=info.generation,
                                       if_metageneration_match=info.metageneration)
                except PreconditionFailed as exc:
                    if posixpath.basename(info.name) == RECORD_NAME:
                        again.add(info.name)
                        continue
                    log.warning("rename of %r: could not delete %r after copying it: %s", old, info.name, exc)
                except NotFound as exc:
                    log.warning("rename of %r: could not delete %r after copying it: %s", old, info.name, exc)
            for name in sorted(again | written):
                self._move_record_again(old, name, dst_prefix + name[len(src_prefix) :], moved)
            for node in self.files.nodes_under(src_prefix):
                if node.name in moved:
                    with node.lock:  # (its ctime moves too, as the object's just did)
                        node.times = (self.files.times_of(node)[0], now)
                    self.files.renamed(node, node.name, dst_prefix + node.name[len(src_prefix) :], moved[node.name])
                self.cache.drop(node.name)
            self.metacache.clear()
            self.times.dir_moved(src_prefix, dst_prefix)  # (its subdirectories keep their times)
            self.times.renamed(src_name, dst_name)  # (its own mtime stays; its ctime is its marker copy's)
            self.forget_markers()

    def _move_record_again(self, old: str, name: str, target: str, moved: dict[str, ObjectInfo]) -> None:
        """A dataset record rewritten during the rename of its directory (by a setfattr of this
        mount, held still now): copy what it holds now over the copy made before, then delete it."""
        for _ in range(3):
            try:
                info = self.bucket.stat(name)
            except NotFound:
                return  # (deleted with the others)
            try:
                copied = self.bucket.copy(name, target, if_source_generation_match=info.generation,
                                          if_generation_match=moved[name].generation if name in moved else 0)
                moved[name] = copied
                self.bucket.delete(name, if_generation_match=info.generation,
                                   if_metageneration_match=info.metageneration)
                log.info("rename of %r: %r changed during the move (a setfattr of its directory); moved again",
                         old, name)
                return
            except NotFound:
                continue
            except PreconditionFailed:
                continue  # changed again (elsewhere): once more
        log.warning("rename of %r: %r kept changing during the move; it is left where it was, and %r holds an "
                    "older version", old, name, target)

    def _objects_to_move(self, old: str, src_prefix: str) -> list[ObjectInfo]:
        """Every object under a directory being renamed, listed only up to ``--rename-dir-limit``.
        The parts of large uploads in flight (``.octuefs-parts/``) stay where they are: their
        upload composes them by name."""
        limit = self.config.rename_dir_limit
        objects: list[ObjectInfo] = []
        for page in self.bucket.iter_pages(src_prefix, delimiter=None):
            objects += [o for o in page.objects if f"/{PARTS_PREFIX}" not in "/" + o.name[len(src_prefix):]]
            if len(objects) > limit:
                raise NotSupported(f"renaming {old!r} would move more than {limit} objects "
                                   f"(raise the limit with --rename-dir-limit)")
        return objects

    def _copy_all(self, objects: list[ObjectInfo], src_prefix: str, dst_prefix: str, new: str) -> dict[str, ObjectInfo]:
        """Copy each object under the new prefix, only where nothing is yet (another machine may
        have made a file there since this mount looked); on a clash, delete the copies made and
        refuse, with the originals untouched."""
        moved: dict[str, ObjectInfo] = {}
        marker = None
        try:
            for info in objects:
                if info.name == src_prefix:
                    marker = info  # the directory's own marker: below
                    continue
                target = dst_prefix + info.name[len(src_prefix) :]
                moved[info.name] = self.bucket.copy(info.name, target, if_source_generation_match=info.generation,
                                                    if_generation_match=0)
            try:  # a marker keeps the directory visible if it empties; a copy keeps its mode and owners
                if marker is not None:
                    self.bucket.copy(src_prefix, dst_prefix, if_source_generation_match=marker.generation,
                                     if_generation_match=0)
                else:
                    self.bucket.upload_bytes(dst_prefix, b"", {}, if_generation_match=0)
            except PreconditionFailed:
                # (an empty directory renamed over) its marker is there already: the moved
                # directory's own marker replaces it, so the directory keeps its mode and owners
                if marker is not None:
                    with contextlib.suppress(NotFound, PreconditionFailed):
                        there = self.bucket.stat(dst_prefix)
                        self.bucket.copy(src_prefix, dst_prefix, if_source_generation_match=marker.generation,
                                         if_generation_match=there.generation)
        except PreconditionFailed as exc:
            self._undo_copies(moved)
            self.metacache.clear()
            raise Conflict(f"cannot move into {new!r}: something there, or a file being moved, changed in the bucket "
                           f"meanwhile (another machine?); nothing was moved") from exc
        except BaseException:
            self._undo_copies(moved)
            raise
        return moved

    def _undo_copies(self, moved: dict[str, ObjectInfo]) -> None:
        for copy in moved.values():
            try:
                self.bucket.delete(copy.name, if_generation_match=copy.generation)
            except (OctuefsError, OSError) as exc:
                log.warning("could not delete %r, copied by a directory rename that failed: %s", copy.name, exc)
