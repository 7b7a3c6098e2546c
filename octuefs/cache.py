"""The local disk cache: object content by name + generation, and staging files for writes.

Layout under the cache directory (0700, files 0600):

    blocks/<hh>/<sha256 of name>-<generation>   sparse copies of objects, filled block by block
    staging/<random>                            full copies being written (unsaved data)

Reads fetch only the blocks they touch (ranged GETs pinned to the generation they started on,
so no read mixes two versions). A file opened for writing is copied into a staging file once;
after a successful upload the staging file becomes the cached content of the new generation.

Lock order: ``_lock`` (the entry table) before an entry's ``lock``. Only an entry's lock is
held across network reads, so a slow read of one object never blocks another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid

from .errors import NoSpace
from .storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)


class _Entry:
    """Cached content of one object generation. ``lock`` guards ``present`` and the file."""

    def __init__(self, path: str, size: int, block_size: int, complete: bool = False):
        self.path = path
        self.size = size
        nblocks = (size + block_size - 1) // block_size
        self.present = bytearray(b"\x01" * nblocks if complete else nblocks)
        self.lock = threading.Lock()


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def _no_space(exc: OSError) -> OSError | NoSpace:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"the cache disk is full: {exc}")
    return exc


class ContentCache:
    def __init__(self, root: str, bucket: Bucket, block_size: int):
        self.root = root
        self.bucket = bucket
        self.block_size = block_size
        self._blocks_dir = os.path.join(root, "blocks")
        self.staging_dir = os.path.join(root, "staging")
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int], _Entry] = {}  # guarded by _lock
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

    def _entry(self, info: ObjectInfo) -> _Entry:
        key = (info.name, info.generation)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                path = self._path_for(info.name, info.generation)
                _private_dir(os.path.dirname(path))
                fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
                try:
                    os.ftruncate(fd, info.size)
                finally:
                    os.close(fd)
                entry = self._entries[key] = _Entry(path, info.size, self.block_size)
            return entry

    def drop(self, name: str) -> None:
        """Forget every cached generation of ``name``."""
        with self._lock:
            doomed = [key for key in self._entries if key[0] == name]
            entries = [self._entries.pop(key) for key in doomed]
        for entry in entries:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

    # --- reads --------------------------------------------------------------------------

    def read(self, info: ObjectInfo, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``info``'s generation, fetching missing blocks."""
        end = min(offset + size, info.size)
        if offset >= end:
            return b""
        entry = self._entry(info)
        with entry.lock:
            self._fill_locked(info, entry, offset, end)
            with open(entry.path, "rb") as f:
                f.seek(offset)
                return f.read(end - offset)

    def _fill_locked(self, info: ObjectInfo, entry: _Entry, start: int, end: int) -> None:
        bs = self.block_size
        first, last = start // bs, (end - 1) // bs
        block = first
        while block <= last:
            if entry.present[block]:
                block += 1
                continue
            run_end = block
            while run_end + 1 <= last and not entry.present[run_end + 1]:
                run_end += 1
            lo, hi = block * bs, min((run_end + 1) * bs, info.size)
            data = self.bucket.read_range(info.name, lo, hi, generation=info.generation)
            if len(data) != hi - lo:
                raise OSError(f"short read of {info.name!r}: wanted {hi - lo} bytes, got {len(data)}")
            try:
                with open(entry.path, "r+b") as f:
                    f.seek(lo)
                    f.write(data)
            except OSError as exc:
                raise _no_space(exc) from exc
            for b in range(block, run_end + 1):
                entry.present[b] = 1
            block = run_end + 1

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
        os.close(fd)
        if info is None or info.size == 0:
            return path
        want = info.size if length is None else min(length, info.size)
        try:
            if want > 0:
                entry = self._entry(info)
                with entry.lock:
                    self._fill_locked(info, entry, 0, want)
                    with open(entry.path, "rb") as src, open(path, "r+b") as dst:
                        _copy_range(src, dst, want)
        except BaseException as exc:
            os.unlink(path)
            if isinstance(exc, OSError):
                raise _no_space(exc) from exc
            raise
        return path

    def adopt(self, info: ObjectInfo, staging_path: str) -> None:
        """Take a fully written staging file as the cached content of ``info`` (just uploaded)."""
        self.drop(info.name)
        path = self._path_for(info.name, info.generation)
        _private_dir(os.path.dirname(path))
        os.replace(staging_path, path)
        with self._lock:
            self._entries[(info.name, info.generation)] = _Entry(path, info.size, self.block_size, complete=True)

    def carry_over(self, old: ObjectInfo, new: ObjectInfo) -> None:
        """Keep cached blocks when a metadata change gave the same content a new generation.

        fake-gcs-server gives an object a new generation on every metadata patch; real GCS does
        not. Either way, same size and hashes mean the same bytes.
        """
        if old.generation == new.generation or old.name != new.name:
            return
        same = old.size == new.size and (old.md5, old.crc32c) == (new.md5, new.crc32c) and old.md5
        with self._lock:
            entry = self._entries.pop((old.name, old.generation), None)
            if entry is None:
                return
            if not same:
                self._entries[(old.name, old.generation)] = entry
                return
            self._entries[(new.name, new.generation)] = entry


def _copy_range(src, dst, length: int, chunk: int = 1024 * 1024) -> None:
    remaining = length
    while remaining > 0:
        data = src.read(min(chunk, remaining))
        if not data:
            break
        dst.write(data)
        remaining -= len(data)
