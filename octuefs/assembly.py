"""The one place a mount's parts are built and wired: bucket -> caches -> write-back -> filesystem.

:func:`build_filesystem` makes, in order: the metadata caches, the bucket wrapped to keep them
told of every change made through it, its bounded view, the listings, the content cache on disk (after quarantining files a dead daemon left unclosed), the
write-back journal and uploader (resuming what the journal holds), the open-files table, the
prefetcher, and the background settling of take-over give-backs an earlier mount left; then the
:class:`~octuefs.fs.core.FileSystem` over them. :func:`octuefs.mount.serve` hands it the bucket
(wrapped to upload large files in parts: :mod:`octuefs.writeback.composite`, whose sweep of parts
an earlier mount left starts there, and metered if ``--metrics-port``) and puts the FUSE layer and
the control socket on top. Every path under the cache directory comes
from :mod:`octuefs.cachedir`. Tests call :func:`build_filesystem` too, with the in-memory bucket.

LOCK ORDER across modules: a thread holding one of these locks takes only those listed after it.

1. ``XattrSurface._changing``: one lock per object name (fs/xattrs.py), held by a setfattr, chmod,
   chown or touch for its whole change, and by a directory rename over its dataset records
   (``DatasetXattrs.holding``: in name order, with a timeout).
2. ``Prefetcher._lock`` (cache/prefetch.py): before the content cache's locks and the open files'.
3. ``OpenFiles._lock``: the node and handle tables (fs/files.py).
4. ``FileNode.lock``: one node's state.
5. ``Uploader._cond``: the upload queue (writeback/uploads.py). Its callbacks into the file layer
   (``on_done``, ``on_finished``) run without it.
6. ``DirectoryFills._cond`` (cache/listings.py), then ``MetadataCache._lock``.

Leaves, under which nothing else is taken: ``MetadataCache._lock``, ``ContentCache._lock`` (its
``Space`` runs under it), ``Times._lock``, ``PosixSurface._lock``, ``DatasetXattrs._lock``.
A node held still by a rename or unlink (``OpenFiles.held_still``) is marked, not locked: two are
held in name order (``Renames._held_still_both``), so two renames never wait for each other.
"""

from __future__ import annotations

import logging
import threading
import time

from octuefs.cache.content import ContentCache
from octuefs.cache.listings import DirectoryFills
from octuefs.cache.metacache import MetadataCache
from octuefs.cache.ownwrites import CachingBucket
from octuefs.cache.prefetch import Prefetcher
from octuefs.cachedir import CacheDir
from octuefs.config import MountConfig, effective_cache_size, format_size
from octuefs.fs.core import FileSystem
from octuefs.fs.files import OpenFiles
from octuefs.fs.parts import MountParts
from octuefs.fs.times import Times
from octuefs.namespace import Namespace
from octuefs.storage.base import Bucket
from octuefs.storage.objects import SentPage
from octuefs.writeback.givebacks import OwedGiveBacks
from octuefs.writeback.journal import Journal
from octuefs.writeback.quarantine import quarantine_unclosed
from octuefs.writeback.uploads import Uploader

log = logging.getLogger(__name__)


def build_filesystem(bucket: Bucket, config: MountConfig, cache: ContentCache | None = None,
                     root_page: SentPage | None = None) -> FileSystem:
    """A FileSystem serving ``bucket`` as ``config`` says, its caches and write-back built and
    started (``cache``: a content cache made by the caller, for tests). ``root_page``: the first
    page of the mount root's listing, as the bucket's check listed it (``storage.open_checked``),
    whose names then answer the first lookups at the root (:meth:`DirectoryFills.seed`); None:
    they are looked up as any other."""
    where = CacheDir(config.cache_dir)
    # Every request made while serving a call someone waits on (lookups, listings, reads,
    # metadata changes, renames) goes through a bounded view: it answers within about
    # op_timeout or fails with BucketUnreachable. Background uploads use the bucket itself
    # and retry for as long as it takes.
    # Every change made through the bucket, by either, is laid over the metadata caches as it
    # answers (cache/ownwrites.py): the one place they learn of the mount's own writes.
    metacache = MetadataCache(config.stat_ttl, config.list_ttl, config.negative_ttl)
    root_epoch = metacache.epoch(config.prefix)  # (before the mount can change anything)
    bucket = CachingBucket(bucket, metacache)
    bounded = bucket.bounded(config.op_timeout)
    started = time.time()
    times = Times(started)  # what stat shows as mtime and ctime (times.py)
    ns = Namespace(config.prefix)
    fills = DirectoryFills(bounded, metacache, ns)
    quarantine_unclosed(where.staging, where.root)
    cache = cache or ContentCache(where.root, bounded, config.block_size, cache_size=effective_cache_size(config))
    limit = cache.space.limit
    log.info("clean cached data: %s", "no limit" if limit is None else f"at most {format_size(limit)}")
    journal = Journal(where.root)
    uploader = Uploader(bucket, journal, workers=config.upload_workers, burst_hold=config.upload_hold,
                        small_workers=config.small_uploads)
    uploader.patch_pace = config.patch_pace
    bucket.on_change.append(uploader.mutated)  # every change the mount makes keeps GCS's pace
    files = OpenFiles(bounded, cache, metacache, uploader, upload_on_close=config.upload_on_close,
                      fsync_timeout=config.fsync_timeout, op_timeout=config.op_timeout, times=times)
    # The next small files of a directory read in name order, fetched before they are opened.
    prefetch = (Prefetcher(cache, metacache, lambda name: files.node(name) is not None, files=config.prefetch_files)
                if config.prefetch_files else None)
    files.watch = prefetch  # which files readers read whole: a directory read whole in no order
    recovered = journal.load(bucket.name)
    files.recover([e for e in recovered if not e.check_copy])  # (a copy check is no file's version)
    uploader.start(recovered)
    # Take-over renames an earlier mount left half done (see givebacks.py): settled in the
    # background, before this mount makes any.
    givebacks = OwedGiveBacks(where.root)
    givebacks_settled = threading.Thread(target=_settle_give_backs,
                                         args=(givebacks, bounded, [] if config.read_only else  # (a later one will)
                                               givebacks.left_over(bucket.name)),
                                         name="octuefs-givebacks", daemon=True)
    givebacks_settled.start()
    parts = MountParts(config=config, bucket=bounded, started=started, times=times, ns=ns, metacache=metacache,
                       fills=fills, cache=cache, journal=journal, uploader=uploader, files=files, prefetch=prefetch,
                       givebacks=givebacks)
    fs = FileSystem(parts, givebacks_settled=givebacks_settled)
    # Kept once the filesystem is built: it watches the markers in the page (a prefix's own).
    if root_page is not None and root_page.prefix == ns.prefix:
        kept = fills.seed(root_page.page, root_page.sent, root_epoch)
        log.debug("the check's first page of the root (%d entries, asked for %.3fs ago): %s",
                  len(root_page.page.objects) + len(root_page.page.prefixes), metacache.now() - root_page.sent,
                  "kept" if kept else "not kept")
    return fs


def _settle_give_backs(givebacks: OwedGiveBacks, bucket: Bucket, records: list[tuple[str, dict]]) -> None:
    for record_id, record in records:
        try:
            settled = givebacks.settle(bucket, record_id, record)
        except Exception:
            log.exception("settling a give-back owed to %r failed; it is tried again", record.get("name"))
            settled = False
        if not settled:
            givebacks.owe(bucket, record_id)  # (and `octuefs sync` waits for it)
