"""The local disk cache: object content by name + generation, and staging files for writes.

Layout under the cache directory (0700, files 0600):

    blocks/<hh>/<sha256 of name>-<generation>   sparse copies of objects, filled block by block
    staging/<random>                            full copies being written (unsaved data)

Reads fetch only the blocks they touch, with ranged GETs pinned to the generation they started
on, so no read mixes two versions. Sequential readers get read-ahead (see
:mod:`octuefs.readahead`): the next blocks are fetched in the background, several ranges at
once, before they are asked for. All fetches run on one bounded :class:`FetchPool` per cache,
so at most ``fetch_workers`` x ``request_size`` bytes are held in memory, whatever the readers
do. A fetch in flight is recorded per block: a reader of a block being fetched waits for that
fetch only, a failed fetch leaves its blocks missing and its error reaches only the readers
waiting for it (the next reader tries again; after an unreachable bucket, the readers coming
within ``RECENT_FAILURE`` seconds get the same error instead of waiting as long again).

A file opened for writing is copied into a staging file once; after a successful upload the
staging file becomes the cached content of the new generation.

Each cached copy keeps a file descriptor open (``os.pread``/``os.pwrite``, no open per call);
at most ``MAX_OPEN_FILES`` are open at once, the least recently used being closed first. An
entry is *pinned* while a read or a fetch uses its descriptor, and is closed only unpinned.

Locks, in the order they are taken: ``ContentCache._lock`` (the entry table, the open-file
list) before an ``_Entry.lock`` (that entry's block map, fetches in flight, streams, pins and
descriptor). Neither is held across a network request; ``_Entry.lock`` is held only for
bookkeeping and opening or closing the entry's descriptor.
"""

from __future__ import annotations

import collections
import copy
import errno
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid

from .errors import BucketUnreachable, NoSpace, NotFound, StorageError
from .readahead import AHEAD, DEMAND, FetchPool, Streams, Task
from .storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_OPEN_FILES = 256  # cached copies with an open descriptor at once
# A block whose fetch found the bucket unreachable this recently is not asked for again: its
# readers get the same error at once. The kernel retries a failed page read straight away (and a
# read that joined a failed read-ahead tries again): against an unreachable bucket each retry
# would wait --op-timeout more.
RECENT_FAILURE = 2.0  # seconds


class _Fetch:
    """One ranged GET of blocks ``first..last`` of an entry. ``error`` is set before ``done``."""

    __slots__ = ("first", "last", "generation", "ahead", "done", "error", "task")

    def __init__(self, first: int, last: int, generation: int, ahead: bool):
        self.first = first
        self.last = last
        self.generation = generation  # the generation it reads (carry_over may have moved on)
        self.ahead = ahead  # started as read-ahead (nobody was waiting for it)
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.task: Task | None = None


class _Entry:
    """Cached content of one object generation. ``lock`` guards every attribute but ``path``,
    ``size`` and ``streams``' settings."""

    def __init__(self, path: str, size: int, block_size: int, streams: Streams, complete: bool = False):
        self.path = path
        self.size = size
        nblocks = (size + block_size - 1) // block_size
        self.present = bytearray(b"\x01" * nblocks if complete else nblocks)
        self.missing = 0 if complete else nblocks
        self.inflight: dict[int, _Fetch] = {}  # block -> the fetch bringing it
        self.failed: dict[int, tuple[float, _Fetch]] = {}  # block -> (when, the fetch that failed)
        self.streams = streams
        self.fd: int | None = None
        self.pins = 0  # reads and fetches using fd right now
        self.dropped = False  # no longer in the table: close fd once unpinned
        self.lock = threading.Lock()


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _no_space(exc: OSError) -> OSError | NoSpace:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the cache disk is full: {exc}")
    return exc


def _reraise(error: BaseException) -> None:
    """Raise a fetch's error in a reader's thread (a copy: several readers may share it)."""
    try:
        fresh = copy.copy(error)
    except Exception:
        fresh = error
    raise fresh from error


