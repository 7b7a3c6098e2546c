"""Attributes and directories: what ``stat`` shows of a path, directory listings (a batch per
page of the bucket's listing), mkdir and rmdir.

A file the mount has open or pending upload shows its local version (its live node) wherever it
is listed or stat'ed; the bucket's listings are shared with lookups (:mod:`octuefs.cache.listings`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from stat import S_IFLNK

from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import (
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    InvalidArgument,
    NotADirectory,
    NotFound,
    PreconditionFailed,
)
from octuefs.fs.files import FileNode
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.fs.posixfs import Attr, PosixSurface, object_attr
from octuefs.octue import posixmeta
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)


class Directories:
    """getattr, readdir, mkdir and rmdir (see the module docstring)."""

    def __init__(self, parts: MountParts, lookups: Lookups, posix: PosixSurface):
        self.bucket, self.times, self.ns, self.metacache = parts.bucket, parts.times, parts.ns, parts.metacache
        self.fills, self.files = parts.fills, parts.files
        self.lookups = lookups
        self.posix = posix  # what stat shows of a node, a directory (posixfs.py)

    def getattr(self, path: str | None, fh: int | None = None) -> Attr:
        if path is None and fh is not None:  # fstat of a file unlinked while open
            return self._node_attr(self.files.handle(fh).node)
        name, entry, node = self.lookups.resolve(path, gone_hides=True)
        if node is not None:
            return self._node_attr(node)
        if entry is DIR:
            return self.posix.dir_attr(name)
        if entry is MISSING:
            raise FileNotFound(path)
        return self._file_attr(entry)

    def _node_attr(self, node: FileNode) -> Attr:
        mtime, ctime = self.files.times_of(node)
        return self.posix.node_attr(node, mtime, ctime)

    def _file_attr(self, info: ObjectInfo) -> Attr:
        mtime, ctime = self.times.of(info)
        return object_attr(info, mtime, ctime)

    def readdir(self, path: str) -> list[tuple[str, Attr]]:
        return [entry for batch, _more in self.readdir_batches(path) for entry in batch]

    def readdir_batches(self, path: str) -> Iterator[tuple[list[tuple[str, Attr]], bool]]:
        """A directory's entries, a batch at a time, each with whether more follow: all at once
        from a cached listing, else one batch per page of the bucket's listing as it arrives,
        so a reader of a large directory works on the first entries while the next page is on
        its way. Nothing is left to do after the batch that says none follow.

        A file the mount has open or pending upload shows its local version, as getattr does:
        the kernel may take these attributes as the files' own (READDIRPLUS). A directory whose
        marker is not known is not ``known`` (posixfs.Attr): the parent's listing does not show
        its marker. Errors about the path itself are raised here,
        at the call; the bucket's, from the iteration.
        """
        name, entry, node = self.lookups.resolve(path)
        if node is not None or isinstance(entry, ObjectInfo):
            raise NotADirectory(path)
        if entry is MISSING:
            raise FileNotFound(path)
        prefix = self.ns.dir_prefix(path)
        listing = self.metacache.listing(prefix)
        if listing is None:
            return self._stream_listing(prefix)
        # The mount's own changes update the cached listing before a node is dropped.
        local = self._local_attrs(prefix, self.files.nodes_under(prefix))
        out = [(d, self.posix.dir_attr(prefix + d, fetch=False)) for d in sorted(listing.dirs)]
        files = [(f, local.pop(f, None) or self._file_attr(info)) for f, info in sorted(listing.files.items())]
        self._note_links(files, listing.files)
        out += files
        out += [(f, attr) for f, attr in local.items() if f not in listing.dirs]  # new files not yet in the bucket
        return iter([(out, False)])

    def _note_links(self, files: list[tuple[str, Attr]], infos: dict[str, ObjectInfo]) -> None:
        """The links among a listing's ``files``: their targets may be read ahead once a program
        reads one of them (:mod:`octuefs.fs.linktargets`)."""
        links = [(infos[entry], attr) for entry, attr in files if attr.file_type == S_IFLNK]
        if links:
            self.posix.links_listed(links)

    def dir_epoch(self, path: str) -> tuple[int, int]:
        """A token that changes whenever the mount changes something in directory ``path``."""
        return self.metacache.epoch(self.ns.dir_prefix(path))

    def live_names(self, path: str) -> frozenset[str]:
        """The entries of directory ``path`` that the mount has open or pending upload."""
        prefix = self.ns.dir_prefix(path)
        return frozenset(n.name[len(prefix) :] for n in self.files.nodes_under(prefix) if "/" not in n.name[len(prefix) :])

    def _local_attrs(self, prefix: str, nodes: list[FileNode]) -> dict[str, Attr]:
        """The attributes of the files directly under ``prefix`` that have a live node."""
        local = {}
        for node in nodes:
            rest = node.name[len(prefix) :]
            if "/" not in rest and not node.unlinked:
                local[rest] = self._node_attr(node)
        return local

    def _stream_listing(self, prefix: str) -> Iterator[tuple[list[tuple[str, Attr]], bool]]:
        """List ``prefix`` from the bucket, a batch per page (the pages of the directory's fill:
        one under way is joined; the fill keeps the listing, see :mod:`octuefs.cache.listings`).

        Pages come in name order, so a file is held back only while a directory of the same
        name (which hides it) could still follow: until the listing has passed ``name/``.
        The nodes are taken before the listing and again after it: a file uploaded while the
        bucket was being listed, its node dropped since, is then still shown.
        """
        before = self.files.nodes_under(prefix)
        local = self._local_attrs(prefix, before)
        files: set[str] = set()
        dirs: set[str] = set()
        held: dict[str, ObjectInfo] = {}
        file_attr = self._file_attr
        for page in self.fills.pages(prefix):
            batch = []
            for entry in page.dirs:
                if entry in dirs:
                    continue
                dirs.add(entry)
                held.pop(entry, None)
                local.pop(entry, None)
                batch.append((entry, self.posix.dir_attr(prefix + entry, fetch=False)))
            for entry, info in page.files:
                if entry not in dirs:
                    held[entry] = info
            horizon = page.horizon
            if horizon is None:  # (every file held is released)
                released, held = held, {}
            else:
                released = {e: held.pop(e) for e in [e for e in held if prefix + e + "/" <= horizon]}
            files.update(released)
            shown = len(batch)
            if local:
                batch += [(entry, local.pop(entry, None) or file_attr(info)) for entry, info in released.items()]
            else:
                batch += [(entry, file_attr(info)) for entry, info in released.items()]
            self._note_links(batch[shown:], released)
            if horizon is None:
                after = self._local_attrs(prefix, self.files.nodes_under(prefix))
                local.update((f, a) for f, a in after.items() if f not in files)
                batch += [(f, attr) for f, attr in local.items() if f not in dirs]  # not yet in the bucket
                yield batch, False
                return
            if batch:
                yield batch, True

    def mkdir(self, path: str, mode: int | None = None, owner: dict[str, int] | None = None) -> None:
        """``mode`` (and ``owner``: uid, gid) are kept on the directory's marker (posixmeta.py)."""
        self.lookups.check_writable()
        name, entry, node = self.lookups.resolve(path)
        if node is not None or entry is not MISSING:
            raise FileExists(path)
        self.ns.check_new_name(name + "/")
        try:
            marker = self.bucket.upload_bytes(name + "/", b"", posixmeta.changes(mode=mode, **(owner or {})),
                                              if_generation_match=0)
        except PreconditionFailed as exc:
            raise FileExists(path) from exc
        self.metacache.made_dir(name)
        self.times.entry_changed(name)
        self.times.dir_changed(name + "/")
        self.posix.marker_seen(marker.name, marker)

    def rmdir(self, path: str) -> None:
        self.lookups.check_writable()
        if path == "/":
            raise InvalidArgument("cannot remove the mount's root")
        name, entry, node = self.lookups.resolve(path)
        if node is not None or isinstance(entry, ObjectInfo):
            raise NotADirectory(path)
        if entry is MISSING:
            raise FileNotFound(path)
        prefix = name + "/"
        page = self.bucket.list_page(prefix, "/", max_results=2)
        if page.prefixes or any(o.name != prefix for o in page.objects) or self.lookups.new_nodes_under(prefix):
            raise DirectoryNotEmpty(path)
        marker = next((o for o in page.objects if o.name == prefix), None)
        if marker is not None and marker.size > 0:
            # Data sent to a directory-style name ("gs://b/results/" by another tool): the
            # directory looks empty, but removing it would delete those bytes.
            log.warning("rmdir %s refused: its marker object %r holds %d bytes of data, which removing the "
                        "directory would delete; copy them out (gcloud storage cp gs://%s/%s FILE) and remove "
                        "the object there", path, prefix, marker.size, self.bucket.name, prefix)
            raise DirectoryNotEmpty(path)
        if marker is not None:  # no marker: nothing to delete (an object made since is not ours to remove)
            try:
                self.bucket.delete(prefix, marker.generation)  # only the empty marker the listing saw
            except NotFound:
                pass
            except PreconditionFailed as exc:
                log.info("rmdir %s: its marker object %r was replaced meanwhile; not removed", path, prefix)
                raise DirectoryNotEmpty(path) from exc
        self.metacache.removed(name, is_dir=True)
        self.times.entry_changed(name)
        self.posix.marker_seen(prefix, None)
