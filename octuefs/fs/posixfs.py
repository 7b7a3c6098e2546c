"""POSIX attributes of the mount's entries: modes, owners, times, symbolic links, special files.

What ``stat`` shows (:class:`Attr`) comes from an object's custom metadata in Google's layout
(:mod:`octuefs.octue.posixmeta`, the codec), else from the mount's defaults (``--file-mode``,
``--dir-mode``, ``--uid``, ``--gid``: the FUSE layer fills in what an Attr leaves as None).

* chmod, chown and utimens of a file are metadata changes like a setfattr: shown at once,
  journaled before they return, folded into the file's pending upload if it has one, else sent
  as one PATCH, paced and coalesced with the object's other changes (:meth:`OpenFiles.change_metadata`).
* A directory keeps its facts on its marker object ``dir/``, changed at once (one PATCH, or one
  upload of an empty marker carrying them when the directory has none). Markers come with the
  parent's listing (``ListPage.markers``: GCS sends each prefix's marker when asked), and from
  the first page of the directory's own listing, else from one stat, and are kept for
  ``--stat-ttl``; a directory whose marker is still not known is listed without attributes (the
  kernel then asks).
* A symbolic link is an object whose content is its target, with ``goog-reserved-file-is-symlink``;
  its target is read once per generation (at most one GET) and kept, and read ahead when a
  program reads a directory's links one after another (:mod:`octuefs.fs.linktargets`). The
  daemon never follows one.
* Named pipes, sockets and device nodes are empty objects whose type is in their metadata.
* Hard links are refused with EPERM: an object has one name.

Locks: ``_lock`` guards ``_markers``; it is never held during a request.
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

import cachetools

from octuefs.cache.metacache import DIR, MISSING
from octuefs.errors import (
    FileExists,
    FileNotFound,
    InvalidArgument,
    NotFound,
    NotPermitted,
    PreconditionFailed,
    TransientError,
)
from octuefs.fs.files import FileNode
from octuefs.fs.linktargets import LinkTargets
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.octue import posixmeta
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)

MARKERS_KEPT = 65536  # directory markers remembered
_UNKNOWN = object()


class Attr(NamedTuple):
    """What ``stat`` shows of an entry; None where the mount's defaults apply. (A named tuple: a
    listing makes thousands, in a fifth of a frozen dataclass's time.)"""

    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    file_type: int | None = None  # S_IFLNK, S_IFIFO, ...; None: a directory or a regular file
    mode: int | None = None  # permission bits
    uid: int | None = None
    gid: int | None = None
    atime: float | None = None
    rdev: int = 0
    ctime: float | None = None  # None: the mtime (times.py)
    # False for a directory listed before its marker is known: the defaults stand in, and the
    # FUSE layer sends it without attributes, so the kernel asks for them (a getattr).
    known: bool = True


_new = tuple.__new__


def facts_attr(facts: posixmeta.PosixFacts, size: int, mtime: float, is_dir: bool = False,
               ctime: float | None = None) -> Attr:
    if facts is posixmeta.NOTHING:  # (most objects: no POSIX keys)
        return _new(Attr, (is_dir, size, mtime, None, None, None, None, None, 0, ctime, True))
    if facts.is_symlink and facts.target is not None:
        size = len(facts.target.encode("utf-8", "surrogateescape"))  # (older gcsfuse: an empty object)
    return _new(Attr, (is_dir, size, mtime, None if is_dir or facts.file_type == stat.S_IFREG else facts.file_type,
                       facts.mode, facts.uid, facts.gid, facts.atime, facts.rdev, ctime, True))


def object_attr(info: ObjectInfo, mtime: float, ctime: float | None = None) -> Attr:
    """The attributes of a file from its object (``mtime``, ``ctime``: its times.Times.of)."""
    return facts_attr(posixmeta.decoded(info), info.size, mtime, ctime=ctime)