class ContentCache:
    """Cached object content on local disk. ``read_ahead`` is the largest read-ahead window;
    ``request_size`` the largest ranged GET; ``fetch_workers`` how many run at once."""

    def __init__(
        self,
        root: str,
        bucket: Bucket,
        block_size: int,
        *,
        read_ahead: int = 64 * MiB,
        request_size: int = 8 * MiB,
        fetch_workers: int = 8,
    ):
        self.root = root
        self.bucket = bucket
        self.block_size = block_size
        self.read_ahead = read_ahead
        self.blocks_per_request = max(1, request_size // block_size)
        self._pool = FetchPool(fetch_workers)
        self._blocks_dir = os.path.join(root, "blocks")
        self.staging_dir = os.path.join(root, "staging")
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int], _Entry] = {}  # guarded by _lock
        self._open: collections.OrderedDict[int, _Entry] = collections.OrderedDict()  # by id; _lock
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

    def _new_entry(self, path: str, size: int, complete: bool = False) -> _Entry:
        bs = self.block_size
        initial = max(2 * bs, 4 * MiB)
        streams = Streams(initial=initial, maximum=max(self.read_ahead, initial), tolerance=max(bs, MiB),
                          min_run=max(bs, 2 * MiB))
        return _Entry(path, size, bs, streams, complete)

    def _pin(self, info: ObjectInfo) -> _Entry:
        """The entry of ``info``'s generation (made if new), pinned with an open descriptor."""
        key = (info.name, info.generation)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                path = self._path_for(info.name, info.generation)
                _private_dir(os.path.dirname(path))
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
                try:
                    os.ftruncate(fd, info.size)
                except OSError as exc:
                    os.close(fd)
                    raise _no_space(exc) from exc
                entry = self._entries[key] = self._new_entry(path, info.size)
                entry.fd = fd
            with entry.lock:
                if entry.fd is None:
                    entry.fd = os.open(entry.path, os.O_RDWR)
                entry.pins += 1
            self._open[id(entry)] = entry
            self._open.move_to_end(id(entry))
            if len(self._open) > MAX_OPEN_FILES:
                self._close_idle_locked()
            return entry

    def _close_idle_locked(self) -> None:
        """Close the descriptors of the least recently used, unpinned entries. Holds _lock."""
        for key, old in list(self._open.items()):
            if len(self._open) <= MAX_OPEN_FILES:
                return
            with old.lock:
                if old.pins:
                    continue
                fd, old.fd = old.fd, None
            del self._open[key]
            if fd is not None:
                os.close(fd)

    def _unpin(self, entry: _Entry) -> None:
        with entry.lock:
            entry.pins -= 1
            if entry.pins or not entry.dropped or entry.fd is None:
                return
            fd, entry.fd = entry.fd, None
        os.close(fd)

    def _forget_locked(self, key: tuple[str, int]) -> _Entry:
        """Take an entry out of the table; its descriptor closes once unpinned. Holds _lock."""
        entry = self._entries.pop(key)
        self._open.pop(id(entry), None)
        with entry.lock:
            entry.dropped = True
            fd = entry.fd if entry.pins == 0 else None
            if fd is not None:
                entry.fd = None
        if fd is not None:
            os.close(fd)
        return entry

    def drop(self, name: str) -> None:
        """Forget every cached generation of ``name``."""
        with self._lock:
            entries = [self._forget_locked(key) for key in [k for k in self._entries if k[0] == name]]
        for entry in entries:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

    # --- reads --------------------------------------------------------------------------

    def read(self, info: ObjectInfo, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``info``'s generation, fetching missing blocks.

        Sequential reads start read-ahead of the blocks that follow. Raises the error of a
        failed fetch of a block this read needs (the block stays missing).
        """
        end = min(offset + size, info.size)
        if offset >= end:
            return b""
        entry = self._pin(info)
        try:
            self._fill(info, entry, offset, end, read_ahead=True)
            return _pread_all(entry.fd, end - offset, offset)
        finally:
            self._unpin(entry)

    def _fill(self, info: ObjectInfo, entry: _Entry, start: int, end: int, read_ahead: bool = False) -> None:
        """Make bytes ``[start, end)`` present, waiting for their fetches. Entry pinned."""
        bs = self.block_size
        for attempt in (1, 2):
            with entry.lock:
                if entry.missing == 0:
                    return
                waits = self._schedule_locked(info, entry, start // bs, (end - 1) // bs, DEMAND)
                if read_ahead and attempt == 1:
                    ahead = entry.streams.observe(start, end)
                    if ahead is not None and ahead[0] < entry.size:
                        self._schedule_locked(info, entry, ahead[0] // bs, (min(ahead[1], entry.size) - 1) // bs, AHEAD)
            for fetch in waits:
                fetch.done.wait()
            failed = [f for f in waits if f.error is not None]
            if not failed:
                return
            # A failed fetch this read merely joined (a read-ahead, or a read of the generation
            # the content had before carry_over) is not this read's failure: the blocks are
            # missing again, so fetch them once more, for this read.
            own = [f for f in failed if attempt == 2 or not (f.ahead or f.generation != info.generation)]
            if own:
                _reraise(own[0].error)

    def _schedule_locked(self, info: ObjectInfo, entry: _Entry, first: int, last: int, priority: int) -> list[_Fetch]:
        """Fetches bringing blocks ``first..last``: new ones for blocks neither present nor in
        flight (runs of at most ``blocks_per_request``), and those already in flight. Holds
        entry.lock."""
        fetches: list[_Fetch] = []
        run: int | None = None  # first block of the run of blocks to fetch being gathered
        now = time.monotonic()
        for block in range(first, last + 1):
            failed = _recent_failure_locked(entry, block, info.generation, now)
            if failed is not None:
                if run is not None:
                    fetches.append(self._start_locked(info, entry, run, block - 1, priority))
                    run = None
                if priority == DEMAND and failed not in fetches:
                    fetches.append(failed)  # done, with its error: no new request
                continue
            if entry.present[block] or block in entry.inflight:
                if run is not None:
                    fetches.append(self._start_locked(info, entry, run, block - 1, priority))
                    run = None
                fetch = entry.inflight.get(block)
                if fetch is not None and (not fetches or fetches[-1] is not fetch):
                    fetches.append(fetch)
                    if priority == DEMAND and fetch.task is not None:
                        self._pool.boost(fetch.task)
                continue
            if run is None:
                run = block
            if block - run + 1 == self.blocks_per_request:
                fetches.append(self._start_locked(info, entry, run, block, priority))
                run = None
        if run is not None:
            fetches.append(self._start_locked(info, entry, run, last, priority))
        return fetches

    def _start_locked(self, info: ObjectInfo, entry: _Entry, first: int, last: int, priority: int) -> _Fetch:
        fetch = _Fetch(first, last, info.generation, ahead=priority == AHEAD)
        for block in range(first, last + 1):
            entry.inflight[block] = fetch
        entry.pins += 1  # the fetch writes through entry.fd; _run_fetch unpins
        fetch.task = self._pool.submit(lambda: self._run_fetch(info, entry, fetch, priority), priority)
        return fetch

    def _run_fetch(self, info: ObjectInfo, entry: _Entry, fetch: _Fetch, priority: int) -> None:
        """In a pool thread: one ranged GET pinned to the generation, written into the copy."""
        bs = self.block_size
        lo, hi = fetch.first * bs, min((fetch.last + 1) * bs, entry.size)
        error: BaseException | None = None
        try:
            data = self.bucket.read_range(info.name, lo, hi, generation=info.generation)
            if len(data) != hi - lo:
                raise StorageError(f"short read of {info.name!r}: wanted {hi - lo} bytes at {lo}, got {len(data)}")
            try:
                written = os.pwrite(entry.fd, data, lo)
                while written < len(data):
                    written += os.pwrite(entry.fd, memoryview(data)[written:], lo + written)
            except OSError as exc:
                raise _no_space(exc) from exc
        except BaseException as exc:  # handed to the readers waiting for these blocks
            error = exc
        with entry.lock:
            failed_at = time.monotonic()
            for block in range(fetch.first, fetch.last + 1):
                if entry.inflight.get(block) is fetch:
                    del entry.inflight[block]
                if error is None and not entry.present[block]:
                    entry.present[block] = 1
                    entry.missing -= 1
                if isinstance(error, BucketUnreachable):  # asking again at once would wait as long
                    entry.failed[block] = (failed_at, fetch)
                else:
                    entry.failed.pop(block, None)
            fetch.error = error
        fetch.done.set()
        self._unpin(entry)
        if error is not None:
            level = logging.DEBUG if isinstance(error, NotFound) or priority == DEMAND else logging.INFO
            log.log(level, "fetch of %r bytes %d-%d failed, left missing: %s", info.name, lo, hi, error)

    # --- writes -------------------------------------------------------------------------

    def new_staging_path(self) -> str:
        return os.path.join(self.staging_dir, uuid.uuid4().hex)

    def stage(self, info: ObjectInfo | None, length: int | None = None) -> str:
        """A new private staging file holding the object's content (or nothing for a new file).

        With ``length``, only the first ``length`` bytes are needed (a truncate), so no more is
        fetched.
        """
        path = self.new_staging_path()
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            want = 0 if info is None else info.size if length is None else min(length, info.size)
            if want > 0:
                entry = self._pin(info)
                try:
                    self._fill(info, entry, 0, want)
                    _copy_range(entry.fd, fd, want)
                finally:
                    self._unpin(entry)
        except BaseException as exc:
            os.close(fd)
            os.unlink(path)
            if isinstance(exc, OSError):
                raise _no_space(exc) from exc
            raise
        os.close(fd)
        return path

    def adopt(self, info: ObjectInfo, staging_path: str) -> None:
        """Take a fully written staging file as the cached content of ``info`` (just uploaded)."""
        self.drop(info.name)
        path = self._path_for(info.name, info.generation)
        _private_dir(os.path.dirname(path))
        os.replace(staging_path, path)
        with self._lock:
            key = (info.name, info.generation)
            if key in self._entries:  # a reader raced in between drop and replace
                self._forget_locked(key)
            self._entries[key] = self._new_entry(path, info.size, complete=True)

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
            entry = self._entries.pop((old.name, old.generation), None)
            if entry is not None and (new.name, new.generation) not in self._entries:
                self._entries[(new.name, new.generation)] = entry
            elif entry is not None:
                self._entries[(old.name, old.generation)] = entry


def _recent_failure_locked(entry: _Entry, block: int, generation: int, now: float) -> _Fetch | None:
    """The fetch of ``block`` that found the bucket unreachable less than RECENT_FAILURE seconds
    ago, if the block is still missing and not being fetched again. Holds entry.lock."""
    failed = entry.failed.get(block)
    if failed is None:
        return None
    when, fetch = failed
    if now - when >= RECENT_FAILURE or fetch.generation != generation:
        del entry.failed[block]
        return None
    if entry.present[block] or block in entry.inflight:
        return None
    return fetch


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) == size:
        return data
    parts = [data]  # a single pread stops short of 2 GiB
    done = len(data)
    while done < size:
        more = os.pread(fd, size - done, offset + done)
        if not more:
            raise StorageError(f"cached copy ended early at {offset + done}")
        parts.append(more)
        done += len(more)
    return b"".join(parts)


def _copy_range(src: int, dst: int, length: int, chunk: int = 8 * MiB) -> None:
    """Copy the first ``length`` bytes of descriptor ``src`` into ``dst`` (in the kernel if it can)."""
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src, dst, length - done, done, done)
            if n == 0:
                break
            done += n
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while done < length:
        data = os.pread(src, min(chunk, length - done), done)
        if not data:
            break
        os.pwrite(dst, data, done)
        done += len(data)
