"""A directory's extended attributes: its dataset's metadata, kept in ``DIR/.octue`` as the SDK keeps it.

``getfattr -d DIR`` shows ``user.octue.id``, ``.name``, ``.tags``, ``.tags.NAME`` and ``.labels``
of the record in the object ``DIR/.octue`` (:mod:`octuefs.octue.dataset_record` is its codec and its
xattr form); a directory without one has none (ENODATA), and so has one whose ``.octue`` is not a
dataset record (logged once per version).

Reads: ``DIR/.octue`` is looked up as any file is (its directory's listing, or a stat, under
``--list-ttl``/``--stat-ttl``/``--negative-ttl``), and its content read through the block cache,
which keeps it by generation; the decoded record is memoised by (name, generation). So
``getfattr -d`` over many unchanged directories asks nothing more than their listings, and a
record changed elsewhere shows once its directory's listing (or stat) is refreshed, as a file's
metadata does. A ``.octue`` written through this mount and not yet uploaded is read as the mount
shows it.

Writes are made **at once**, not through the write-back journal: ``setfattr`` on a directory
returns once the new ``DIR/.octue`` is in the bucket (or fails and changes nothing). The record
is one small object rewritten whole; journaling it would need a merge of JSON records against a
change made elsewhere, where writing at once needs only a precondition. Each write is one upload
of the SDK's exact bytes for a new record (``{"dataset": {id, name, tags, labels, path}}``,
``text/plain``, no custom metadata); a rewrite replaces only the changed field of the whole
object stored (:func:`~octuefs.octue.dataset_record.rewrite_dataset_record`, which
:class:`octuefs.Dataset` uses too: unknown keys and malformed fields kept; a malformed id, or a
tag merged into malformed tags, EINVAL) and keeps the object's custom metadata; each with
``ifGenerationMatch`` (and ``ifMetagenerationMatch``) of the record it changed (0 when there was none: a new
dataset gets a fresh id and its directory's name, and only in a directory the bucket still
has: ENOENT for one deleted elsewhere). If the record changed elsewhere meanwhile, the
precondition fails: the record is read again from the bucket and the one change re-applied to it,
up to :data:`ATTEMPTS` times; then the call fails (EIO, a WARNING saying so) and nothing of ours
is written: the other writer's change is never lost. A ``.octue`` with unsaved changes through
this mount is uploaded first (its data open for writing: EBUSY). Setting ``user.octue.id`` of a
directory with no record makes one with that id (``cp -a`` of a dataset's directory keeps it, as a
copied file keeps its own); otherwise the id is read-only. GCS's pace of one change of an
object a second is kept (``Uploader.wait_pace``).

Lock: ``_changing`` (one change of a record at a time in this mount), then nothing else is held
during a request; ``_lock`` guards the memo alone.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Iterator

import cachetools

from octuefs.cache.metacache import DIR
from octuefs.errors import (
    Busy,
    Conflict,
    FileNotFound,
    InvalidArgument,
    InvalidMetadata,
    NoSuchAttribute,
    NotFound,
    PreconditionFailed,
    ReadOnlyAttribute,
    StaleFile,
)
from octuefs.fs.files import MTIME_KEY
from octuefs.fs.lookups import Lookups
from octuefs.fs.parts import MountParts
from octuefs.octue import dataset_record as records
from octuefs.octue.dataset_record import RECORD_CONTENT_TYPE, RECORD_NAME, DatasetRecord
from octuefs.octue.metadata import validate_id
from octuefs.storage.base import ObjectInfo

log = logging.getLogger(__name__)

ATTEMPTS = 5  # a record changed elsewhere this often while a setfattr re-applied its change: EIO
MEMO_KEPT = 4096  # decoded records kept, by (object name, generation)
# A record is a few hundred bytes (more with a `files` list); a larger DIR/.octue is some other
# file of that name, and is not read whole into memory by every getfattr of its directory.
MAX_RECORD_BYTES = 16 << 20
_NOT_A_RECORD = object()
LOCAL_WARNING_EVERY = 60.0  # s: a local .octue that is no record, closed, is said at WARNING this often


class DatasetXattrs:
    def __init__(self, parts: MountParts, lookups: Lookups, changing):
        self.bucket, self.ns, self.metacache, self.cache = parts.bucket, parts.ns, parts.metacache, parts.cache
        self.uploader, self.files = parts.uploader, parts.files
        self.lookups = lookups
        self._changing = changing  # the XattrSurface's per-object locks
        self._lock = threading.Lock()
        self._memo: cachetools.LRUCache = cachetools.LRUCache(MEMO_KEPT)  # (name, generation) -> record
        self._warned: cachetools.LRUCache = cachetools.LRUCache(MEMO_KEPT)  # local record name -> when said
        self._watchers: list[tuple[str, set[str]]] = []  # directory renames under way: (prefix, records written)

    # --- directory renames ----------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, prefix: str) -> Iterator[set[str]]:
        """While a directory rename copies ``prefix``: the set of record objects under it that a
        setfattr of this mount writes meanwhile (the rename copied their old version)."""
        watcher = (prefix, set())
        with self._lock:
            self._watchers.append(watcher)
        try:
            yield watcher[1]
        finally:
            with self._lock:
                self._watchers.remove(watcher)

    @contextlib.contextmanager
    def holding(self, record_names, timeout: float) -> Iterator[None]:
        """Hold the change locks of ``record_names`` (in order, so two renames never deadlock):
        no setfattr of those directories runs meanwhile, and one under way is finished first. One
        not had within ``timeout`` (a setfattr waiting for a file this rename holds still) is
        left, with a WARNING: the rename then re-copies a record whose delete fails instead."""
        with contextlib.ExitStack() as stack:
            for name in sorted(set(record_names)):
                if not stack.enter_context(self._changing.hold(name, timeout=timeout)):
                    log.warning("a directory rename could not hold gs://%s/%s still (a setfattr of its directory "
                                "takes long); a change made to it meanwhile is copied after it", self.bucket.name,
                                name)
            yield

    # --- where ----------------------------------------------------------------------------

    def _where(self, path: str) -> tuple[str, str, str]:
        """``(record path in the mount, record object name, the dataset's gs:// path)``."""
        directory = self.ns.object_name(path)  # "" at the root of a bucket mounted whole
        record_name = f"{directory}/{RECORD_NAME}" if directory else RECORD_NAME
        cloud = f"gs://{self.bucket.name}" + (f"/{directory}" if directory else "")
        return path.rstrip("/") + "/" + RECORD_NAME, record_name, cloud

    def _default_name(self, cloud: str) -> str:
        """The name the SDK gives a dataset whose record names none: its directory's (the bucket's)."""
        return posixpath.basename(cloud[len("gs://"):]) or cloud[len("gs://"):]

    # --- reads ----------------------------------------------------------------------------

    def _record(self, path: str) -> tuple[DatasetRecord | None, str]:
        """The directory's record (None: it has none, or none that reads) and its default name."""
        record_path, record_name, cloud = self._where(path)
        found = self._read(record_path, record_name)
        return (found if isinstance(found, DatasetRecord) else None), self._default_name(cloud)

    def _read(self, record_path: str, record_name: str):
        """The record as the mount shows it: a DatasetRecord, None (no ``.octue``) or _NOT_A_RECORD."""
        name, entry, node = self.lookups.resolve(record_path)
        if node is not None and node.unsaved:  # written here, not in the bucket yet: the local version
            if node.size > MAX_RECORD_BYTES:
                return self._too_large(record_name, node.size, None, local=node)
            return self._decode(record_name, self._read_local(name, node), None, local=node)
        if node is not None:  # open here, clean: its handles keep their version, the record may be newer
            entry = self.lookups.lookup(record_name)
        if not isinstance(entry, ObjectInfo) or entry.is_dir_marker:
            return None
        key = (record_name, entry.generation)
        with self._lock:
            known = self._memo.get(key)
        if known is not None:
            return known
        if entry.size > MAX_RECORD_BYTES:
            found = self._too_large(record_name, entry.size, entry.generation)
            with self._lock:
                self._memo[key] = found
            return found
        try:
            data = self.cache.read(entry, 0, entry.size)  # kept on disk by generation
        except (NotFound, StaleFile):  # replaced since it was listed: what is there now
            self.metacache.forget(record_name)
            current = self._stat(record_name)
            if current is None:
                return None
            if current.size > MAX_RECORD_BYTES:
                return self._too_large(record_name, current.size, current.generation)
            entry, data = current, self.cache.read(current, 0, current.size)
            key = (record_name, current.generation)
        found = self._decode(record_name, data, entry.generation)
        with self._lock:
            self._memo[key] = found
        return found

    def _read_local(self, name: str, node) -> bytes:
        fh = self.files.open(name, node.base, writable=False, seen=node)
        try:
            return self.files.read(fh, 1 << 30, 0)
        finally:
            self.files.release(fh)

    def _quiet(self, record_name: str, local) -> bool:
        """Whether a local ``.octue`` that is no record is said at DEBUG, not WARNING: while it is
        open for writing (half written is expected; every getfattr of its directory reads it), and
        for a closed one after the first WARNING a minute. (One in the bucket is memoised by
        generation, so it is said once per version.)"""
        if local is None:
            return False
        if local.dirty:
            return True
        now = time.monotonic()
        with self._lock:
            last = self._warned.get(record_name)
            if last is not None and now - last < LOCAL_WARNING_EVERY:
                return True
            self._warned[record_name] = now
        return False

    def _too_large(self, record_name: str, size: int, generation: int | None, local=None):
        level = logging.DEBUG if self._quiet(record_name, local) else logging.WARNING
        log.log(level, "gs://%s/%s (generation %s) is %d bytes, too large to be a dataset record (at most %d), so "
                       "its directory shows no dataset attributes", self.bucket.name, record_name,
                generation or "not uploaded yet", size, MAX_RECORD_BYTES)
        return _NOT_A_RECORD

    def _decode(self, record_name: str, data: bytes, generation: int | None, local=None):
        try:
            return records.decode_dataset_record(data)
        except ValueError as exc:
            level = logging.DEBUG if self._quiet(record_name, local) else logging.WARNING
            log.log(level, "gs://%s/%s (generation %s) is not a dataset record, so its directory shows no dataset "
                           "attributes: %s", self.bucket.name, record_name, generation or "not uploaded yet", exc)
            return _NOT_A_RECORD

    def _stat(self, record_name: str) -> ObjectInfo | None:
        try:
            info = self.bucket.stat(record_name)
        except NotFound:
            return None
        return None if info.is_dir_marker else info

    def get(self, path: str, name: str) -> bytes:
        record, default_name = self._record(path)
        if record is None:
            raise NoSuchAttribute(name)
        return records.get_dataset_xattr(record, name, default_name)

    def list(self, path: str) -> list[str]:
        record, _ = self._record(path)
        return [] if record is None else records.list_dataset_xattrs(record)

    # --- writes ---------------------------------------------------------------------------

    def change(self, path: str, name: str, value: bytes | None, flags: int) -> None:
        """``setxattr`` (``value``) or ``removexattr`` (``value`` None) of ``name`` on directory ``path``."""
        record_path, record_name, cloud = self._where(path)
        default_name = self._default_name(cloud)

        def apply(record: DatasetRecord, exists: bool) -> DatasetRecord:
            if value is None:
                return records.remove_dataset_xattr(record, name)
            return records.set_dataset_xattr(record, name, value, flags, default_name, exists=exists)

        with self._changing.hold(record_name):
            self._settle_local(record_path, record_name)
            info, raw, record = self._current(record_name, fresh=False)
            for attempt in range(1, ATTEMPTS + 1):
                if value is None and record is None:
                    raise NoSuchAttribute(name)
                if record is None:
                    self._check_directory_exists(path)
                base = record or DatasetRecord(id=self._new_id(name, value), name=default_name)
                new = apply(base, exists=record is not None)
                try:
                    body = records.rewrite_dataset_record(
                        record, new.id or str(uuid.uuid4()), new.name or default_name, new.tags, new.labels, cloud,
                        replacing=records.fields_replaced_by(name), default_name=default_name)
                except InvalidMetadata as exc:
                    log.warning("%s: %s not changed: gs://%s/%s: %s", path, name, self.bucket.name, record_name,
                                exc)
                    raise
                if body == raw:
                    return  # the record already says so: nothing to send
                generation = info.generation if info is not None else 0
                try:
                    self._write(record_name, body, generation, info)
                    return
                except PreconditionFailed:
                    log.info("%s: gs://%s/%s changed in the bucket meanwhile (this mount read %s); reading it "
                             "again to re-apply %s (attempt %d)", path, self.bucket.name, record_name,
                             f"generation {generation}" if generation else "none", name, attempt)
                    self.metacache.forget(record_name)
                    info, raw, record = self._current(record_name, fresh=True)
        log.warning("%s: gs://%s/%s kept changing in the bucket while %s was re-applied (%d attempts): not "
                    "changed; the other writers' changes are kept", path, self.bucket.name, record_name, name,
                    ATTEMPTS)
        raise Conflict(f"{record_name} kept changing elsewhere; {name} was not changed")

    def _check_directory_exists(self, path: str) -> None:
        """A new record is made only in a directory the bucket still has (one object under it, or a
        file written here and not uploaded yet): the listing this mount keeps may be older than a
        delete made elsewhere, and a record written there would bring the dataset back, with a new
        id. (The root of the mount always exists.)"""
        directory = self.ns.object_name(path)
        if not directory:
            return
        prefix = directory + "/"
        if self.bucket.list_page(prefix, None, max_results=1).objects or self.lookups.new_nodes_under(prefix):
            return
        self.metacache.forget(directory)
        log.info("%s: gs://%s/%s holds nothing any more (removed elsewhere?): no dataset record made there",
                 path, self.bucket.name, prefix)
        raise FileNotFound(f"{path}: the directory is gone from the bucket")

    @staticmethod
    def _new_id(name: str, value: bytes | None) -> str:
        """The id of a dataset made by this change: the one given, when the change sets the id of a
        directory that has no record yet (``cp -a`` of a dataset's directory keeps its id, as a
        file being copied does), else a fresh one."""
        if name == records.DATASET_ID_XATTR and value is not None:
            try:
                return validate_id(bytes(value).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ReadOnlyAttribute(f"{name} is read-only: a directory without a record takes only a UUID "
                                        f"(got {bytes(value)!r:.60})") from None
        return str(uuid.uuid4())

    def _settle_local(self, record_path: str, record_name: str) -> None:
        """A ``.octue`` changed through this mount goes up first; one open with unsaved data: EBUSY."""
        try:
            _, _, node = self.lookups.resolve(record_path)
        except FileNotFound:
            return
        if node is None or not node.unsaved:
            return
        if node.dirty and node.opens:
            raise Busy(f"{record_name} is open for writing through this mount with unsaved data; close it first")
        try:
            self.files.settle(node)  # its upload, waited for (ETIMEDOUT if the bucket does not answer)
        except Conflict as exc:  # it went beside (changed elsewhere meanwhile): safe there
            log.warning("%s; the directory's change applies to the record the bucket holds", exc)

    def _current(self, record_name: str, fresh: bool) -> tuple[ObjectInfo | None, bytes | None, DatasetRecord | None]:
        """The record a change applies to: ``(its object, its bytes, the record)``; Nones where there
        is none. ``fresh``: asked of the bucket, not the caches (after a precondition failed)."""
        if fresh:
            info = self._stat(record_name)
        else:
            entry = self.lookups.lookup(record_name)
            if entry is DIR:  # a record beside it would make a file and a directory of one name
                raise InvalidArgument(f"gs://{self.bucket.name}/{record_name} is a directory, so the directory "
                                      "holding it cannot be a dataset; move it away first")
            info = entry if isinstance(entry, ObjectInfo) and not entry.is_dir_marker else None
        if info is None:
            return None, None, None
        if info.size > MAX_RECORD_BYTES:
            raise InvalidArgument(f"gs://{self.bucket.name}/{record_name} is {info.size} bytes, too large to be "
                                  "a dataset record: it is not overwritten; move it away to make the directory a dataset")
        try:
            data = self.cache.read(info, 0, info.size)
        except (NotFound, StaleFile):  # replaced since: the precondition fails, and it is read again
            return info, None, self._memo_get(record_name, info) or DatasetRecord()
        found = self._decode(record_name, data, info.generation)
        if found is _NOT_A_RECORD:
            raise InvalidArgument(f"gs://{self.bucket.name}/{record_name} is not a dataset record (the SDK's "
                                  "JSON): it is not overwritten; move it away to make the directory a dataset")
        with self._lock:
            self._memo[(record_name, info.generation)] = found
        return info, data, found

    def _memo_get(self, record_name: str, info: ObjectInfo):
        with self._lock:
            found = self._memo.get((record_name, info.generation))
        return found if isinstance(found, DatasetRecord) else None

    def _write(self, record_name: str, body: bytes, generation: int, replaced: ObjectInfo | None) -> None:
        """Upload ``body`` over version ``generation`` (0: none). The custom metadata and content
        type of the object it replaces are kept (another client's keys are never dropped), and
        its metageneration is a precondition too: on GCS a metadata change elsewhere keeps the
        generation."""
        self.uploader.wait_pace(record_name)  # GCS's pace: one change of an object a second
        metadata = dict(replaced.metadata) if replaced is not None else {}
        metadata.pop(MTIME_KEY, None)  # new content: its time is the upload's, as for a file written here
        content_type = (replaced.content_type if replaced is not None else None) or RECORD_CONTENT_TYPE
        landed = self.bucket.upload_bytes(
            record_name, body, metadata, if_generation_match=generation, content_type=content_type,
            if_metageneration_match=replaced.metageneration if replaced is not None and generation else None)
        with self._lock:
            self._memo[(record_name, landed.generation)] = records.decode_dataset_record(body)
            for prefix, written in self._watchers:
                if record_name.startswith(prefix):
                    written.add(record_name)
        log.info("wrote gs://%s/%s (generation %d)", self.bucket.name, record_name, landed.generation)


__all__ = ["DatasetXattrs", "ATTEMPTS"]
