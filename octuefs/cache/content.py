"""The local disk cache: object content by name + generation, and staging files for writes.

Layout under the cache directory (0700, files 0600):

    blocks/<hh>/<sha256 of name>-<generation>   sparse copies of objects, filled block by block
    staging/<random>                            full copies being written (unsaved data)

Reads fetch only the blocks they touch, with ranged GETs pinned to the generation they started
on, so no read mixes two versions (the fetching itself is :mod:`octuefs.cache.fetching`). Sequential readers get read-ahead (see
:mod:`octuefs.cache.readahead`): the next blocks are fetched in the background, in long ranges
(half the window each) so that a stream pays few round trips, before they are asked for. All
fetches run on one bounded :class:`FetchPool` per cache and stream into the copy a piece at a
time, so memory stays bounded whatever the readers do. A fetch in flight is recorded per
block, and its blocks land one by one as their last bytes are written: a reader of a block
being fetched waits for that block only, a failed fetch leaves the blocks it had not brought
missing and its error reaches only the readers waiting for them (the next reader tries
again; after an unreachable bucket, the readers coming within ``RECENT_FAILURE`` seconds, see
:mod:`octuefs.cache.fetching`, get the same error instead of waiting as long again).

A file opened for writing is copied into a staging file once; after a successful upload the
staging file becomes the cached content of the new generation.

Clean content is bounded by ``cache_size`` (see :mod:`octuefs.cache.space`): the least recently
used blocks give way first, at block granularity, and a block a reader holds or a fetch is
bringing never does. Staging files are unsaved data: never counted, never evicted.

Each cached copy keeps a file descriptor open (``os.pread``/``os.pwrite``, no open per call);
at most ``MAX_OPEN_FILES`` are open at once, the least recently used being closed first. An
entry is *pinned* while a read or a fetch uses its descriptor, and is closed only unpinned; a
read also *holds* the blocks it returns, from before it makes sure they are present until its
``pread`` is done, so they cannot be evicted under it.

Locks, in the order they are taken: ``ContentCache._lock`` (the entry table, the open-file
list, the space accounting and its LRU) before an ``Entry.lock`` (that entry's block map,
fetches in flight, held blocks, streams, pins and descriptor), one entry at a time.
Neither is held across a network request; ``Entry.lock`` is held only for bookkeeping, for
opening or closing the entry's descriptor and for punching an evicted block's hole.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import shutil
import threading
import uuid

from octuefs.cache.fetching import Fetching, no_space
from octuefs.cache.readahead import FetchPool, Streams
from octuefs.cache.space import Entry, Space, bytes_in
from octuefs.cachedir import CacheDir
from octuefs.errors import CacheUnwritable, FileTooLarge, OctuefsError, StorageError
from octuefs.storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_OPEN_FILES = 256  # cached copies with an open descriptor at once
# Bytes per second one ranged GET brings, for sizing the first read-ahead by the distance (see
# ContentCache._first_window): at 20 ms, 20 MiB, what the client's one stream brings meanwhile.
STREAM_RATE = 1024 * MiB
# A first read at offset 0 this large is a streaming reader's (the kernel asks 256 KiB for cat and
# cp, 1 MiB for dd bs=1M), which gets that window; head -c 100 or a header read asks 16-32 KiB
# and reads ahead as near the bucket (12 MiB fetched, not up to 36: `head -c 100 *`).
FIRST_READ = 64 * 1024
# A reader streaming through a copy this large hands back its pages between one and two
# LET_GO_LAG behind it, LET_GO_STEP at a time (see ContentCache._let_go).
LET_GO_MIN = 64 * MiB
LET_GO_LAG = 16 * MiB
LET_GO_STEP = 4 * MiB


class _Table(dict):
    """Cached copies by (name, generation), with each name's generations at hand: dropping a
    name is then not a walk through every cached copy (it was, once per upload)."""

    def __init__(self) -> None:
        super().__init__()
        self._generations: dict[str, set[int]] = {}

    def __setitem__(self, key: tuple[str, int], entry: Entry) -> None:
        super().__setitem__(key, entry)
        self._generations.setdefault(key[0], set()).add(key[1])

    def pop(self, key: tuple[str, int], *default):
        if key in self:
            generations = self._generations[key[0]]
            generations.discard(key[1])
            if not generations:
                del self._generations[key[0]]
        return super().pop(key, *default)

    def keys_of(self, name: str) -> list[tuple[str, int]]:
        return [(name, generation) for generation in self._generations.get(name, ())]


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)

class ContentCache(Fetching):
    """Cached object content on local disk. ``cache_size`` bounds the clean bytes held (None:
    no bound); ``read_ahead`` is the largest read-ahead window (a quarter of ``cache_size`` at
    most); ``request_size`` the largest ranged GET a reader waits for, ``ahead_request_size``
    the largest read-ahead GET; ``fetch_workers`` how many run at once."""

    follow_streams_from = LET_GO_MIN

    def __init__(
        self,
        root: str,
        bucket: Bucket,
        block_size: int,
        *,
        cache_size: int | None = None,
        read_ahead: int = 64 * MiB,
        request_size: int = 8 * MiB,
        ahead_request_size: int = 32 * MiB,
        fetch_workers: int = 8,
    ):
        self.root = root
        self.bucket = bucket
        self.block_size = block_size
        self.read_ahead = read_ahead if cache_size is None else min(read_ahead, max(block_size, cache_size // 4))
        self.blocks_per_request = max(1, request_size // block_size)
        # Read-ahead asks for up to half the window at once: a stream then pays the round trip
        # of a new request once per half window, while the other half is still arriving.
        ahead_request = min(ahead_request_size, self.read_ahead // 2)
        self.ahead_blocks_per_request = max(self.blocks_per_request, ahead_request // block_size)
        self._pool = FetchPool(fetch_workers)
        self._reads = {"read_hits": 0, "read_misses": 0}  # guarded by _reads_lock
        self._reads_lock = threading.Lock()
        self._blocks_dir = CacheDir(root).blocks
        self.staging_dir = CacheDir(root).staging
        self._lock = threading.Lock()
        self._entries = _Table()  # guarded by _lock
        self._dirs_made: set[str] = set()
        self._open: collections.OrderedDict[int, Entry] = collections.OrderedDict()  # by id; _lock
        self.space = Space(cache_size, self._evict_entry_locked)  # guarded by _lock
        _private_dir(root)
        # Clean copies from an earlier mount are not trusted (their block map was in memory).
        shutil.rmtree(self._blocks_dir, ignore_errors=True)
        _private_dir(self._blocks_dir)
        _private_dir(self.staging_dir)
        left = os.listdir(self.staging_dir)
        if left:
            log.warning("%d unsaved file(s) from an earlier mount remain in %s", len(left), self.staging_dir)

    # --- entries ------------------------------------------------------------------------

    def _path_for(self, name: str, generation: int) -> str:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self._blocks_dir, digest[:2], f"{digest}-{generation}")

    def _blocks_subdir(self, path: str) -> None:
        """Make the directory ``path`` goes in (once per mount, not once per file)."""
        directory = os.path.dirname(path)
        if directory not in self._dirs_made:
            _private_dir(directory)
            self._dirs_made.add(directory)

    def _new_entry(self, key: tuple[str, int], path: str, size: int, complete: bool = False) -> Entry:
        bs = self.block_size
        initial = min(max(2 * bs, 4 * MiB), self.read_ahead)
        streams = Streams(initial=initial, maximum=self.read_ahead, tolerance=max(bs, MiB), min_run=max(bs, 2 * MiB),
                          first=self._first_window, first_read=FIRST_READ)
        return Entry(key, path, size, bs, streams, complete)

    def _first_window(self) -> int:
        """The read-ahead of a read at offset 0: what one stream brings in the bucket's round
        trip (its fastest small request, at STREAM_RATE), at most half the largest window, so
        the request after it goes out before its bytes are all in; near the bucket (or before
        any request was timed) less than the usual start, which then stands. Bounded by the
        distance: a reader that reads the start of a file and goes elsewhere leaves at most
        that much fetched for nothing."""
        wall, _cpu, timed = getattr(self.bucket, "round_trip", lambda: (0.0, 0.0, 0))()
        return min(self.read_ahead // 2, int(wall * STREAM_RATE)) if timed else 0

    def _pin(self, info: ObjectInfo, first: int = 0, last: int = -1) -> Entry:
        """The entry of ``info``'s generation (made if new), pinned with an open descriptor,
        holding blocks ``first..last`` for a read (see :meth:`_release`)."""
        key = (info.name, info.generation)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                path = self._path_for(info.name, info.generation)
                self._blocks_subdir(path)
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    os.ftruncate(fd, info.size)
                except OSError as exc:
                    os.close(fd)
                    raise no_space(exc) from exc
                entry = self._entries[key] = self._new_entry(key, path, info.size)
                entry.fd = fd
            with entry.lock:
                if entry.fd is None:
                    entry.fd = os.open(entry.path, os.O_RDWR)
                entry.pins += 1
                for block in range(first, last + 1):
                    entry.reading[block] = entry.reading.get(block, 0) + 1
            self._open[id(entry)] = entry
            self._open.move_to_end(id(entry))
            if len(self._open) > MAX_OPEN_FILES:
                self._close_idle_locked()
            return entry

    def _close_idle_locked(self, keep: int | None = None) -> None:
        """Close the descriptors of the least recently used, unpinned entries, until at most
        ``keep`` (default MAX_OPEN_FILES) stay open. Holds _lock."""
        keep = MAX_OPEN_FILES if keep is None else keep
        excess = len(self._open) - keep
        if excess <= 0:
            return
        closing = []  # the oldest unpinned, found without copying the whole list (once per new pin past the bound)
        for key, old in self._open.items():
            with old.lock:
                if old.pins:
                    continue
                closing.append((key, old.fd))
                old.fd = None
            if len(closing) == excess:
                break
        for key, fd in closing:
            del self._open[key]
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        """Close every descriptor held open for reuse (at unmount; a pinned entry's stays with
        its reader). The cache stays usable: an entry opens its file again when next read."""
        with self._lock:
            self._close_idle_locked(keep=0)

    def _unpin(self, entry: Entry) -> None:
        with entry.lock:
            entry.pins -= 1
            if entry.pins or not entry.dropped or entry.fd is None:
                return
            fd, entry.fd = entry.fd, None
        os.close(fd)

    def _release(self, entry: Entry, first: int, last: int) -> None:
        """A read is done with blocks ``first..last``: they are recently used, no longer held,
        and may go if a fetch a reader needed took the cache past its limit meanwhile."""
        blocks = range(first, last + 1)
        with self._lock:
            with entry.lock:
                for block in blocks:
                    left = entry.reading[block] - 1
                    if left:
                        entry.reading[block] = left
                    else:
                        del entry.reading[block]
            if not entry.dropped:  # (set under _lock)
                self.space.used(entry, blocks)
                self.space.trim()
        self._unpin(entry)

    def _forget_locked(self, key: tuple[str, int]) -> Entry:
        """Take an entry out of the table; its descriptor closes once unpinned. Holds _lock."""
        entry = self._entries.pop(key)
        self._open.pop(id(entry), None)
        self.space.forget(entry)
        with entry.lock:
            entry.dropped = True
            fd = entry.fd if entry.pins == 0 else None
            if fd is not None:
                entry.fd = None
        if fd is not None:
            os.close(fd)
        return entry

    def _evict_entry_locked(self, entry: Entry) -> None:
        """Delete a whole cached copy (Space's last resort, or an emptied one). Holds _lock."""
        if self._entries.get(entry.key) is entry:
            self._forget_locked(entry.key)
            _unlink(entry.path)

    def drop(self, name: str) -> None:
        """Forget every cached generation of ``name``."""
        with self._lock:
            for key in self._entries.keys_of(name):
                # Unlinked under the lock: a new entry for the same generation reuses the path.
                _unlink(self._forget_locked(key).path)

    def usage(self) -> dict:
        """Clean bytes held (with reservations of fetches in flight), the limit, and more."""
        with self._lock:
            usage = {"clean_bytes": self.space.held, "limit": self.space.limit, "peak_bytes": self.space.peak,
                     "evicted_bytes": self.space.evicted, "cached_files": len(self._entries)}
        with self._reads_lock:
            usage.update(self._reads)
        return usage

    def _count_read(self, hit: bool) -> None:
        """A read was served from the cache alone (a hit) or waited for the bucket (a miss)."""
        with self._reads_lock:
            self._reads["read_hits" if hit else "read_misses"] += 1

    def staging_bytes(self) -> int:
        """Bytes of unsaved data in staging files (files being written)."""
        return bytes_in(self.staging_dir)

    # --- reads --------------------------------------------------------------------------

    def read(self, info: ObjectInfo, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``info``'s generation (fewer at its end): :meth:`read_into`
        a buffer as long as the bytes there are, so the two cannot drift apart."""
        buf = bytearray(max(0, min(offset + size, info.size) - offset))
        self.read_into(info, offset, memoryview(buf))
        return bytes(buf)

    def read_into(self, info: ObjectInfo, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` with the bytes of ``info``'s generation at ``offset``, fetching missing
        blocks: how many it holds (fewer at the end). The blocks are held and pinned until the
        bytes are in ``buf``.

        Sequential reads start read-ahead of the blocks that follow. Raises the error of a
        failed fetch of a block this read needs (the block stays missing).
        """
        end = min(offset + len(buf), info.size)
        if offset >= end:
            return 0
        first, last = offset // self.block_size, (end - 1) // self.block_size
        entry = self._pin(info, first, last)
        try:
            self._fill(info, entry, offset, end, read_ahead=True)
            if pread_into(entry.fd, buf[:end - offset], offset) != end - offset:
                raise StorageError(f"cached copy of {info.name!r} ended early at {offset}")
            if entry.size >= LET_GO_MIN:
                self._let_go(entry, offset, end)
            return end - offset
        finally:
            self._release(entry, first, last)

    def _let_go(self, entry: Entry, start: int, end: int) -> None:
        """Hand back to the kernel the pages of the copy a streaming reader has gone past.

        The reader of a mounted file has what it read in the kernel's cache of that file (kept
        across opens): the copy's own pages of the same bytes are a second copy in memory, and
        new pages are what a cold read pays most for (on a VM, a page the guest has not used
        lately costs the host a fault; measured here: new pages fill at ~400 MiB/s, reused ones
        at ~5 GiB/s). Between one and two LET_GO_LAG behind a sequential reader, the copy's
        pages are dropped (``POSIX_FADV_DONTNEED``: it starts their writeback and drops those
        written), so the stream's next fetches reuse them. Nothing leaves the cache: a later
        read of those bytes comes from the copy on disk. Only residency changes, so a failure
        is ignored."""
        at = end // LET_GO_STEP * LET_GO_STEP
        with entry.lock:
            stream = entry.streams.sequential_at(start)
            if stream is None or at <= stream.let_go:
                return
            stream.let_go, began = at, stream.start
        # Each call covers a lag's worth before the lag: pages still dirty at the first call
        # that reaches them are written back meanwhile, and the next calls drop them.
        lo, hi = max(began, at - 2 * LET_GO_LAG), at - LET_GO_LAG
        if hi <= lo:
            return
        try:
            os.posix_fadvise(entry.fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            log.debug("could not let go of pages of %s: %s", entry.path, exc)

    # --- writes -------------------------------------------------------------------------

    def new_staging_path(self) -> str:
        return os.path.join(self.staging_dir, uuid.uuid4().hex)

    def write_problem(self, *more_dirs: str) -> str | None:
        """Why a file cannot be written now in the staging directory (or ``more_dirs``), else
        None: a small file is made and removed in each, as a write into the mount would."""
        for directory in (self.staging_dir, *more_dirs):
            path = os.path.join(directory, f".probe-{uuid.uuid4().hex}")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                os.unlink(path)
            except OSError as exc:
                return f"cannot write {directory}: {exc.strerror or exc}"
        return None

    def unwritable(self, exc: OSError) -> OctuefsError | OSError:
        """The error to give for ``exc``, met writing the cache: a full disk stays ENOSPC; any
        other cause (the directory removed, made read-only, ...) means nothing can be written
        into the mount until it is mended, and says so instead of a bare ENOENT or EACCES."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if exc.errno == errno.EFBIG:  # a length the cache's filesystem cannot hold: the call's, not the cache's fault
            return FileTooLarge(f"{exc.strerror} ({exc.filename or self.root})")
        return CacheUnwritable(f"cannot write the cache directory {self.root}: {exc.strerror or exc} "
                               f"({exc.filename or self.root}); nothing can be written into the mount until it can")

    def stage(self, info: ObjectInfo | None, length: int | None = None) -> str:
        """A new private staging file holding the object's content (or nothing for a new file).

        With ``length``, only the first ``length`` bytes are needed (a truncate), so no more is
        fetched. With a bounded cache the copy is made a few blocks at a time, so an object
        larger than the cache passes through it without pushing it past its limit.
        """
        path = self.new_staging_path()
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            want = 0 if info is None else info.size if length is None else min(length, info.size)
            bs, limit = self.block_size, self.space.limit
            step = want if limit is None else bs * max(1, limit // 4 // bs)  # as much as read-ahead may take
            for lo in range(0, want, step or 1):
                hi = min(lo + step, want)
                first, last = lo // bs, (hi - 1) // bs
                entry = self._pin(info, first, last)
                try:
                    self._fill(info, entry, lo, hi)
                    _copy_range(entry.fd, fd, lo, hi - lo)
                finally:
                    self._release(entry, first, last)
        except BaseException as exc:
            os.close(fd)
            os.unlink(path)
            if isinstance(exc, OSError):
                raise no_space(exc) from exc
            raise
        os.close(fd)
        return path

    def adopt(self, info: ObjectInfo, staging_path: str) -> None:
        """Take a fully written staging file as the cached content of ``info`` (just uploaded).

        It becomes clean data and counts against the limit; one larger than the whole cache
        is not kept (the caller deletes it)."""
        self.drop(info.name)
        if self.space.limit is not None and info.size > self.space.limit:
            return
        path = self._path_for(info.name, info.generation)
        self._blocks_subdir(path)
        os.replace(staging_path, path)
        with self._lock:
            key = (info.name, info.generation)
            if key in self._entries:  # a reader raced in between drop and replace
                self._forget_locked(key)
            entry = self._entries[key] = self._new_entry(key, path, info.size, complete=True)
            self.space.add_complete(entry)

    def carry_over(self, old: ObjectInfo, new: ObjectInfo) -> None:
        """Keep cached blocks when a metadata change gave the same content a new generation.

        fake-gcs-server gives an object a new generation on every metadata patch; real GCS does
        not. Either way, same size and hashes mean the same bytes.
        """
        if old.generation == new.generation or old.name != new.name:
            return
        same = old.size == new.size and (old.md5, old.crc32c) == (new.md5, new.crc32c) and old.md5
        if not same:
            return
        with self._lock:
            old_key, new_key = (old.name, old.generation), (new.name, new.generation)
            entry = self._entries.pop(old_key, None)
            if entry is not None and new_key not in self._entries:
                self._entries[new_key] = entry
                entry.key = new_key
            elif entry is not None:
                self._entries[old_key] = entry


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

def pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Fill ``buf`` from ``fd`` at ``offset`` (without the GIL, no bytes object made): how
    many bytes it holds, fewer only at the end of the file."""
    done, size = 0, len(buf)
    while done < size:
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done


def _copy_range(src: int, dst: int, start: int, length: int, chunk: int = 8 * MiB) -> None:
    """Copy bytes ``[start, start + length)`` of descriptor ``src`` to the same place in ``dst``
    (in the kernel if it can)."""
    done, end = start, start + length
    try:
        while done < end:
            n = os.copy_file_range(src, dst, end - done, done, done)
            if n == 0:
                break
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < end:
        data = os.pread(src, min(chunk, end - done), done)
        if not data:
            break
        os.pwrite(dst, data, done)
        done += len(data)
