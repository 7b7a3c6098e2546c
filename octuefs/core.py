"""The filesystem in plain Python: paths, directories, files and extended attributes.

Nothing here knows about FUSE: calls take mount paths (``/a/b.txt``) and return plain values
(:class:`Attr`, bytes, names), and failures are octuefs's own exceptions from
:mod:`octuefs.errors`. ``fuse_ops`` turns those into errno values. Tests drive this class
directly against the in-memory bucket, without FUSE.

Files come from objects; directories from ``dir/`` marker objects and from implicit prefixes.
Open files and their Datafile semantics live in :mod:`octuefs.files`; extended attributes in
:mod:`octuefs.xattrs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import posixpath
import threading
import time
from collections.abc import Iterator

from . import metadata as octue
from . import posixmeta
from .cache import ContentCache
from .config import MountConfig, effective_cache_size, format_size
from .dataset_record import RECORD_NAME
from .errors import (
    BucketUnreachable,
    Conflict,
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    InvalidArgument,
    IsADirectory,
    MetadataTooLarge,
    NotADirectory,
    NotFound,
    NotSupported,
    OctuefsError,
    PreconditionFailed,
    ReadOnlyFilesystem,
    StorageError,
)
from .files import FileNode, MovedMeanwhile, OpenFiles
from .givebacks import OwedGiveBacks
from .listings import DirectoryFills
from .metacache import DIR, MISSING, MetadataCache
from .namespace import Namespace
from .posixfs import Attr, PosixSurface, object_attr
from .prefetch import Prefetcher
from .storage.base import PARTS_PREFIX, Bucket, ObjectInfo
from .times import Times
from .uploads import Journal, Uploader, is_version, merge_metadata, quarantine_unclosed
from .xattrs import PREFIXES as XATTR_PREFIXES  # noqa: F401  (fuse_ops answers other names itself)
from .xattrs import XattrSurface

log = logging.getLogger(__name__)

# The name editors (vim, emacs) give the original they rename away before writing a new file.
BACKUP_SUFFIX = "~"


# How long a failed take-over rename waits for the queued upload giving the source its own
# metadata back before it returns its error (saying the give-back is queued).
GIVE_BACK_WAIT = 5.0


@dataclasses.dataclass
class _TakeOver:
    """A rename taking over the replaced file's Octue metadata (:meth:`FileSystem._taking_over`):
    ``taken`` the source's version carrying ``donor``'s Octue keys, ``current`` the version of the
    target they were read from (None if it is not in the bucket)."""

    src_name: str
    dst_name: str
    taken: ObjectInfo
    donor: dict[str, str]
    current: ObjectInfo | None
    record: str = ""  # its owed give-back's journal record (givebacks.py)

    def copy_preconditions(self) -> dict[str, int]:
        wanted = {"if_source_metageneration_match": self.taken.metageneration}
        if self.current is not None:
            wanted["if_metageneration_match"] = self.current.metageneration
        return wanted


class FileSystem:
    def __init__(self, bucket: Bucket, config: MountConfig, cache: ContentCache | None = None):
        # Every request made while serving a call someone waits on (lookups, listings, reads,
        # metadata changes, renames) goes through a bounded view: it answers within about
        # op_timeout or fails with BucketUnreachable. Background uploads use the bucket itself
        # and retry for as long as it takes.
        self.bucket = bucket.bounded(config.op_timeout)
        self.config = config
        self._started = time.time()
        self.times = Times(self._started)  # what stat shows as mtime and ctime (times.py)
        self.ns = Namespace(config.prefix)
        self.metacache = MetadataCache(config.stat_ttl, config.list_ttl, config.negative_ttl)
        self.fills = DirectoryFills(self.bucket, self.metacache, self.ns)
        quarantine_unclosed(os.path.join(config.cache_dir, "staging"), config.cache_dir)
        self.cache = cache or ContentCache(config.cache_dir, self.bucket, config.block_size,
                                           cache_size=effective_cache_size(config))
        limit = self.cache.space.limit
        log.info("clean cached data: %s", "no limit" if limit is None else f"at most {format_size(limit)}")
        journal = Journal(config.cache_dir)
        bucket.keep_parts_in(os.path.join(config.cache_dir, "parts"))  # large uploads' parts, until deleted
        self.uploader = Uploader(bucket, journal, workers=config.upload_workers, burst_hold=config.upload_hold,
                                 small_workers=config.small_uploads)
        self.uploader.patch_pace = config.patch_pace
        self.files = OpenFiles(self.bucket, self.cache, self.metacache, self.uploader,
                               upload_on_close=config.upload_on_close, fsync_timeout=config.fsync_timeout,
                               op_timeout=config.op_timeout, times=self.times)
        # The next small files of a directory read in name order, fetched before they are opened.
        self.prefetch = (Prefetcher(self.cache, self.metacache, lambda name: self.files.node(name) is not None,
                                    files=config.prefetch_files)
                         if config.prefetch_files else None)
        recovered = journal.load(bucket.name)
        self.files.recover([e for e in recovered if not e.check_copy])  # (a copy check is no file's version)
        self.uploader.start(recovered)
        # Take-over renames an earlier mount left half done (see givebacks.py): settled in the
        # background, before this mount makes any.
        self.givebacks = OwedGiveBacks(config.cache_dir)
        self.givebacks_settled = threading.Thread(target=self._settle_give_backs,
                                                  args=([] if config.read_only else  # (a later one will)
                                                        self.givebacks.left_over(bucket.name),),
                                                  name="octuefs-givebacks", daemon=True)
        self.givebacks_settled.start()
        # Parts an earlier mount's large uploads left in the bucket (it crashed, or the bucket
        # was away when they were to be deleted): deleted in the background.
        threading.Thread(target=self._sweep_parts, args=(bucket,), name="octuefs-sweep", daemon=True).start()
        self.xattrs = XattrSurface(self)
        self.posix = PosixSurface(self)  # modes, owners, times, links, special files (posixfs.py)
        self.fills.on_marker = self.posix.marker_listed
        self.leave_pending = False  # set by `octuefs unmount --leave-pending`

    def _settle_give_backs(self, records: list[tuple[str, dict]]) -> None:
        for record_id, record in records:
            try:
                settled = self.givebacks.settle(self.bucket, record_id, record)
            except Exception:
                log.exception("settling a give-back owed to %r failed; it is tried again", record.get("name"))
                settled = False
            if not settled:
                self.givebacks.owe(self.bucket, record_id)  # (and `octuefs sync` waits for it)

    @staticmethod
    def _sweep_parts(bucket: Bucket) -> None:
        try:
            bucket.sweep_parts()
        except Exception:
            log.exception("sweeping the parts of earlier large uploads failed; the next mount tries again")

    # --- lookups ------------------------------------------------------------------------

    def lookup(self, name: str) -> ObjectInfo | object:
        """What object name ``name`` is: its ObjectInfo, ``DIR`` or ``MISSING``. From the
        metadata cache, else from its directory's listing (one request for every name there),
        else by asking for it alone (see :mod:`octuefs.listings`)."""
        if name == self.ns.prefix.rstrip("/") or not name:
            return DIR
        if self.givebacks.owes(name):  # a failed take-over's: the source's own metadata first
            self.givebacks.settle_owed(self.bucket, name)
            self.metacache.forget(name)
        known = self.metacache.lookup(name)
        if known is not None:
            return known
        return self.fills.lookup(name)

    def _node(self, name: str) -> FileNode | None:
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
        node = self._node(name) if path != "/" else None
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

    def _check_writable(self) -> None:
        if self.config.read_only:
            raise ReadOnlyFilesystem("the mount is read-only")

    check_writable = _check_writable

    @property
    def started(self) -> float:
        """When the mount started: the mtime of a directory that records none."""
        return self._started

    # --- attributes ---------------------------------------------------------------------

    def getattr(self, path: str | None, fh: int | None = None) -> Attr:
        if path is None and fh is not None:  # fstat of a file unlinked while open
            return self._node_attr(self.files.handle(fh).node)
        name, entry, node = self.resolve(path, gone_hides=True)
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

    def statfs(self) -> dict[str, int]:
        blocks = 1 << 40  # a bucket has no size; report 4 PiB of 4 KiB blocks, all free
        return {"bsize": 4096, "frsize": 4096, "blocks": blocks, "bfree": blocks, "bavail": blocks,
                "files": 1 << 32, "ffree": 1 << 32, "namemax": 255}

    # --- directories ----------------------------------------------------------------------

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
        name, entry, node = self.resolve(path)
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
        out += [(f, local.pop(f, None) or self._file_attr(info)) for f, info in sorted(listing.files.items())]
        out += [(f, attr) for f, attr in local.items() if f not in listing.dirs]  # new files not yet in the bucket
        return iter([(out, False)])

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
        one under way is joined; the fill keeps the listing, see :mod:`octuefs.listings`).

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
        def release(entry: str, info: ObjectInfo) -> tuple[str, Attr]:
            files.add(entry)
            return entry, local.pop(entry, None) or self._file_attr(info)

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
            for entry in [e for e in held if horizon is None or prefix + e + "/" <= horizon]:
                batch.append(release(entry, held.pop(entry)))
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
        self._check_writable()
        name, entry, node = self.resolve(path)
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
        self._check_writable()
        if path == "/":
            raise InvalidArgument("cannot remove the mount's root")
        name, entry, node = self.resolve(path)
        if node is not None or isinstance(entry, ObjectInfo):
            raise NotADirectory(path)
        if entry is MISSING:
            raise FileNotFound(path)
        prefix = name + "/"
        page = self.bucket.list_page(prefix, "/", max_results=2)
        if page.prefixes or any(o.name != prefix for o in page.objects) or self._new_nodes_under(prefix):
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

    def _new_nodes_under(self, prefix: str) -> list[FileNode]:
        return [n for n in self.files.nodes_under(prefix) if not n.unlinked]

    # --- files ----------------------------------------------------------------------------

    @staticmethod
    def _opening(attempt, *args):
        """``attempt(*args)``, again while it waited for an unlink or rename of the file (then
        what it looked up is out of date: it looks again, and is ordered after that)."""
        while True:
            try:
                return attempt(*args)
            except MovedMeanwhile:
                continue

    def create(self, path: str, flags: int = os.O_WRONLY, mode: int | None = None,
               owner: dict[str, int] | None = None) -> int:
        """Open ``path`` for writing, made if new: a new file records ``mode`` (the kernel's,
        umask applied) and ``owner`` (uid, gid) with its first upload (posixmeta.py)."""
        self._check_writable()
        fh, made = self._opening(self._create, path, flags)
        if made and (mode is not None or owner):
            node = self.files.handle(fh).node
            with node.lock:
                node.posix.update(posixmeta.changes(mode=mode, **(owner or {})))
        return fh

    def _create(self, path: str, flags: int) -> tuple[int, bool]:
        """``(handle, whether the file was made by this call)``."""
        name, entry, node = self.resolve(path)
        if entry is DIR:
            raise IsADirectory(path)
        if node is not None or isinstance(entry, ObjectInfo):
            if flags & os.O_EXCL:
                raise FileExists(path)
            return self.files.open(name, None if node else entry, writable=True, truncate=True, seen=node), False
        self.ns.check_new_name(name)
        fh = self.files.open(name, None, writable=True, create=True, meta=self._left_in_backup(name))
        self.times.entry_changed(name)
        return fh, True

    def _left_in_backup(self, name: str) -> octue.OctueMetadata | None:
        """The Octue metadata a new file ``name`` takes: that of the file renamed from ``name`` to
        ``name~`` a moment ago, if that backup is still as it was moved (vim's and emacs's way to
        save: rename the original to its backup, write a new file, maybe delete the backup)."""
        left = self.files.backup_of(name)
        if left is None:
            return None
        backup, generation, metageneration = left
        node = self._node(backup)
        info = node.base if node is not None else self.lookup(backup)
        if (not isinstance(info, ObjectInfo) or (info.generation, info.metageneration) != (generation, metageneration)
                or (node is not None and node.unsaved)):
            return None
        log.info("new file %r takes the Octue metadata of %r, the original it was renamed to a moment ago",
                 name, backup)
        return self.metadata_of(info)

    def open(self, path: str, flags: int) -> int:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable:
            self._check_writable()
        name, info, fh = self._opening(self._open, path, writable, flags)
        if not writable and info is not None and self.prefetch is not None:
            self.prefetch.opened(name, info)
        return fh

    def _open(self, path: str, writable: bool, flags: int) -> tuple[str, ObjectInfo | None, int]:
        name, info, node = self.file_info(path)
        return name, info, self.files.open(name, info, writable, truncate=bool(flags & os.O_TRUNC), seen=node)

    def read(self, fh: int, size: int, offset: int) -> bytes:
        return self.files.read(fh, size, offset)

    def write(self, fh: int, data: bytes, offset: int) -> int:
        return self.files.write(fh, data, offset)

    def flush(self, fh: int) -> None:
        self.files.flush(fh)

    def fsync(self, fh: int) -> None:
        self.files.fsync(fh)

    def release(self, fh: int) -> None:
        self.files.release(fh)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        self._check_writable()
        if length < 0:
            raise InvalidArgument("negative length")
        if fh is not None:
            self.files.truncate(self.files.handle(fh).node, length)
            return
        fh = self._opening(self._open, path, True, 0)[2]
        try:
            node = self.files.handle(fh).node
            self.files.truncate(node, length)
            self.files.save(node)
        finally:
            self.files.release(fh)

    def utimens(self, path: str, mtime: float | None = None, atime: float | None = None) -> None:
        """touch: ``mtime`` (None: now) and ``atime`` (None: unchanged); see :mod:`octuefs.posixfs`."""
        self.set_times(path, atime, time.time() if mtime is None else mtime)

    def set_times(self, path: str, atime: float | None, mtime: float | None) -> None:
        """utimensat: each time given is set, None leaves it as it is (UTIME_OMIT)."""
        self.posix.utimens(path, atime, mtime)

    def chmod(self, path: str, mode: int) -> None:
        self.posix.chmod(path, mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """-1 (or None) leaves the owner or group as it is."""
        self.posix.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)

    def symlink(self, path: str, target: str, owner: dict[str, int] | None = None) -> None:
        self.posix.symlink(path, target, posixmeta.changes(**(owner or {})))

    def readlink(self, path: str) -> str:
        return self.posix.readlink(path)

    def mknod(self, path: str, mode: int, rdev: int = 0, owner: dict[str, int] | None = None) -> None:
        self.posix.mknod(path, mode, rdev, posixmeta.changes(**(owner or {})))

    def link(self, path: str, target: str) -> None:
        self.posix.link(path, target)

    def unlink(self, path: str) -> None:
        self._check_writable()
        name, entry, node = self.resolve(path)
        if entry is DIR and node is None:
            raise IsADirectory(path)
        if node is None and entry is MISSING:
            raise FileNotFound(path)
        # (A node even for a clean file: an open or setfattr racing the unlink shares it and is
        # ordered with it, instead of making one from the version being deleted.)
        with self.files.pinned(name, node, entry) as node, self.files.held_still(node):
            if node is not None:  # (here, where no close can seal it meanwhile)
                self.files.keep_open_content(node)  # for the handles still open on it
            # Queued versions are moot once the object is deleted, and only then.
            with self._replacing(name, node, node.base if node is not None else entry, removing=True) as info:
                if info is not None:
                    self.uploader.wait_pace(name)  # (its upload just landed: not a 429 from GCS)
                    try:
                        self.bucket.delete(name, if_generation_match=info.generation)
                    except NotFound:
                        pass
                    except PreconditionFailed as exc:
                        self.metacache.forget(name)
                        raise Conflict(f"{name!r} changed in the bucket since it was read; not deleted") from exc
                self.files.gone(name, info)
            if node is not None:
                self.files.forget(node)
        self.cache.drop(name)
        self.metacache.removed(name)
        self.times.entry_changed(name)
        self.xattrs.states.forget(name)  # a file made there later, elsewhere, has no conflict of ours

    def rename(self, old: str, new: str) -> None:
        self._check_writable()
        if old == new:
            return
        if new.startswith(old.rstrip("/") + "/"):
            raise InvalidArgument(f"cannot move {old!r} into itself")
        src_name, src, node = self.resolve(old)
        dst_name, dst, dst_node = self.resolve(new)
        if node is None and src is MISSING:
            raise FileNotFound(old)
        if src is DIR and node is None:
            if dst_node is not None:  # a file here, maybe not in the bucket yet (its base None)
                raise NotADirectory(new)
            self._rename_dir(old, new, src_name, dst_name, dst)
            for prefix in (src_name + "/", dst_name + "/"):
                self.xattrs.states.forget(prefix, under=True)
            return
        if dst is DIR and dst_node is None:
            raise IsADirectory(new)
        self.ns.check_new_name(dst_name)
        # (Nodes even for clean files, as for unlink: an open racing the rename waits for it and
        # looks again; a setfattr of the source follows it to its new name.)
        with self.files.pinned(src_name, node, src) as node, self.files.pinned(dst_name, dst_node, dst) as dst_node:
            self._rename_file(src_name, src, node, dst_name, dst, dst_node)
        # Neither name keeps a conflict: the new one holds the mount's bytes, the old none.
        self.xattrs.states.forget(src_name)
        self.xattrs.states.forget(dst_name)

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
            with self._replacing(dst_name, dst_node, dst_info, removing=False) as dst_info:
                if took_over:
                    with self._taking_over(src_name, src_info, dst_name, dst_node, dst_info) as take:
                        moved = self._move_file(src_name, dst_name, take.taken, dst_info, take=take)
                else:
                    moved = self._move_file(src_name, dst_name, src_info, dst_info)
                self.files.gone(src_name, src_info)
                self.files.gone(dst_name, dst_info)
            if dst_node is not None:
                self.files.forget(dst_node)
            self.cache.drop(dst_name)
            self.uploader.mutated(dst_name)  # (a setfattr of it right after keeps GCS's pace)
            self.metacache.removed(src_name)
            self.metacache.wrote(moved)
            self.files.renamed(node, src_name, dst_name, moved, still_new=new and not took_over, took_over=took_over)
            if dst_name == src_name + BACKUP_SUFFIX and not took_over:  # (over an older backup too: emacs)
                self.files.left_for_backup(src_name, moved)
            self.cache.drop(src_name)
            now = self.times.renamed(src_name, dst_name, moved, mtime)
            if node is not None:
                with node.lock:
                    node.times = (mtime, now)

    @contextlib.contextmanager
    def _taking_over(self, src_name: str, src_info: ObjectInfo, dst_name: str, dst_node: FileNode | None,
                     dst_info: ObjectInfo | None):
        """A file just created here, never given Octue metadata, is being renamed over ``dst_name``
        (``sed -i``, an editor's save, ``os.replace``): it takes the replaced file's Octue metadata,
        so the file keeps its id, tags and labels across the edit. The metadata goes onto the
        source first (one PATCH, preconditions on the version settled), so the copy puts content
        and metadata in place in one step. Yields the source's version to copy; puts the source's
        own metadata back if the rename then fails.

        The copy then carries two more preconditions (see :class:`_TakeOver`): the target's
        metageneration, so that a metadata change made elsewhere after it was read is merged in
        (:meth:`_retake`) or the rename refused, never overwritten; and the source's
        metageneration, so that a copy which timed out and lands late, after the source got its
        own metadata back, fails instead of replacing the target with the source's own
        metadata (the give-back moves the source's metageneration)."""
        donor, current = self._replaced_metadata(dst_name, dst_node, dst_info)
        take = _TakeOver(src_name, dst_name, src_info, donor, current)
        # Journaled first: a daemon killed from the PATCH on must not leave the source with the
        # replaced file's id for good (the next mount gives it back: givebacks.py).
        take.record = self.givebacks.note(self.bucket.name, src_info, donor, dst_name)
        try:
            take.taken = self._take(take, src_info, donor)
        except MetadataTooLarge:
            self.givebacks.settled(take.record)  # refused before any request: nothing was changed
            raise
        except BaseException:
            # The PATCH may have landed with its answer lost (even a 412 may follow one: the
            # retry's, met by a change made elsewhere on top): undo it if it did. If the bucket
            # cannot tell now, it is owed: tried again, and waited for by `octuefs sync`.
            if not self.givebacks.settle_now(self.bucket, take.record):
                self.givebacks.owe(self.bucket, take.record)
            self.metacache.forget(src_name)
            raise
        log.info("%r replaces %r, which it takes the Octue metadata of (it had none of its own)", src_name, dst_name)
        try:
            yield take
        except BaseException as exc:
            outcome, owed = self._give_back(src_name, src_info, take.taken, dst_name)
            if owed:
                self.givebacks.owe(self.bucket, take.record)
            else:
                self.givebacks.settled(take.record)
            if outcome and isinstance(exc, OctuefsError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
                exc.args = (f"{exc.args[0]}; {outcome}",)  # (the error says what became of the source)
            raise
        self.givebacks.settled(take.record)

    def _take(self, take: _TakeOver, src_info: ObjectInfo, donor: dict[str, str]) -> ObjectInfo:
        """PATCH the source (at ``src_info``, preconditions on it) with ``donor``'s Octue keys."""
        changes = octue.octue_patch_from(src_info.metadata, donor)
        octue.check_size_limits({**src_info.metadata, **changes})
        try:
            taken = self.bucket.patch_metadata(take.src_name, changes, if_generation_match=src_info.generation,
                                               if_metageneration_match=src_info.metageneration)
        except PreconditionFailed as exc:
            self.metacache.forget(take.src_name)
            raise Conflict(f"{take.src_name!r} changed in the bucket before it could replace {take.dst_name!r}") \
                from exc
        self.cache.carry_over(src_info, taken)
        return taken

    def _retake(self, take: _TakeOver) -> None:
        """The take-over's copy met a 412: find which side changed. The target's metadata
        changed elsewhere (same content): merge that change into what the source took, key by
        key (as ``_replaced_metadata`` does), PATCH the source again, and let the copy be tried
        again; anything else (the target's content, the source, something made at the target):
        refuse, as the docs promise."""
        src_name, dst_name = take.src_name, take.dst_name
        try:
            src_now = self.bucket.stat(src_name)
        except NotFound:
            src_now = None
        if src_now is None or (src_now.generation, src_now.metageneration) != \
                (take.taken.generation, take.taken.metageneration):
            self.metacache.forget(src_name)
            raise Conflict(f"{src_name!r} changed in the bucket during its rename over {dst_name!r}; not replaced")
        try:
            dst_now = self.bucket.stat(dst_name)
        except NotFound:
            dst_now = None
        self.metacache.forget(dst_name)
        if take.current is None or dst_now is None or dst_now.generation != take.current.generation:
            raise Conflict(f"{dst_name!r} changed in the bucket since it was read; not replaced")
        if dst_now.metageneration == take.current.metageneration:
            return  # (nothing changed after all: try again)
        merged = merge_metadata(dict(take.current.metadata), take.donor, dict(dst_now.metadata))
        if merged is None:
            raise Conflict(f"the Octue metadata of {dst_name!r} changed here and elsewhere; not replaced")
        log.info("%r: its metadata changed elsewhere during a rename over it; merged in", dst_name)
        self.givebacks.retook(take.record, merged)
        take.taken = self._take(take, take.taken, merged)
        take.donor, take.current = merged, dst_now

    def _give_back(self, src_name: str, src_info: ObjectInfo, taken: ObjectInfo, dst_name: str) -> tuple[str, bool]:
        """A rename that took over ``dst_name``'s metadata failed: the source gets its own back,
        unless the copy is in place (only the delete failed: the file is then under both names,
        the same file twice, as documented).

        If the copy's fate is unknown (the bucket does not answer), the metadata is given back
        all the same: a copy that landed keeps the id at ``dst_name``, and one still in flight
        fails on its source metageneration precondition. If the PATCH fails too, the source
        must not stay a second live file with the replaced file's id: its own version (same
        content, its own metadata, replacing exactly ``taken``) goes through the upload queue,
        journaled and retried until it lands (also after a crash), merged with any change made
        elsewhere meanwhile, never over one unseen. Returns what became of the source, for the
        error, and whether the give-back is still owed (nothing could be done nor queued)."""
        same = (taken.md5, taken.crc32c, dict(taken.metadata))
        try:
            try:
                copied = self.bucket.stat(dst_name)
            except NotFound:
                copied = None
            if copied is not None and (copied.md5, copied.crc32c, dict(copied.metadata)) == same:
                return "", False
        except (OctuefsError, OSError) as exc:
            log.info("could not tell whether %r was copied to %r (%s); giving its own metadata back", src_name,
                     dst_name, exc)
        back = octue.octue_patch_from(taken.metadata, src_info.metadata)
        try:
            self.bucket.patch_metadata(src_name, back, if_generation_match=taken.generation,
                                       if_metageneration_match=taken.metageneration)
            return f"{src_name!r} has its own Octue metadata back", False
        except PreconditionFailed as exc:  # changed elsewhere since: theirs stands, unseen here
            log.warning("%r keeps the Octue metadata of %r after a failed rename over it: it changed in the bucket "
                        "meanwhile (%s)", src_name, dst_name, exc)
            return (f"{src_name!r} changed in the bucket meanwhile and may still carry the Octue metadata of "
                    f"{dst_name!r}"), False
        except (OctuefsError, OSError) as exc:
            log.warning("could not give %r its own Octue metadata back after a failed rename over %r (%s); "
                        "queueing it as an upload", src_name, dst_name, exc)
            return self._give_back_later(src_name, taken, {**{k: v for k, v in taken.metadata.items()},
                                                           **back}, dst_name)
        finally:
            self.metacache.forget(src_name)

    def _give_back_later(self, src_name: str, taken: ObjectInfo, metadata: dict[str, str | None],
                         dst_name: str) -> tuple[str, bool]:
        """Queue the source's own version (see :meth:`_give_back`) and wait for it a while."""
        own = {k: v for k, v in metadata.items() if v is not None}
        try:
            staged = self.cache.stage(taken)
            entry = self.uploader.submit(src_name, staged, own, taken.content_type, taken, taken.size)
            # The file's pending version, as after a crash: an unlink or rename of it meanwhile
            # holds it back (dropped once the object is gone) instead of meeting it later as a
            # change to keep beside.
            self.files.recover([entry])
        except (OctuefsError, OSError) as exc:
            log.error("%r carries the Octue metadata (the id) of %r after a failed rename over it, and putting its "
                      "own back could not be queued: %s", src_name, dst_name, exc)
            return (f"{src_name!r} still carries the Octue metadata (the id) of {dst_name!r}: putting its own back "
                    f"failed ({exc}); it is tried again, and `octuefs sync` waits for it"), True
        try:
            # A few seconds at most (a failing upload still "moves", so not ``idle``): the rename
            # has already spent its time on the copy; past that the error says it is queued.
            self.uploader.wait(entry, timeout=min(self.config.op_timeout, GIVE_BACK_WAIT))
            return f"{src_name!r} has its own Octue metadata back", False
        except Conflict as exc:  # changed elsewhere meanwhile: its own version went beside, reported
            return f"{src_name!r} changed in the bucket meanwhile ({exc})", False
        except (OctuefsError, OSError):
            return (f"{src_name!r} still carries the Octue metadata (the id) of {dst_name!r} until an upload "
                    f"putting its own back lands (queued; see `octuefs status`)"), False

    def _replaced_metadata(self, dst_name: str, dst_node: FileNode | None,
                           dst_info: ObjectInfo | None) -> tuple[dict[str, str], ObjectInfo | None]:
        """The custom metadata whose Octue keys the file replacing ``dst_name`` takes over: the
        replaced file's newest, with what this mount has not saved yet (``dst_node``), merged with
        any change made elsewhere since this mount read it; never one overwritten unseen. With
        the version of ``dst_name`` read for it (None if it is not in the bucket)."""
        current = None
        if dst_info is not None:
            try:
                current = self.bucket.stat(dst_name)
            except NotFound:
                current = None
            if current is None or current.generation != dst_info.generation:
                self.metacache.forget(dst_name)
                raise Conflict(f"{dst_name!r} changed in the bucket since it was read; not replaced")
        if dst_node is None:
            return dict(current.metadata), current
        prior = dict(dst_info.metadata) if dst_info is not None else {}
        ours = octue.encode_object_metadata(dst_node.meta.with_id(), prior)
        if current is None or current.metageneration == dst_info.metageneration:
            return ours, current
        merged = merge_metadata(prior, ours, dict(current.metadata))
        if merged is None:
            self.metacache.forget(dst_name)
            raise Conflict(f"the Octue metadata of {dst_name!r} changed here and elsewhere; not replaced")
        return merged, current

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

    @contextlib.contextmanager
    def _replacing(self, name: str, node: FileNode | None, info: ObjectInfo | None, *, removing: bool):
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

    def _move_file(self, src_name: str, dst_name: str, info: ObjectInfo, dst_info: ObjectInfo | None,
                   take: _TakeOver | None = None) -> ObjectInfo:
        """Copy, then delete the source: the bucket half of a file rename. ``take``: a take-over
        (see :meth:`_taking_over`), whose copy has metageneration preconditions on both sides."""
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
                        self._retake(take)  # merged in a change made elsewhere, or Conflict
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

    def _delete_after_copy(self, name: str, info: ObjectInfo, copied: ObjectInfo) -> None:
        """The second half of a file rename. If the bucket stops answering here, the file is
        under both names: say so, and show the copy too."""
        self.uploader.wait_pace(name)  # (an upload or setfattr landed just before the copy: not a 429 from GCS)
        try:
            self.bucket.delete(name, if_generation_match=info.generation, if_metageneration_match=info.metageneration)
        except BucketUnreachable as exc:
            if self.files.node(copied.name) is None:
                self.metacache.wrote(copied)
            raise BucketUnreachable(f"{exc}; it was copied to {copied.name!r} first, so it is under both names now") \
                from exc

    def _rename_dir(self, old: str, new: str, src_name: str, dst_name: str, dst: object) -> None:
        """Copy every object under the directory, then delete the originals. Not atomic."""
        if isinstance(dst, ObjectInfo):
            raise NotADirectory(new)
        src_prefix, dst_prefix = src_name + "/", dst_name + "/"
        # Empty means empty here too, as for rmdir: a file written under the target and not yet
        # uploaded counts (else the move would merge into it and displace that file).
        if self._new_nodes_under(dst_prefix):
            raise DirectoryNotEmpty(new)
        if dst is DIR:
            page = self.bucket.list_page(dst_prefix, "/", max_results=2)
            if page.prefixes or any(o.name != dst_prefix for o in page.objects):
                raise DirectoryNotEmpty(new)
        with contextlib.ExitStack() as stack:
            # Every file under it reaches the bucket first, and none is sealed until the move ends
            # (it would go up under a name being left).
            for node in sorted(self._new_nodes_under(src_prefix), key=lambda n: n.name):
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
            datasets = self.xattrs.datasets
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
            self.posix.forget_markers()

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

    # --- extended attributes (see xattrs.py) ---------------------------------------------

    def getxattr(self, path: str, name: str) -> bytes:
        return self.xattrs.get(path, name)

    def listxattr(self, path: str) -> list[str]:
        return self.xattrs.list(path)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        self.xattrs.set(path, name, value, flags)

    def removexattr(self, path: str, name: str) -> None:
        self.xattrs.remove(path, name)

    def metadata_of(self, info: ObjectInfo) -> octue.OctueMetadata:
        return self.xattrs.decoded(info)

    def cache_usage(self) -> dict:
        """For ``octuefs status``: clean bytes held and their limit, and unsaved bytes."""
        usage = self.cache.usage()
        usage["unsaved_bytes"] = self.cache.staging_bytes() + self.uploader.journal.pending_bytes()
        problem = self.cache.write_problem(self.uploader.journal.pending_dir)
        if problem is not None:
            usage["error"] = problem
            log.error("the cache directory %s cannot be written (%s): writes into the mount fail (EIO) until it can",
                      self.config.cache_dir, problem)
        return usage

    # --- lifetime ---------------------------------------------------------------------------

    def shutdown(self, drain: bool | None = None) -> int:
        """Seal what is still unsaved, then finish the uploads (unless ``drain`` is False:
        then they stay journaled for the next mount). Returns how many are left."""
        for node in self.files.all_nodes():
            if node.dirty or node.meta_dirty:
                try:
                    self.files.save(node)
                except (OctuefsError, OSError) as exc:
                    log.error("could not save %r at unmount (%s); its content stays in %s", node.name, exc, node.staging)
                except Exception:
                    log.exception("could not save %r at unmount; it stays in %s", node.name, node.staging)
        if self.prefetch is not None:
            self.prefetch.close()  # nothing more fetched ahead for readers who are leaving
        drain = not self.leave_pending if drain is None else drain
        self.givebacks.stop()  # (what is still owed stays journaled for the next mount)
        left = self.uploader.shutdown(drain=drain)
        if drain:
            left += self.givebacks.settle_owed(self.bucket)
        self.cache.close()
        return left