class PosixSurface:
    def __init__(self, parts: MountParts, lookups: Lookups, changing: Callable[[str], AbstractContextManager]):
        self.config, self.bucket, self.times, self.ns = parts.config, parts.bucket, parts.times, parts.ns
        self.metacache, self.uploader, self.files = parts.metacache, parts.uploader, parts.files
        self.lookups = lookups
        self.changing = changing  # XattrSurface.changing: one metadata change of an object at a time
        self._lock = threading.Lock()
        self.links = LinkTargets(parts.bucket)
        # directory name -> its marker's ObjectInfo, or None (it has none); from a listing or a stat
        self._markers: cachetools.TTLCache[str, ObjectInfo | None] = cachetools.TTLCache(
            MARKERS_KEPT, max(parts.config.stat_ttl, 0.001))

    # --- what stat shows -------------------------------------------------------------------

    def node_attr(self, node: FileNode, mtime: float, ctime: float | None = None) -> Attr:
        """A file with a live node: its facts as they will be once its changes are in the bucket."""
        with node.lock:
            source = node.pending[-1].metadata if node.pending else (node.base.metadata if node.base else {})
            custom = posixmeta.apply(source, node.posix) if node.posix else source
            size = node.size
        return facts_attr(posixmeta.decode(custom), size, mtime, ctime=ctime)

    def dir_attr(self, name: str, fetch: bool = True) -> Attr:
        """A directory's attributes, from its marker (not ``known`` if it is not, and not ``fetch``)."""
        started = self.times.of_dir(name + "/" if name else "")  # (the mount's start, or its last entry change)
        if self._is_root(name):
            return Attr(True, 0, started)
        marker = self._marker(name, fetch)
        if marker is _UNKNOWN:
            return Attr(True, 0, started, known=False)
        if marker is None:
            return Attr(True, 0, started)
        facts = posixmeta.decoded(marker)
        # A touch's mtime on the marker, unless an entry changed here after that touch landed;
        # the ctime: the marker's last change (a chmod, chown, touch) or the last entry change.
        changed = marker.updated.timestamp()
        remembered = self.times.dir_changed_at(name + "/")
        mtime = facts.mtime if facts.mtime is not None and (remembered is None or changed >= remembered) else started
        return facts_attr(facts, 0, mtime, is_dir=True, ctime=max(mtime, changed, started))

    def _is_root(self, name: str) -> bool:
        return not name or name == self.ns.prefix.rstrip("/")

    def _marker(self, name: str, fetch: bool):
        with self._lock:
            known = self._markers.get(name, _UNKNOWN)
        if known is not _UNKNOWN or not fetch:
            return known
        try:
            known = self.bucket.stat(name + "/")
        except NotFound:
            known = None
        except TransientError as exc:
            # The bucket is away: a directory the mount knows from a listing still stats, with
            # the defaults, as it did before markers were read (not kept: asked again next time).
            log.debug("the marker of %r is not known (%s): the defaults are shown", name, exc)
            return None
        self.marker_listed(name + "/", known)  # (a stat answered before a chmod made here: not kept)
        with self._lock:
            return self._markers.get(name, known)

    def marker_seen(self, prefix: str, info: ObjectInfo | None) -> None:
        """The bucket says directory ``prefix`` has marker ``info`` (None: none), e.g. from the
        first page of its listing, where the marker comes first."""
        if not prefix.endswith("/"):
            return
        with self._lock:
            self._markers[prefix[:-1]] = info

    def marker_listed(self, prefix: str, info: ObjectInfo | None) -> None:
        """:meth:`marker_seen` from a listing's first page (or a stat), which may have been answered before
        a change this mount made since (a chmod's PATCH, a marker made): it replaces only an
        older marker than it, never one of a later version, and a "none" replaces nothing."""
        if not prefix.endswith("/"):
            return
        with self._lock:
            known = self._markers.get(prefix[:-1], _UNKNOWN)
            if known is _UNKNOWN or (known is not None and info is not None
                                     and (info.generation, info.metageneration) > (known.generation, known.metageneration)):
                self._markers[prefix[:-1]] = info

    def forget_markers(self) -> None:
        with self._lock:
            self._markers.clear()

    # --- chmod, chown, utimens ----------------------------------------------------------------

    def chmod(self, path: str, mode: int) -> None:
        self._change(path, posixmeta.changes(mode=mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        wanted = posixmeta.changes(uid=uid, gid=gid)
        if wanted:
            self._change(path, wanted)

    def utimens(self, path: str, atime: float | None, mtime: float | None) -> None:
        """Set the times given (None: left as they are), in whole seconds, as they are kept."""
        for given in (atime, mtime):
            if given is not None and not 0 <= given <= posixmeta.MAX_SECONDS:
                # the keys hold whole seconds from 1970 to 9999 (gcloud reads a negative one as
                # absent): kept, it would show until its patch landed, then silently not
                raise InvalidArgument(f"a time of {given} s cannot be kept (0 to {posixmeta.MAX_SECONDS:.0f})")
        if mtime is not None:
            mtime = float(int(mtime))
        wanted = posixmeta.changes(atime=atime)
        if mtime is not None:
            wanted[posixmeta.MTIME_KEY] = posixmeta.seconds_text(mtime)
        if wanted:
            self._change(path, wanted, mtime=mtime)

    def _change(self, path: str, wanted: dict[str, str], mtime: float | None = None) -> None:
        self.lookups.check_writable()
        if path is None:
            raise FileNotFound("(a file unlinked while open has no path)")
        name = self.ns.object_name(path)
        with self.changing(name):
            name, entry, node = self.lookups.resolve(path, gone_hides=True)
            if node is None and entry is DIR:
                self._change_dir(name, wanted)
                return
            if node is None and entry is MISSING:
                raise FileNotFound(path)
            info = node.base if node is not None else entry
            with self.files.node_to_change(name, info, seen=node) as held, held.lock:
                posix = {k: v for k, v in wanted.items() if k != posixmeta.MTIME_KEY}

                def apply() -> None:
                    held.times = (self.files.times_of(held)[0], time.time())  # (moves the ctime)
                    held.posix.update(posix)
                    if mtime is not None:
                        held.mtime = mtime
                self.files.change_metadata(held, apply)

    def _change_dir(self, name: str, wanted: dict[str, str]) -> None:
        """Change a directory's marker at once (made, empty, carrying ``wanted``, if it has none)."""
        if self._is_root(name):
            self._change_root(wanted)
            return
        key = name + "/"
        for _ in range(3):
            marker = self._marker(name, fetch=True)
            self.uploader.wait_pace(key)
            if marker is None and not self._still_there(name):
                self.metacache.forget(name)
                raise FileNotFound(f"{name}: removed elsewhere (nothing is left under {key!r})")
            try:
                if marker is None:
                    log.info("directory %r has no marker object: %r is made to keep its mode, owners or times",
                             name, key)
                    new = self.bucket.upload_bytes(key, b"", wanted, if_generation_match=0)
                else:
                    new = self.bucket.patch_metadata(key, wanted, if_generation_match=marker.generation,
                                                        if_metageneration_match=marker.metageneration)
            except (PreconditionFailed, NotFound):
                with self._lock:
                    self._markers.pop(name, None)  # changed elsewhere meanwhile: read it again
                continue
            self.marker_seen(key, new)
            return
        raise PreconditionFailed(f"the marker object {key!r} kept changing; its attributes were not changed")

    def _still_there(self, name: str) -> bool:
        """Whether directory ``name``, which has no marker, still has something under it (in the
        bucket, or written here and not yet there): a marker made for a directory removed
        elsewhere meanwhile would bring it back."""
        key = name + "/"
        if any(not n.unlinked for n in self.files.nodes_under(key)):
            return True
        page = self.bucket.list_page(key, "/", max_results=1)
        return bool(page.objects or page.prefixes)

    def _change_root(self, wanted: dict[str, str]) -> None:
        """The mount's root has no marker object: its times are not kept (a change of them is
        accepted and ignored, so ``rsync -a`` into the mount stays clean), and its owner and mode
        are the mount's (--uid, --gid, --dir-mode): setting them to what they are is a no-op,
        anything else EPERM."""
        cfg = self.config
        shown = {posixmeta.MODE_KEY: posixmeta.mode_text(cfg.dir_mode), posixmeta.UID_KEY: str(cfg.uid),
                 posixmeta.GID_KEY: str(cfg.gid)}
        differs = {k: v for k, v in wanted.items() if k in shown and shown[k] != v}
        if differs:
            raise NotPermitted("the mount's root keeps no mode or owner (it has no marker object): they are "
                               f"--dir-mode, --uid and --gid ({differs} asked)")
        log.debug("times of the mount's root are not kept: %s ignored", wanted)

    # --- symbolic links ------------------------------------------------------------------------

    def symlink(self, path: str, target: str, owner: dict[str, str]) -> None:
        """``ln -s target path``: an object holding the target, marked as a link."""
        data = target.encode("utf-8", "surrogateescape")
        if not data:
            raise FileNotFound("a symbolic link needs a target")
        info = self._make(path, data, {**posixmeta.symlink_metadata(), posixmeta.MODE_KEY: "777", **owner})
        self.links.remember(info, target)

    def readlink(self, path: str) -> str:
        try:
            return self._readlink(path)
        except NotFound:
            # The generation known here is gone: the link was replaced (or removed) elsewhere
            # within --stat-ttl. Look it up again, once, rather than answer ENOENT for a link
            # that is there.
            self.metacache.forget(self.ns.object_name(path))
            return self._readlink(path)

    def _readlink(self, path: str) -> str:
        name, entry, node = self.lookups.resolve(path)
        info = node.base if node is not None else entry
        if not isinstance(info, ObjectInfo) or not posixmeta.decoded(info).is_symlink:
            raise InvalidArgument(f"{path} is not a symbolic link")
        facts = posixmeta.decoded(info)
        if facts.target is not None:
            return facts.target
        return self.links.target(info)

    def links_listed(self, listed: list[tuple[ObjectInfo, Attr]]) -> None:
        """A listing's files (with their attributes): the links among them whose target is their
        content may be read ahead (:mod:`octuefs.fs.linktargets`)."""
        links = [info for info, attr in listed if attr.file_type == stat.S_IFLNK and info.size
                 and posixmeta.decoded(info).is_symlink and posixmeta.decoded(info).target is None]
        if links:
            self.links.listed(links)

    # --- special files, hard links -----------------------------------------------------------

    def mknod(self, path: str, mode: int, rdev: int, owner: dict[str, str]) -> None:
        kind = stat.S_IFMT(mode)
        meta = {posixmeta.MODE_KEY: posixmeta.mode_text(mode), **owner}
        if kind not in (0, stat.S_IFREG):
            try:
                meta.update(posixmeta.special_metadata(kind, rdev))
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        self._make(path, b"", meta)

    def link(self, path: str, target: str) -> None:
        raise NotPermitted(f"hard links are not supported (an object has one name): {path} -> {target}; "
                           "use a symbolic link (ln -s) or a copy")

    def _make(self, path: str, data: bytes, meta: dict[str, str]) -> ObjectInfo:
        """A new object at ``path``, at once (not written back): EEXIST if the name is taken."""
        self.lookups.check_writable()
        name, entry, node = self.lookups.resolve(path)
        if node is not None or entry is not MISSING:
            raise FileExists(path)
        self.ns.check_new_name(name)
        try:
            info = self.bucket.upload_bytes(name, data, meta, if_generation_match=0)
        except PreconditionFailed as exc:
            raise FileExists(path) from exc
        self.times.entry_changed(name)  # (an entry made: its directory's times move, as for a create)
        return info

