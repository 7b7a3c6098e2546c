"""Write-back: a journal of closed files waiting to be uploaded, and the workers that upload them.

On disk, under the cache directory (0700, files 0600):

    pending/<id>          the file's content as it was when it was closed, with its journal
                          record (what to do with it: object, precondition, metadata) in the
                          extended attribute ``user.octuefs.upload.<id>``; made durable with
                          one fsync of the file, then renamed in, then one of the directory
    journal/<id>.json     the record instead, where the cache's filesystem cannot hold it as
                          an attribute (no user xattrs, or a record too large for one):
                          written after the data is durable (temp file, fsync, rename, fsync
                          of the directory)
    conflicts.jsonl       one line per conflict: which object, which versions, where ours went
    conflicts.settled     one JSON string a line: a conflict copy whose conflict has ended (a
                          newer version landed, the file was removed or renamed here); read by
                          user.octuefs.state at the next mount

A record travels with its content: a file in ``pending/`` always has its record, so a crash
at any moment leaves either nothing (the close failed, and said so) or both. That costs a
close two fsyncs, where separate record files cost four.

Closing a changed file seals its content into ``pending/`` and journals it, then returns:
uploads run in the background, several at once, and retry transient failures with
exponential backoff for as long as it takes. A daemon that dies (``kill -9``, power loss)
leaves the journal, and the next mount with the same cache directory finishes the uploads.

Every upload carries a generation precondition. Entries for one object run one at a time and
in order: a newer entry either replaces a queued older one (its content is newer) or waits for
the running one and takes the generation it produces. When the object changed or vanished in
the bucket meanwhile, nothing is overwritten: our version goes up beside it under a marked
name (``data.octuefs-conflict-20261125T101500Z-1a2b3c.csv``), a warning names both versions,
and ``octuefs status`` lists it.

Waiting for an upload: ``fsync`` waits up to ``--fsync-timeout``; a rename or unlink that must
let a file's upload finish first waits while uploads are moving (reading data to send, or
landing) and gives up with :class:`~octuefs.errors.UploadStillPending` once none has moved for
its ``idle`` limit (``--op-timeout``): the bucket is not answering, and a FUSE call must not
hang on it. When an upload lands, uploads that were waiting to retry for want of the bucket are
tried again at once: it answers again.

Lock: ``_cond`` (a Condition) guards ``_entries`` and every Entry's mutable state. No network
I/O is done while holding it. Journaling is (an entry's precondition and chaining depend on
what else is queued): a close's two fsyncs, whose data a large file flushed beforehand.
``_moved_at`` (a float, written whole) is read without it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from octuefs.cache.space import bytes_in
from octuefs.durable import fsync_dir, fsync_path
from octuefs.errors import (
    BucketNotFound,
    Conflict,
    NotFound,
    OctuefsError,
    PermissionDenied,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
    TransientError,
    UploadFailed,
    UploadStillPending,
)
from octuefs.octue.dataset_record import RECORD_NAME
from octuefs.octue.metadata import TAGS_KEY, check_size_limits, merge_tags
from octuefs.storage.base import Bucket, ChecksumMismatch, ObjectInfo
from octuefs.storage.retry import Fingerprint, file_fingerprint

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, CONFLICT = "queued", "running", "done", "conflict"
WITHHELD = "withheld"  # held back while a delete or rename decides whether it is still wanted
BURST_QUIET = 0.05  # seconds without a close that end a burst of them
BURST_HOLD = 2.0  # seconds a small file's upload waits at most for a burst of closes to end
BURST_MAX_BYTES = 8 * 1024 * 1024  # larger files are never held: their uploads are not CPU per file
# Small files' uploads (one request each, the content in memory) may run SMALL_IN_FLIGHT at once,
# beyond ``workers`` (which bounds uploads of any size): at a distance one upload is one round
# trip, so N small files take N x RTT / in-flight. 32 x 1 MiB bounds their memory to 32 MiB.
SMALL_UPLOAD_MAX = 1024 * 1024
SMALL_IN_FLIGHT = 32
# The burst hold is for uploads that compete with closes for the CPU. When the bucket is far
# away, a small upload is mostly a wait for its answer. The bucket times its small requests
# (``round_trip()``); once FAR_SAMPLES were timed and the fastest took FAR_RATIO times the CPU a
# typical one used, and FAR_WALL seconds at least, nothing is held any more (the closes keep the
# CPU, the round trips overlap them) and small uploads run SMALL_IN_FLIGHT at once. Looked at
# again every FAR_RECHECK seconds at most.
FAR_SAMPLES = 3
FAR_RATIO = 4.0
FAR_WALL = 0.005
FAR_RECHECK = 0.5


@dataclasses.dataclass(eq=False)
class Entry:
    """One closed version of one object, waiting to go up. Mutable fields: under Uploader._cond."""

    id: str
    name: str
    base_generation: int | None  # precondition; None while waiting for ``after``; BASE_UNKNOWN
    after: str | None  # the entry for the same object that must finish first
    metadata: dict[str, str]
    content_type: str | None
    size: int
    created: float
    # Journaled too (absent from records written before they existed: the defaults).
    bucket: str | None = None  # the bucket it goes to; None: a record from before buckets were noted
    seq: int = -1  # queueing order within the journal (ids start with the wall clock, which may step back)
    base_metageneration: int | None = None  # the metadata version replaced (a change elsewhere moves it)
    base_metadata: dict[str, str] | None = None  # the custom metadata replaced, to merge a change made elsewhere
    # Versions of this object this mount sent whose answers never came (a timeout, a reset): any
    # may be in the bucket. ``{"md5", "crc32c", "size", "metadata"}`` (a digest of the metadata).
    tried: list[dict] = dataclasses.field(default_factory=list)
    # Where it goes beside the object after a conflict, and its new Octue id: chosen once, and
    # journaled before that upload, so a retry or a crash reuses them (one copy, reported).
    conflict_name: str | None = None
    conflict_id: str | None = None
    replaces: str | None = None  # the queued entry this newer version superseded (dropped at once)
    state: str = QUEUED
    attempts: int = 0
    last_error: str | None = None
    next_try: float = 0.0
    result: ObjectInfo | None = None
    waits_for_bucket: bool = False  # its last attempt failed for want of the bucket (transient)
    failed: str | None = None  # its last attempt failed in a way retrying alone will not mend (403, 400)
    fingerprint: Fingerprint | None = None  # of its sealed content (which never changes), once read
    hold_until: float = 0.0  # (monotonic) not started before this while closes keep coming (a burst)
    # A metadata-only change (a setfattr of a saved file): one PATCH from ``base_metadata`` to
    # ``metadata``, no content (no data file: its record is in journal/<id>.json).
    patch: bool = False
    # The object the patch applies to, as the mount showed it (``object_fields``): a mount that
    # restarts shows the file as it was, changed, before the patch lands.
    base_object: dict | None = None
    # Not an upload any more: only a check of ``conflict_name``, where an attempt of this version
    # may have landed beside the object (its answer lost) before the entry was dropped (its file
    # removed or renamed over) or superseded by a newer close. The check stats that copy and, if
    # it is there and exactly this version, reports it as a conflict; it never deletes it (it may
    # be the only copy of this version). Its queue key is the copy's name, not the object's: it
    # neither blocks nor chains the object's uploads. (:meth:`Uploader._run_check`)
    check_copy: bool = False
    done: threading.Event = dataclasses.field(default_factory=threading.Event)

    def record(self) -> dict:
        return {k: getattr(self, k) for k in RECORD_FIELDS}

    @property
    def key(self) -> str:
        """The name its queue slot is kept under: the object's, or a copy check's copy."""
        return self.conflict_name if self.check_copy and self.conflict_name else self.name


RECORD_FIELDS = ("id", "name", "base_generation", "after", "metadata", "content_type", "size", "created",
                 "bucket", "seq", "base_metageneration", "base_metadata", "tried", "conflict_name", "conflict_id",
                 "replaces", "patch", "base_object", "check_copy")
# The version an entry replaces is not known (its record was set aside after a crash): the entry
# goes up only if the bucket already holds it, else beside the object as a conflict copy.
BASE_UNKNOWN = -1
PERMANENT_RETRY = 300.0  # seconds between retries of an upload that failed for good (403, 400)
# GCS takes about one change of an object per second (more are answered 429): a metadata patch
# waits this long after the last change this mount made to its object, and a setfattr's patch
# waits this long for more changes of the same object to join it (a script setting five
# attributes in a row sends one patch). Uploader.patch_pace; MountConfig.patch_pace.
PATCH_PACE = 1.0
# How long a request this mount gave up on (its answer lost) may still land: the client's request
# timeout is 60 s, so three times that. See LateLandings.
LATE_WINDOW = 180.0
LATE_SWEEP_EVERY = 5.0


def version_key(fp: Fingerprint, metadata: dict[str, str]) -> dict:
    """What identifies one version this mount sent: its content and its custom metadata."""
    return {"md5": fp.md5, "crc32c": fp.crc32c, "size": fp.size, "metadata": metadata_digest(metadata)}


def content_fingerprint(entry: Entry, data: str) -> Fingerprint:
    """The fingerprint of an entry's sealed content, read once (the file never changes)."""
    if entry.fingerprint is None:
        entry.fingerprint = file_fingerprint(data)
    return entry.fingerprint


def as_check(entry: Entry) -> Entry:
    """``entry``, dropped or superseded, as a check of the conflict copy it may have left (a new
    Entry: whoever waits for ``entry`` is told it is done; the check runs on its own)."""
    return dataclasses.replace(entry, check_copy=True, after=None, replaces=None, state=QUEUED, attempts=0,
                               last_error=None, next_try=0.0, result=None, waits_for_bucket=False, failed=None,
                               hold_until=0.0, done=threading.Event())


def metadata_digest(metadata) -> str:
    return hashlib.sha256(json.dumps(dict(metadata), sort_keys=True).encode()).hexdigest()[:32]


def is_version(key: dict, info: ObjectInfo) -> bool:
    """Is the live object ``info`` the version ``key`` describes?"""
    return (Fingerprint(key["md5"], key["crc32c"], key["size"]).matches(info)
            and metadata_digest(info.metadata) == key["metadata"])


def _fits(custom: dict[str, str]) -> bool:
    """Does this custom metadata fit GCS's limits (a merge of two that each fit may not)?"""
    try:
        check_size_limits(custom)
    except OctuefsError:
        return False
    return True


def is_permanent(exc: BaseException) -> bool:
    """An upload error that retrying alone will not mend: refused (403), a bad request (400), no
    such bucket. The data is kept and retried now and then, but nobody waits for it."""
    if isinstance(exc, (PermissionDenied, BucketNotFound)):
        return True
    return isinstance(exc, StorageError) and not isinstance(
        exc, (TransientError, PreconditionFailed, NotFound, RangeNotSatisfiable))


RECORD_XATTR = "user.octuefs.upload."  # + entry id: the journal record, on the sealed file
PREFLUSH_BYTES = 1 << 20  # larger files have their data flushed before the queue's lock is taken


def _xattrs_work(directory: str) -> bool:
    """Can files in ``directory`` hold user extended attributes?"""
    probe = os.path.join(directory, f".xattr-probe-{uuid.uuid4().hex[:8]}")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.setxattr(fd, RECORD_XATTR + "probe", b"{}")
            return os.getxattr(fd, RECORD_XATTR + "probe") == b"{}"
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        log.info("the cache's filesystem keeps no user xattrs (%s): journal records go in separate files", exc)
        return False


class Journal:
    """The on-disk half: sealed content and journal records."""

    def __init__(self, root: str):
        self.pending_dir = os.path.join(root, "pending")
        self.journal_dir = os.path.join(root, "journal")
        self.conflicts_path = os.path.join(root, "conflicts.jsonl")
        # The conflict copies (saved_as) whose conflict a later event ended: a newer version from
        # this mount landed at the name, or the mount removed or renamed the file. Read by
        # user.octuefs.state (filestate.py) at the next mount; octuefs status still lists them.
        self.settled_path = os.path.join(root, "conflicts.settled")
        # How many lines of conflicts.jsonl an `octuefs sync` (or unmount) has reported.
        self.reported_path = os.path.join(root, "conflicts.reported")
        for d in (self.pending_dir, self.journal_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self.lost_dir = os.path.join(root, "lost+found")
        self._ids = itertools.count()
        self._seqs = itertools.count()  # restarted past the highest journaled by load()
        self.records_in_xattrs = _xattrs_work(self.pending_dir)
        self.foreign: list[Entry] = []  # journaled for another bucket: kept, never uploaded here

    def next_seq(self) -> int:
        """The next queueing number (the caller holds the uploader's lock: queueing order)."""
        return next(self._seqs)

    def new_id(self) -> str:
        return f"{time.time_ns():020d}-{next(self._ids):06d}-{uuid.uuid4().hex[:6]}"

    def data_path(self, entry_id: str) -> str:
        return os.path.join(self.pending_dir, entry_id)

    def seal(self, entry_id: str, staging_path: str) -> None:
        """Make the closed content durable and move it into the journal's keeping."""
        fd = os.open(staging_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging_path, self.data_path(entry_id))
        try:
            fsync_dir(self.pending_dir)
        except OSError:
            os.replace(self.data_path(entry_id), staging_path)
            raise

    def preflush(self, staging_path: str, size: int) -> None:
        """Flush a large file's data ahead of :meth:`commit`, outside any lock."""
        if size >= PREFLUSH_BYTES:
            fsync_path(staging_path)

    def commit(self, entry: Entry, staging_path: str) -> None:
        """Make closed content and its record durable together, as ``pending/<id>``.

        Afterwards the content is in the journal's keeping; on error it is still at
        ``staging_path``, untouched, and nothing is journaled.
        """
        if not self._record_to_xattr(staging_path, entry):
            self.seal(entry.id, staging_path)
            try:
                self._write_json(entry)
            except OSError:
                os.replace(self.data_path(entry.id), staging_path)
                raise
            return
        os.replace(staging_path, self.data_path(entry.id))
        try:
            fsync_dir(self.pending_dir)
        except OSError:
            os.replace(self.data_path(entry.id), staging_path)
            raise

    def commit_link(self, entry: Entry, previous_id: str) -> None:
        """Journal ``entry`` for the same content as entry ``previous_id`` (a hard link)."""
        os.link(self.data_path(previous_id), self.data_path(entry.id))
        try:
            self.write(entry)
            fsync_dir(self.pending_dir)
        except OSError:
            self.remove(entry)
            raise

    def _record_to_xattr(self, path: str, entry: Entry) -> bool:
        """Put ``entry``'s record on the file at ``path`` and fsync it (data and record).
        False if this cache cannot hold the record as an attribute (then nothing was done)."""
        if not self.records_in_xattrs:
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                os.setxattr(fd, RECORD_XATTR + entry.id, json.dumps(entry.record()).encode())
            except OSError as exc:
                if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE, errno.ENOTSUP, errno.EOPNOTSUPP):
                    log.debug("the record of %s goes in a separate file (%s)", entry.id, exc)
                    return False
                raise
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def commit_patch(self, entry: Entry) -> None:
        """Journal a metadata-only entry: its record alone, durable before this returns."""
        self._write_json(entry)

    def write(self, entry: Entry) -> None:
        """Replace the record of an entry already journaled (a setfattr, a chain resolved)."""
        json_path = os.path.join(self.journal_dir, entry.id + ".json")
        if entry.patch or os.path.exists(json_path) or not self._record_to_xattr(self.data_path(entry.id), entry):
            self._write_json(entry)

    def _write_json(self, entry: Entry) -> None:
        path = os.path.join(self.journal_dir, entry.id + ".json")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(entry.record(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.journal_dir)

    def remove(self, entry: Entry, keep_data: bool = False) -> None:
        for path in [os.path.join(self.journal_dir, entry.id + ".json")] + ([] if keep_data else [self.data_path(entry.id)]):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def load(self, bucket: str | None = None) -> list[Entry]:
        """Every journaled entry for ``bucket`` whose data is intact, in queueing order;
        superseded ones dropped.

        Entries journaled for another bucket (the same cache directory mounted for another
        bucket) are left as they are, listed in :attr:`foreign`: they go up only when that
        bucket is mounted with this cache directory again. Records from before buckets were
        noted are taken as this bucket's.
        """
        entries = self._load_json() + self._load_xattrs()
        self.foreign = [e for e in entries if bucket is not None and e.bucket not in (None, bucket)]
        for entry in self.foreign:
            log.warning("upload %s of gs://%s/%s was journaled by a mount of another bucket: kept for it, "
                        "not uploaded here (mount gs://%s with cache directory %s to finish it)",
                        entry.id, entry.bucket, entry.name, entry.bucket, os.path.dirname(self.pending_dir))
        entries = [e for e in entries if e not in self.foreign]
        # Queueing order: the journal's own sequence, not the wall clock (ids start with it, and
        # it may have stepped back); records from before the sequence first, by id.
        entries.sort(key=lambda e: (e.seq, e.id))
        self._seqs = itertools.count(max([e.seq for e in entries + self.foreign] + [-1]) + 1)
        # A crash between journaling a newer version and dropping the older one it replaced
        # leaves both: drop the one it names. (Records from before ``replaces``: keep only the
        # newest of entries sharing an object, base and chain.)
        superseded = {e.replaces for e in entries if e.replaces}
        newest: dict[tuple, Entry] = {}
        for entry in entries:
            if entry.seq < 0 and not entry.check_copy:
                key = (entry.name, entry.base_generation, entry.after)
                if key in newest:
                    superseded.add(newest[key].id)
                newest[key] = entry
        for entry in entries:
            if entry.id in superseded and entry.conflict_name is not None and not entry.check_copy:
                # A copy of it may have landed beside the object: it is checked, not forgotten
                # (a crash may have come before the newer version's close made it a check).
                self.write(as_check(entry))
        checks = {e.id for e in entries if e.check_copy or (e.id in superseded and e.conflict_name is not None)}
        for entry in entries:
            if entry.id in superseded and entry.id not in checks:
                self.remove(entry)
        kept = [as_check(e) if e.id in checks and not e.check_copy else e
                for e in entries if e.id not in superseded or e.id in checks]
        for entry in kept:
            if entry.base_generation and entry.base_generation > 0 and entry.base_metageneration is None:
                # A record from before metagenerations were noted: assume none changed since
                # (1); if one did, the upload goes beside, reported, never over it.
                entry.base_metageneration = 1
        ids = {e.id for e in kept if not e.check_copy}
        for entry in kept:
            if entry.after is not None and entry.after not in ids:
                # What it was chained after is gone without saying which generation it made (its
                # record was set aside): the version it replaces is unknown, so it never overwrites.
                log.warning("upload %s of %r was to follow %s, which is no longer journaled: it goes up only "
                            "as a conflict copy, unless the bucket already holds it", entry.id, entry.name,
                            entry.after)
                entry.after, entry.base_generation = None, BASE_UNKNOWN
        return kept

    def _load_xattrs(self) -> list[Entry]:
        entries: list[Entry] = []
        for fname in sorted(os.listdir(self.pending_dir)):
            path = self.data_path(fname)
            if fname.startswith(".xattr-probe-"):
                os.unlink(path)
                continue
            if fname.endswith(".bad"):
                self._set_aside(fname[: -len(".bad")], None, None, "set aside by an earlier version")
                continue
            if os.path.exists(os.path.join(self.journal_dir, fname + ".json")):
                continue  # its record is in a file of its own
            try:
                raw = os.getxattr(path, RECORD_XATTR + fname)
            except OSError:  # sealed, but its close never finished: not journaled, kept aside
                os.makedirs(self.lost_dir, mode=0o700, exist_ok=True)
                os.replace(path, os.path.join(self.lost_dir, f"unjournaled-{fname}"))
                log.warning("%s in the journal has no record (its close failed or was cut short): never "
                            "uploaded; its content is kept in %s", fname, self.lost_dir)
                continue
            if (entry := self._checked(raw, fname, None)) is not None:
                entries.append(entry)
        return entries

    def _load_json(self) -> list[Entry]:
        entries: list[Entry] = []
        for fname in sorted(os.listdir(self.journal_dir)):
            path = os.path.join(self.journal_dir, fname)
            if fname.endswith(".json.bad"):  # set aside by an earlier version: keep it with its data
                self._set_aside(fname[: -len(".json.bad")], None, path, "set aside by an earlier version")
                continue
            if not fname.endswith(".json"):
                os.unlink(path)  # a temp file from a write the crash interrupted
                continue
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError as exc:
                raw = exc
            if (entry := self._checked(raw, fname, path)) is not None:
                entries.append(entry)
        return entries

    def _checked(self, raw: bytes | OSError, fname: str, record_file: str | None) -> Entry | None:
        """The entry a record holds if it matches its data file; else the record and its data
        are set aside in ``lost+found/`` together, with an error in the log, and nothing of it
        is uploaded. ``record_file``: where the record is, if not on the data file."""
        entry_id = fname[: -len(".json")] if fname.endswith(".json") else fname
        try:
            if isinstance(raw, OSError):
                raise raw
            entry = Entry(**json.loads(raw))
            if entry.id != entry_id:
                raise ValueError(f"it is the record of {entry.id}")
            if not entry.patch and os.path.getsize(self.data_path(entry.id)) != entry.size:
                raise ValueError("its data file has another size")
            return entry
        except (OSError, ValueError, TypeError) as exc:
            self._set_aside(entry_id, raw if isinstance(raw, bytes) else None, record_file, str(exc))
            return None

    def _set_aside(self, entry_id: str, raw: bytes | None, record_file: str | None, why: str) -> None:
        """Move an unusable journal entry into ``lost+found/``: ``<id>.data`` (its content, if
        any) beside ``<id>.record`` (its record, as found), so it is known which object the data
        was for. Nothing of it is uploaded; it stays until someone deletes it."""
        os.makedirs(self.lost_dir, mode=0o700, exist_ok=True)
        base = os.path.join(self.lost_dir, entry_id)
        for data in (self.data_path(entry_id), self.data_path(entry_id) + ".bad"):
            if os.path.exists(data):
                if raw is None and record_file is None:
                    try:
                        raw = os.getxattr(data, RECORD_XATTR + entry_id)
                    except OSError:
                        pass
                os.replace(data, base + ".data")
        if record_file is not None:
            os.replace(record_file, base + ".record")
        elif raw is not None:
            fd = os.open(base + ".record", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        log.error("journaled upload %s is unusable (%s): nothing of it is uploaded; its content and record "
                  "are kept as %s.data and %s.record", entry_id, why, base, base)

    def pending_bytes(self) -> int:
        """Bytes of sealed content waiting to go up (a hard-linked file counted once)."""
        return bytes_in(self.pending_dir)

    _conflicts_lock = threading.Lock()  # one append at a time: its line's start is checked, then written

    def note_conflict(self, record: dict) -> None:
        """Append ``record`` to conflicts.jsonl, durably: fsync'd (and the file's name, when new)
        before a sync may report it. Each record starts on a line of its own, so one that follows
        a line a crash (or a full disk) left unfinished is still read; readers skip that line."""
        line = (json.dumps(record) + "\n").encode()  # ASCII: json escapes the rest
        with self._conflicts_lock:
            fd = os.open(self.conflicts_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)  # names are private
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if not size:
                fsync_dir(os.path.dirname(self.conflicts_path))

    def _conflict_records(self, lines: list[str], first: int) -> list[dict]:
        """The records in ``lines`` (line ``first`` of the log onwards). A line that is no whole
        record (a crash or a full disk cut it short) is skipped with a warning, once per line:
        the others are still read."""
        records = []
        for number, line in enumerate(lines, first + 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
                continue
            warned = self.__dict__.setdefault("_torn_conflict_lines", set())
            if number not in warned:
                warned.add(number)
                log.warning("%s, line %d, is not a whole conflict record (cut short by a crash or a full disk?); "
                            "skipped: %.200r", self.conflicts_path, number, line)
        return records

    def _conflict_lines(self) -> list[str]:
        try:  # under the lock: never a line half written by note_conflict
            with self._conflicts_lock, open(self.conflicts_path, encoding="utf-8", errors="replace") as f:
                return f.readlines()
        except FileNotFoundError:
            return []

    def unreported_conflicts(self) -> tuple[int, list[dict]]:
        """The conflicts no sync has reported yet, and the mark that reporting them moves to
        (see :meth:`mark_reported`). A log shorter than the mark was started afresh: all new."""
        lines = self._conflict_lines()
        try:
            with open(self.reported_path) as f:
                start = int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            start = 0
        if start > len(lines):
            start = 0
        return len(lines), self._conflict_records(lines[start:], start)

    def mark_reported(self, upto: int) -> None:
        tmp = self.reported_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{upto}\n")
        os.replace(tmp, self.reported_path)

    def conflicts(self, limit: int = 50) -> list[dict]:
        lines = self._conflict_lines()
        first = max(0, len(lines) - limit)
        return self._conflict_records(lines[first:], first)

    def note_settled(self, saved_as: list[str]) -> None:
        """Remember that the conflicts whose copies are ``saved_as`` are over (see
        ``settled_path``). Not fsync'd: lost in a crash, a file reads ``conflict`` for a while
        longer, which is the safe side."""
        if not saved_as:
            return
        with self._conflicts_lock, open(self.settled_path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(name) + "\n" for name in saved_as)

    def settled_conflicts(self, keep: set[str] | None = None) -> set[str]:
        """The copies :meth:`note_settled` named. With ``keep``, the file is rewritten to hold
        only those of them in ``keep`` (the conflicts still listed) when it has grown past it."""
        try:
            with self._conflicts_lock, open(self.settled_path, encoding="utf-8", errors="replace") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return set()
        settled = set()
        for line in lines:
            try:
                name = json.loads(line)
            except ValueError:
                continue  # cut short by a crash
            if isinstance(name, str):
                settled.add(name)
        if keep is not None and len(lines) > 2 * max(len(keep), 64):
            settled &= keep
            tmp = self.settled_path + ".tmp"
            with self._conflicts_lock:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(name) + "\n" for name in sorted(settled))
                os.replace(tmp, self.settled_path)
        return settled


def quarantine_unclosed(staging_dir: str, root: str) -> None:
    """Files a dead daemon was still writing are never uploaded: move them to lost+found/."""
    try:
        left = os.listdir(staging_dir)
    except FileNotFoundError:
        return
    if not left:
        return
    found = os.path.join(root, "lost+found")
    os.makedirs(found, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for fname in left:
        os.replace(os.path.join(staging_dir, fname), os.path.join(found, f"{stamp}-{fname}"))
    log.warning("%d file(s) were still open for writing when the last daemon stopped; only closed files are "
                "uploaded, so they were not: their content is kept in %s", len(left), found)


def conflict_name(name: str, when: float, tag: str) -> str:
    """``dir/data.csv`` -> ``dir/data.octuefs-conflict-20261125T101500Z-1a2b3c.csv``.

    A dataset's record ``dir/.octue`` -> ``dir/.octuefs-conflict-20261125T101500Z-1a2b3c.octue``:
    still hidden and still ending in ``.octue``, so the SDK (which skips every object whose name
    ends so when it lists a dataset's files), :func:`~octuefs.octue.dataset_record.is_dataset_file`,
    ``octuefs find``/``manifest`` and :class:`~octuefs.Dataset` never count the copy as one of the
    dataset's files; and not named ``.octue``, so it is no dataset's record either."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not stem:  # no extension (or a dotfile)
        stem, dot, ext = base, "", ""
    stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if base == RECORD_NAME:
        marked = f".octuefs-conflict-{stamp}-{tag}{RECORD_NAME}"
    else:
        marked = f"{stem}.octuefs-conflict-{stamp}-{tag}{dot}{ext}"
    return f"{head}/{marked}" if head else marked


def merge_metadata(base: dict[str, str] | None, ours: dict[str, str], theirs: dict[str, str]) -> dict[str, str] | None:
    """Our custom metadata with a change made elsewhere to the same content merged in, key by key
    (``octue__tags`` tag by tag) against the metadata both started from; None if both changed one
    key (or tag) differently, or the base is not known: then neither may win silently."""
    if base is None:
        return None
    merged: dict[str, str] = {}
    for key in ours.keys() | theirs.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if o != b and t != b and o != t:
            if key != TAGS_KEY:
                return None
            value = merge_tags(b, o, t)  # one key, many tags: different tags set on each side merge
            if value is None:
                return None
            merged[key] = value
            continue
        value = t if o == b else o
        if value is not None:
            merged[key] = value
    return merged


class Withheld:
    """Queued uploads of one object held back by :meth:`Uploader.withhold`: drop or restore."""

    def __init__(self, uploader: Uploader, entries: list[Entry]):
        self._uploader = uploader
        self.entries = entries

    def tried(self) -> list[dict]:
        """The versions these uploads sent whose answers were lost, or that a failed attempt may
        have landed: any may be the object's live version now."""
        keys: list[dict] = []
        for e in self.entries:
            candidates = list(e.tried)
            if e.attempts:
                try:
                    fp = content_fingerprint(e, self._uploader.journal.data_path(e.id))
                    candidates.append(version_key(fp, e.metadata))
                except OSError:
                    pass
            keys += [k for k in candidates if k not in keys]
        return keys

    def drop(self, watch_late: bool = True) -> None:
        """They are moot (their object was deleted or replaced): forget them for good. Those
        that created the object and were sent with no answer may still land (their precondition,
        "absent", holds again once it is deleted): with ``watch_late`` (a delete, which leaves the
        name free) they are watched for (:class:`LateLandings`)."""
        creating = [e for e in self.entries if e.base_generation == 0 and (e.tried or e.attempts)]
        if creating and watch_late:
            self._uploader.late.watch(creating[0].name, Withheld(self._uploader, creating).tried())
        self._uploader._drop(self.entries)

    def restore(self) -> None:
        """What made them moot did not happen: they go up as they would have."""
        with self._uploader._cond:
            self._uploader._restore(self.entries)


class LateLandings:
    """Versions of a removed file that may land after its removal, removed again if they do.

    A new file's upload that timed out may reach GCS later; if the file was removed meanwhile,
    nothing was there to delete, and the late request's "absent" precondition holds: the removed
    file would come back. For ``LATE_WINDOW`` after the removal, each sync, each unmount and a
    sweep every ``LATE_SWEEP_EVERY`` seconds look at the name: one of those versions there is
    deleted (naming its generation); anything else there (a newer file) ends the watch, untouched.
    A new upload of the name that meets one of them replaces it (Uploader._settle_precondition).
    The mount's own versions are never taken for one: while an upload of the name is queued or
    running here (``busy``), the sweep leaves the name alone, and one that lands ends the watch
    (the same bytes and metadata put there again, by `cp -a` say, are the user's).
    """

    def __init__(self, bucket: Bucket, busy: Callable[[str], bool] = lambda name: False):
        self.bucket = bucket
        self._busy = busy
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[list[dict], float]] = {}  # name -> (version keys, until)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, name: str, keys: list[dict]) -> None:
        if not keys:
            return
        with self._lock:
            old = self._watched.get(name, ([], 0.0))[0]
            self._watched[name] = (old + [k for k in keys if k not in old], time.monotonic() + LATE_WINDOW)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="octuefs-late-landings", daemon=True)
                self._thread.start()

    def is_late(self, name: str, info: ObjectInfo) -> bool:
        """Is ``info`` a version of a removed file that landed late?"""
        with self._lock:
            keys = self._watched.get(name, ([], 0.0))[0]
        return any(is_version(k, info) for k in keys)

    def forget(self, name: str) -> None:
        with self._lock:
            self._watched.pop(name, None)

    def sweep(self) -> None:
        with self._lock:
            watched = list(self._watched.items())
        for name, (keys, until) in watched:
            if self._busy(name):
                continue
            try:
                current = self.bucket.stat(name)
            except NotFound:
                if time.monotonic() >= until:
                    self._end(name, keys)
                continue
            except (OctuefsError, OSError):
                continue  # the bucket does not answer: next sweep
            if any(is_version(k, current) for k in keys) and not self._busy(name):
                try:
                    self.bucket.delete(name, if_generation_match=current.generation)
                    log.warning("an upload of %r sent before it was removed landed late (generation %d): "
                                "removed again", name, current.generation)
                except (NotFound, PreconditionFailed):
                    pass  # gone, or replaced meanwhile: not ours to touch
                except (OctuefsError, OSError):
                    continue
            self._end(name, keys)

    def _end(self, name: str, keys: list[dict]) -> None:
        with self._lock:
            if name in self._watched and self._watched[name][0] is keys:
                del self._watched[name]

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(LATE_SWEEP_EVERY):
            self.sweep()
            with self._lock:
                if not self._watched:
                    self._thread = None
                    return


DoneCallback = Callable[[Entry], None]


class _Queue(dict):
    """Entries by id, in queueing order, indexed by object name and by the entry each
    one waits for (``after``), so that queueing, finishing and waiting for one object cost the
    same with a hundred thousand uploads queued (after an outage, say) as with ten."""

    def __init__(self) -> None:
        super().__init__()
        self._by_name: dict[str, dict[str, Entry]] = {}
        self._by_after: dict[str, dict[str, Entry]] = {}

    def __setitem__(self, entry_id: str, entry: Entry) -> None:
        super().__setitem__(entry_id, entry)
        self._by_name.setdefault(entry.key, {})[entry_id] = entry
        if entry.after is not None:
            self._by_after.setdefault(entry.after, {})[entry_id] = entry

    def __delitem__(self, entry_id: str) -> None:
        self.pop(entry_id)

    def pop(self, entry_id: str, *default):
        entry = super().pop(entry_id, *default)
        if isinstance(entry, Entry):
            _unindex(self._by_name, entry.key, entry_id)
            if entry.after is not None:
                _unindex(self._by_after, entry.after, entry_id)
        return entry

    def of(self, name: str) -> list[Entry]:
        """The entries of one object, in the order they were queued (not by id: an id starts
        with the wall clock, which may step back)."""
        return list(self._by_name.get(name, {}).values())

    def successors(self, entry_id: str) -> list[Entry]:
        """The entries chained after ``entry_id``."""
        return list(self._by_after.get(entry_id, {}).values())

    def unchain(self, entry: Entry) -> None:
        """``entry`` no longer waits for the one it was chained after."""
        if entry.after is not None:
            _unindex(self._by_after, entry.after, entry.id)
            entry.after = None

    def release_successors(self, entry_id: str) -> list[Entry]:
        """The entries chained after ``entry_id``, no longer waiting for it (``after`` cleared)."""
        successors = list(self._by_after.pop(entry_id, {}).values())
        for successor in successors:
            successor.after = None
        return successors


def _unindex(index: dict[str, dict[str, Entry]], key: str, entry_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(entry_id, None)
        if not bucket:
            del index[key]


class Uploader:
    """Background uploads of journaled entries (see the module docstring)."""

    patch_pace = PATCH_PACE  # seconds: see PATCH_PACE

    def __init__(self, bucket: Bucket, journal: Journal, workers: int = 8, on_done: DoneCallback | None = None,
                 max_backoff: float = 60.0, new_id: Callable[[], str] | None = None,
                 burst_quiet: float = BURST_QUIET, burst_hold: float = BURST_HOLD,
                 small_workers: int = SMALL_IN_FLIGHT):
        """``workers``: uploads at once; ``small_workers``: uploads at once while they are of
        files up to SMALL_UPLOAD_MAX bytes and the bucket is far (see :meth:`_fits`)."""
        self.bucket = bucket
        self.workers, self.small_workers = workers, small_workers
        self.burst_quiet, self.burst_hold = burst_quiet, burst_hold
        self.journal = journal
        self.on_done = on_done or (lambda entry: None)
        # Told of every upload or patch that ended (DONE or CONFLICT), after ``on_done``, while it
        # is still queued (so a reader of the queue never sees the name with neither): filestate.py.
        self.on_finished: list[Callable[[Entry], None]] = []
        self.max_backoff = max_backoff
        self._cond = threading.Condition()  # any change to the entries: waiters re-check
        # Idle workers wait here, on the same lock, so that one new entry wakes one worker, not
        # all of them (each woken worker scans the queue: that was a tenth of a close's time).
        self._work_ready = threading.Condition(self._cond._lock)
        self._entries = _Queue()  # guarded by _cond
        self._bucket_waits: dict[str, Entry] = {}  # entries retrying for want of the bucket; _cond
        self._retrying: dict[str, Entry] = {}  # entries waiting to retry after a failure; _cond
        # Queued entries that may start before those queued ahead of them: never held (large, or
        # waited for), or a newer version that kept the hold of the one it replaced; _cond
        self._early: dict[str, Entry] = {}
        self._last_enqueue = 0.0  # (monotonic) when a close last queued an upload; _cond
        self._held_wake: float | None = None  # when the first held entry may start; _cond
        self._large_running = 0  # running entries over SMALL_UPLOAD_MAX (at most ``workers``); _cond
        self._running = 0  # running entries; _cond
        self.hold_yields = False  # small uploads wait on the network, not the CPU: none held; _cond
        self._far_checked = -FAR_RECHECK  # (monotonic) when hold_yields was last decided; _cond
        self._stopping = False
        # ``workers`` threads from the start; the rest of ``small_workers`` once the bucket is found
        # far (see _far): a mount near its bucket, or one that never writes, keeps no idle threads.
        self._threads: list[threading.Thread] = []  # guarded by _cond once started
        self._started = False  # _cond
        self._new_id = new_id or journal.new_id
        self._changed_at: dict[str, float] = {}  # name -> (monotonic) when this mount last changed it; _cond
        self.coalesced = 0  # metadata changes that joined one already queued instead of a request of their own; _cond
        self._moved_at = time.monotonic()  # when an upload last read data to send, or landed
        self.late = LateLandings(bucket, busy=self._has_entries)

    def start(self, recovered: list[Entry] = ()) -> None:
        with self._cond:
            for entry in recovered:
                self._entries[entry.id] = entry
        if recovered:
            log.warning("resuming %d upload(s) left by an earlier mount", len(recovered))
        with self._cond:
            self._started = True
            self._spawn(self.small_workers if self.hold_yields else self.workers)

    def _spawn(self, threads: int) -> None:  # LOCKS_REQUIRED(_cond)
        """Workers up to ``threads`` in all (none once stopping, or before start)."""
        while self._started and not self._stopping and len(self._threads) < max(threads, self.workers):
            t = threading.Thread(target=self._work, name=f"octuefs-upload-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

    # --- submitting -----------------------------------------------------------------------

    def submit(self, name: str, staging_path: str, metadata: dict[str, str], content_type: str | None,
               base: ObjectInfo | None, size: int) -> Entry:
        """Seal a closed file's content and queue its upload, to replace ``base`` (None: a new
        object). Returns once it is durable locally."""
        entry = Entry(self._new_id(), name, base.generation if base else 0, None, dict(metadata), content_type,
                      size, time.time(), base_metageneration=base.metageneration if base else None,
                      base_metadata=dict(base.metadata) if base else None)
        self.journal.preflush(staging_path, size)
        # On error (the disk filled up, say) the content is still at staging_path, untouched.
        return self._enqueue(entry, lambda e: self.journal.commit(e, staging_path))

    def resubmit(self, previous: Entry, metadata: dict[str, str], content_type: str | None) -> Entry:
        """The same content as ``previous`` with new metadata (a setfattr while it was pending)."""
        with self._cond:
            if previous.state == QUEUED and previous.id in self._entries:
                previous.metadata, previous.content_type = dict(metadata), content_type
                self.journal.write(previous)  # small; keeps the amendment atomic with the queue
                self.coalesced += 1
                return previous
        entry = Entry(self._new_id(), previous.name, previous.base_generation, None, dict(metadata), content_type,
                      previous.size, time.time(), base_metageneration=previous.base_metageneration,
                      base_metadata=previous.base_metadata, patch=previous.patch, base_object=previous.base_object)
        if entry.patch:
            entry.next_try = self._patch_not_before(entry.name)
            return self._enqueue(entry, self._commit_patch)
        return self._enqueue(entry, lambda e: self.journal.commit_link(e, previous.id))

    def _enqueue(self, entry: Entry, persist: Callable[[Entry], None]) -> Entry:
        """Queue ``entry`` after ``persist`` journals it, both under the lock: its precondition
        and chaining depend on what else is queued for the object."""
        with self._cond:
            entry.bucket, entry.seq = self.bucket.name, self.journal.next_seq()
            older = self._entries.of(entry.name)
            replaced = None
            if older:
                last = older[-1]
                if last.state == QUEUED and (last.patch or not entry.patch):  # (a patch never drops content)
                    replaced = last  # its content is superseded by this newer version
                    entry.replaces = last.id
                    entry.base_generation, entry.after = last.base_generation, last.after
                    entry.base_metageneration, entry.base_metadata = last.base_metageneration, last.base_metadata
                    # What it sent and never heard back about may be in the bucket: remember it,
                    # so that finding it there is not taken for someone else's change.
                    entry.tried = last.tried + [t for t in entry.tried if t not in last.tried]
                else:
                    entry.base_generation, entry.after = None, last.id
            persist(entry)
            if replaced is not None:
                self.coalesced += replaced.patch  # a metadata change folded into a newer one
                del self._entries[replaced.id]
                if replaced.conflict_name is not None:
                    # An attempt of it may have landed beside the object: checked by a worker
                    # (journaled: a crash before this write is caught by Journal.load, which
                    # sees ``entry.replaces``).
                    self._add_check(replaced)
                else:
                    self.journal.remove(replaced)
                replaced.state = DONE
                replaced.done.set()
            now = time.monotonic()
            self._last_enqueue = now
            far = self._far(now)
            held = entry.size < BURST_MAX_BYTES and self.burst_hold and not far
            entry.hold_until = now + self.burst_hold if held else 0.0
            if replaced is not None and replaced.hold_until < entry.hold_until:
                entry.hold_until = replaced.hold_until  # a file closed again and again is held no longer
            if replaced is not None or not entry.hold_until:
                self._early[entry.id] = entry
            self._entries[entry.id] = entry
            self._cond.notify_all()
            if not entry.hold_until or self._held_wake is None:
                self._work_ready.notify()  # (if held: to set a timer; workers with one need no call)
        log.debug("queued upload %s of %r (%d bytes)", entry.id, entry.name, entry.size)
        return entry

    # --- waiting and status ---------------------------------------------------------------------

    def moved(self) -> None:
        """An upload is moving: it read data to send, or it landed."""
        self._moved_at = time.monotonic()

    def wait(self, entry: Entry, timeout: float | None = None, idle: float | None = None) -> ObjectInfo | None:
        """Wait until ``entry`` is in the bucket. Conflict if it went up beside the original.

        ``timeout``: UploadFailed after that long. ``idle``: UploadStillPending once no upload
        has moved for that long (the bucket is not answering). Either way it stays queued.
        """
        self.hasten([entry])
        start = time.monotonic()
        while not entry.done.wait(0.2):
            if entry.failed:
                raise UploadFailed(f"{entry.name!r} could not be uploaded ({entry.failed}); it stays in the cache "
                                   "and is retried: see `octuefs status`")
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                raise UploadFailed(f"{entry.name!r} is not in the bucket yet ({entry.last_error or 'still queued'}); "
                                   "it stays queued")
            if idle is not None and now - max(start, self._moved_at) >= idle:
                raise self._still_pending(entry.name, entry, idle)
        if entry.state == CONFLICT:
            raise Conflict(f"{entry.name!r} changed in the bucket; this version was saved as {entry.conflict_name!r}")
        return entry.result

    def hasten(self, entries: list[Entry]) -> None:
        """Someone waits for these: start them as soon as their turn comes, burst or not (a
        metadata patch as soon as GCS's pace allows, not waiting for more changes to join it). One
        that failed for good is tried once more now (the cause may be mended: a permission
        granted, a quota raised); if it fails again it is marked failed again."""
        with self._cond:
            woken = 0
            for e in entries:
                if e.failed and e.state == QUEUED and e.id in self._entries:
                    e.failed, e.next_try = None, 0.0
                    for successor in self._entries.successors(e.id):
                        successor.failed = None
                    woken += 1
                if e.state == QUEUED and e.id in self._entries and e.hold_until:
                    e.hold_until = 0.0
                    self._early[e.id] = e
                    woken += 1
                if e.patch and e.state == QUEUED and e.id in self._entries:  # no wait for more changes
                    e.next_try = min(e.next_try, self._changed_at.get(e.name, 0.0) + self.patch_pace)
                    woken += 1
            if woken:
                self._work_ready.notify(woken)

    @staticmethod
    def _still_pending(name: str, entry: Entry, idle: float) -> UploadStillPending:
        why = f"last error: {entry.last_error}" if entry.last_error else f"{entry.state}, attempt {entry.attempts}"
        return UploadStillPending(f"{name!r} is waiting for its upload, and no upload has moved for {idle:.0f}s "
                                  f"({why}); it stays queued: try again once `octuefs sync` returns")

    def pending_for(self, name: str) -> list[Entry]:
        """The uploads of ``name`` still queued or running (a check of a copy by that name is none:
        an fsync of the copy does not wait on the bucket for it)."""
        with self._cond:
            return [e for e in self._entries.of(name) if not e.check_copy]

    def wait_name(self, name: str, timeout: float | None = None, idle: float | None = None) -> None:
        for entry in self.pending_for(name):
            self.wait(entry, timeout, idle)

    def withhold(self, name: str, idle: float | None = None) -> Withheld:
        """Hold back the queued uploads of ``name`` (it is about to be deleted or replaced) and
        let a running attempt end first. Nothing is dropped yet: the caller calls
        :meth:`Withheld.drop` once the bucket has done what made them moot, or
        :meth:`Withheld.restore` if it failed, so a failed ``rm`` or ``mv`` loses no closed
        version. A crash meanwhile leaves them journaled: they are uploaded at the next mount
        (beside the object as a conflict copy if it is gone by then), never lost.

        ``idle``: give up (UploadStillPending, everything restored) once no upload has moved for
        that long while an attempt of ``name`` is still running.
        """
        start = time.monotonic()
        held: list[Entry] = []
        with self._cond:
            try:
                while True:
                    # (A check of a conflict copy by this name is no version of it: never held
                    # back, nor waited for. It looks for that copy whatever the file becomes.)
                    for e in self._entries.of(name):
                        if e.state == QUEUED and not e.check_copy:
                            e.state = WITHHELD
                            held.append(e)
                    # Running, or ended and not yet recorded by the file layer (``_finish`` marks
                    # the end before ``on_done`` records the version made; it leaves the queue after).
                    running = [e for e in self._entries.of(name)
                               if e.state not in (QUEUED, WITHHELD) and not e.check_copy]
                    if not running:
                        break
                    if idle is not None and time.monotonic() - max(start, self._moved_at) >= idle:
                        raise self._still_pending(name, running[0], idle)
                    self._cond.wait(0.2 if idle is not None else None)
            except BaseException:
                self._restore(held)
                raise
        return Withheld(self, held)

    def _restore(self, held: list[Entry]) -> None:  # caller holds _cond
        for e in held:
            if e.state == WITHHELD:
                e.state = QUEUED
                if e.next_try > time.monotonic():
                    self._retrying[e.id] = e
        self._cond.notify_all()
        if held:
            self._work_ready.notify_all()

    def _drop(self, held: list[Entry]) -> None:
        # Those an attempt of which may have landed beside the object (a conflict copy whose
        # answer was lost) leave a check of that copy in their place: journaled before they leave
        # the queue, so a crash at any point still checks it (as the entry itself, or as the check).
        checks = [as_check(e) for e in held if e.conflict_name is not None and not e.check_copy]
        for check in checks:
            self.journal.write(check)
        checked = {c.id for c in checks}
        with self._cond:
            for e in held:
                self._entries.pop(e.id, None)
                e.state = DONE
                e.done.set()
            for check in checks:
                self._queue_check(check)
            self._cond.notify_all()
        for e in held:
            if e.id not in checked:
                self.journal.remove(e)

    def _add_check(self, entry: Entry) -> None:
        """Journal and queue a check of ``entry``'s conflict copy in its place. Caller holds _cond
        and has taken ``entry`` out of the queue."""
        check = as_check(entry)
        self.journal.write(check)
        self._queue_check(check)

    def _queue_check(self, check: Entry) -> None:  # caller holds _cond
        self._entries[check.id] = check
        self._early[check.id] = check
        self._work_ready.notify()

    def _has_entries(self, name: str) -> bool:
        with self._cond:
            return bool(self._entries.of(name))

    def snapshot(self) -> list[Entry]:
        with self._cond:
            return list(self._entries.values())

    def sync(self, timeout: float | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Wait for every upload queued now; return how many are still pending at the end."""
        targets = self.snapshot()
        self.hasten(targets)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = [e for e in targets if not e.done.is_set()]
            waiting = [e for e in left if not e.failed]  # (what failed for good is retried, not waited for)
            if progress:
                progress(len(targets) - len(left), len(targets))
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                self.late.sweep()
                return len(left)
            waiting[0].done.wait(0.5)

    def status(self) -> dict:
        with self._cond:
            rows = [{"id": e.id, "name": e.name, "state": "failed" if e.failed else e.state, "size": e.size,
                     "attempts": e.attempts, "last_error": e.last_error, "queued_at": e.created,
                     "kind": "copy check" if e.check_copy else "metadata" if e.patch else "upload",
                     **({"copy": e.conflict_name} if e.check_copy else {})}
                    for e in self._entries.values()]
        rows += [{"id": e.id, "name": e.name, "state": f"kept for gs://{e.bucket}", "size": e.size, "attempts": 0,
                  "last_error": "journaled by a mount of another bucket", "queued_at": e.created,
                  "kind": "metadata" if e.patch else "upload"}
                 for e in self.journal.foreign]
        with self._cond:
            coalesced = self.coalesced
        return {"uploads": rows, "conflicts": self.journal.conflicts(), "metadata_coalesced": coalesced}

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> int:
        """Stop the workers, first draining the queue if asked; return what is left queued."""
        left = self.sync(timeout) if drain else 0
        self.late.stop()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            self._work_ready.notify_all()
            threads = list(self._threads)
        for t in threads:
            if t.is_alive():
                t.join(timeout=5 if not drain else None)
        remaining = len(self.snapshot())
        if remaining:
            log.warning("%d upload(s) still pending; they resume at the next mount with cache %s",
                        remaining, os.path.dirname(self.journal.journal_dir))
        return left or remaining

    # --- the workers --------------------------------------------------------------------------

    def _next(self) -> Entry | None:
        """The oldest runnable entry, marked running. Caller holds _cond.

        Write-back in bursts: while closes keep coming (one within ``burst_quiet`` of the
        last), a new entry waits up to ``burst_hold`` before it starts, so that the closes get
        the CPU first (on two cores, uploads running alongside halved the rate of serial
        closes) and the uploads follow at full speed once the burst pauses. An entry someone
        waits for (fsync, sync, a rename, unmount) is never held, nor any once small uploads
        are found to wait on the network rather than the CPU (``hold_yields``).
        """
        now = time.monotonic()
        quiet = self.hold_yields or now - self._last_enqueue >= self.burst_quiet
        self._held_wake = None
        if not self.hold_yields and self._running >= self.workers:
            return None  # (a running one's worker looks again when it ends)
        for e in list(self._early.values()):
            if e.state != QUEUED or e.id not in self._entries:
                del self._early[e.id]
            elif e.after is None and e.next_try <= now and self._entries.of(e.key)[0] is e and self._fits(e):
                if quiet or now >= e.hold_until:
                    return self._take(e)
                wake = min(self._last_enqueue + self.burst_quiet, e.hold_until)
                self._held_wake = min(self._held_wake or wake, wake)
        # One pass, oldest first: an object's entries run in order, so its running one (if
        # any) comes before the rest of its entries, and the pass stops at the first it can
        # run, or at the first held one (those queued after it are held at least as long, or
        # are in _early).
        busy: set[str] = set()
        for e in self._entries.values():
            if e.state == QUEUED and e.key not in busy and e.after is None and e.next_try <= now and self._fits(e):
                if quiet or now >= e.hold_until:
                    return self._take(e)
                wake = min(self._last_enqueue + self.burst_quiet, e.hold_until)
                self._held_wake = min(self._held_wake or wake, wake)
                return None
            busy.add(e.key)  # keep later entries of the same object in order
        return None

    def _fits(self, e: Entry) -> bool:
        """May ``e`` start now? ``workers`` uploads run at once; at a distance (``hold_yields``)
        small ones run on every thread, ``small_workers``, and large ones on ``workers`` of
        them. (A running upload's end frees its slot, and its worker looks again.)"""
        if not self.hold_yields:
            return self._running < self.workers
        return e.size <= SMALL_UPLOAD_MAX or self._large_running < self.workers

    def _far(self, now: float) -> bool:
        """Is the bucket far enough that small uploads wait on the network, not the CPU? (See
        FAR_RATIO; a bucket that does not time its requests is near.) Caller holds _cond."""
        if now - self._far_checked >= FAR_RECHECK:
            self._far_checked = now
            wall, cpu, timed = getattr(self.bucket, "round_trip", lambda: (0.0, 0.0, 0))()
            far = timed >= FAR_SAMPLES and wall >= max(FAR_WALL, FAR_RATIO * cpu)
            if far != self.hold_yields:
                self.hold_yields = far
                log.debug("small requests take %.1f ms, %.2f ms of it CPU: uploads wait on the %s", wall * 1000,
                          cpu * 1000, "network, and a burst of closes no longer holds them" if far else "CPU")
                if far:
                    self._spawn(self.small_workers)
                self._work_ready.notify()  # (held ones: free now)
        return self.hold_yields

    def slots(self) -> int:
        """How many small files' uploads may run at once now (larger ones: ``workers``)."""
        with self._cond:
            return max(self.workers, self.small_workers) if self.hold_yields else self.workers

    def _take(self, e: Entry) -> Entry:
        e.state = RUNNING
        e.attempts += 1
        self._running += 1
        if e.size > SMALL_UPLOAD_MAX:
            self._large_running += 1
        if e.failed:  # tried again: no longer failed unless this attempt fails too (then marked again)
            e.failed = None
            for successor in self._entries.successors(e.id):
                successor.failed = None
        self._early.pop(e.id, None)
        self._retrying.pop(e.id, None)
        return e

    def _work(self) -> None:
        while True:
            with self._cond:
                entry = self._next()
                while entry is None and not self._stopping:
                    # Entries due already wait for an object's running upload (its end wakes a
                    # worker) or for the one they are chained after; retries and the burst hold
                    # set a timer.
                    now = time.monotonic()
                    for gone in [i for i, e in self._retrying.items() if e.state != QUEUED or i not in self._entries]:
                        del self._retrying[gone]
                    wakes = [e.next_try for e in self._retrying.values() if e.after is None and e.next_try > now]
                    if self._held_wake is not None:
                        wakes.append(self._held_wake)
                    wait = None if not wakes else max(0.005, min(wakes) - time.monotonic())
                    self._work_ready.wait(wait)
                    entry = self._next()
                if entry is None:
                    return
                if entry.hold_until:
                    # A burst has paused (or held this one long enough): the entries held with
                    # it are free too. Only one worker kept a timer; each one woken wakes the next.
                    self._work_ready.notify()
            try:
                self._run(entry)
            finally:
                with self._cond:
                    self._running -= 1
                    if entry.size > SMALL_UPLOAD_MAX:
                        self._large_running -= 1
                        self._work_ready.notify()  # a large upload may have waited for the slot

    def _run(self, entry: Entry) -> None:
        if entry.check_copy:
            self._run_check(entry)
            return
        if entry.patch:
            self._run_patch(entry)
            return
        data = self.journal.data_path(entry.id)
        try:
            if entry.base_generation == BASE_UNKNOWN:
                raise PreconditionFailed(f"{entry.name!r}: the version this upload replaces is not known")
            info = self.bucket.upload_file(
                entry.name, data, entry.metadata, if_generation_match=entry.base_generation,
                if_metageneration_match=entry.base_metageneration if entry.base_generation else None,
                content_type=entry.content_type, progress=self.moved)
        except PreconditionFailed:
            try:
                self._settle_precondition(entry, data)
            except Exception as exc:  # (its stat failed, say) the worker must live on
                if not isinstance(exc, (OctuefsError, OSError)):
                    log.exception("unexpected error after a conflict uploading %r; it stays queued", entry.name)
                self._retry_later(entry, exc)
            return
        except ChecksumMismatch as exc:
            # What landed is not our bytes (a composed object): it is ours to replace, at once.
            if exc.generation:
                with self._cond:
                    entry.base_generation, entry.base_metageneration = exc.generation, 1
                    entry.base_metadata = dict(entry.metadata)
                    self.journal.write(entry)
            self._retry_later(entry, TransientError(str(exc)))
            return
        except (OctuefsError, OSError) as exc:
            self._note_tried(entry, data, exc)
            self._retry_later(entry, exc)
            return
        except Exception as exc:  # a bug: keep the data, say so, keep trying
            log.exception("unexpected error uploading %r; it stays queued", entry.name)
            self._retry_later(entry, exc)
            return
        self._mutated(entry.name)
        if entry.conflict_name is not None:
            self._remove_own_copy(entry, data)
        self._finish(entry, info, DONE)

    def _remove_own_copy(self, entry: Entry, data: str) -> None:
        """This version went up under its own name after an earlier attempt had gone beside (its
        answer lost, or the daemon died before noting it): that copy, if it landed and is still
        exactly ours, repeats what is now in place, unreported; it is deleted. One that anyone
        changed since stays."""
        target = entry.conflict_name
        metadata = {k: v for k, v in entry.metadata.items() if k != "octue__id"}
        metadata["octue__id"] = entry.conflict_id
        try:
            info = self.bucket.stat(target)
            if content_fingerprint(entry, data).matches(info) and dict(info.metadata) == metadata:
                self.bucket.delete(target, if_generation_match=info.generation)
                log.info("removed gs://%s/%s: an earlier attempt had saved this version of %r there; it is in "
                         "place now", self.bucket.name, target, entry.name)
        except (NotFound, PreconditionFailed):
            pass
        except (OctuefsError, OSError) as exc:
            log.warning("could not check gs://%s/%s, where an earlier attempt may have saved a copy of %r: %s",
                        self.bucket.name, target, entry.name, exc)

    def _run_check(self, entry: Entry) -> None:
        """A version that was dropped or superseded after an attempt of it went beside the object
        with its answer lost: is that copy in the bucket? If it is, and exactly this version, it
        is reported as a conflict (it may be the only copy of that version: never deleted);
        anything else there, or nothing, is not ours to report. A worker does this (requests), not
        the close or rename that dropped the entry."""
        data = self.journal.data_path(entry.id)
        target = entry.conflict_name
        metadata = {k: v for k, v in entry.metadata.items() if k != "octue__id"}
        metadata["octue__id"] = entry.conflict_id
        try:
            try:
                info = self.bucket.stat(target)
            except NotFound:
                info = None
            ours = (info is not None and content_fingerprint(entry, data).matches(info)
                    and dict(info.metadata) == metadata)
        except (OctuefsError, OSError) as exc:
            self._retry_later(entry, exc)
            return
        except Exception as exc:  # a bug: keep the record, say so, keep trying
            log.exception("unexpected error checking gs://%s/%s; it is checked again", self.bucket.name, target)
            self._retry_later(entry, exc)
            return
        if ours and not any(c.get("saved_as") == target for c in self.journal.conflicts()):
            log.warning("conflict: an earlier attempt saved a version of gs://%s/%s beside it as gs://%s/%s (its "
                        "answer was lost), and that version was then replaced, removed or renamed over here: the copy is kept, "
                        "never deleted (it may be the only copy of that version)",
                        self.bucket.name, entry.name, self.bucket.name, target)
            self.journal.note_conflict({"time": time.time(), "object": entry.name,
                                        "theirs": "superseded or removed here after its copy was saved",
                                        "expected_generation": entry.base_generation, "saved_as": target,
                                        "generation": info.generation})
        elif info is None:
            log.debug("check of %s: no copy of %r landed there", target, entry.name)
        with self._cond:
            self._entries.pop(entry.id, None)
            entry.state, entry.result = (CONFLICT if ours else DONE), info
            self.journal.remove(entry)
            self._cond.notify_all()
            self._work_ready.notify_all()
        entry.done.set()

    def _note_tried(self, entry: Entry, data: str, exc: BaseException) -> None:
        """An attempt failed after it may have reached the bucket (no answer): remember what it sent."""
        if not isinstance(exc, TransientError):
            return
        try:
            key = version_key(content_fingerprint(entry, data), entry.metadata)
        except OSError:
            return
        with self._cond:
            if key not in entry.tried:
                entry.tried.append(key)

    def _settle_precondition(self, entry: Entry, data: str) -> None:
        """The object is not the version this upload replaces. It may be ours after all (a lost
        answer, a crash), or only its metadata changed elsewhere (merged), or someone else
        changed it: then ours goes beside it, never over it."""
        try:
            current = self.bucket.stat(entry.name)
        except NotFound:
            current = None
        if (current is not None and content_fingerprint(entry, data).matches(current)
                and dict(current.metadata) == entry.metadata):
            log.info("upload of %r was already in the bucket (generation %d)", entry.name, current.generation)
            if entry.conflict_name is not None:
                self._remove_own_copy(entry, data)  # (as when it lands under its own name)
            self._finish(entry, current, DONE)
            return
        if current is None and entry.base_generation == 0:
            # A new file, and nothing at its name: the 412 met an object gone since (created and
            # deleted elsewhere), or was spurious. Nothing is there to overwrite, and "absent" is
            # still its precondition, so it goes up at its name; a copy beside nothing would be a
            # conflict nobody had (and one more object to check if its answer were lost).
            log.info("upload of new file %r met a precondition failure, and nothing is there now: tried again",
                     entry.name)
            with self._cond:
                entry.state, entry.next_try = QUEUED, time.monotonic() + min(self.max_backoff, 0.1 * entry.attempts)
                self._retrying[entry.id] = entry
                self._cond.notify_all()
                self._work_ready.notify_all()
            return
        if current is not None and self.late.is_late(entry.name, current):
            # A removed file's upload that landed late: what the user removed, not a change to keep.
            log.info("%r: replacing a version of the removed file that landed late (generation %d)",
                     entry.name, current.generation)
            self.late.forget(entry.name)
            self._rebase(entry, current, entry.metadata)
            return
        if current is not None and any(is_version(key, current) for key in entry.tried):
            # A version this mount sent earlier landed with its answer lost: it is what ours replaces.
            log.info("an earlier upload of %r had landed after all (generation %d); the newer version replaces it",
                     entry.name, current.generation)
            self._rebase(entry, current, entry.metadata)
            return
        if current is not None and current.generation == entry.base_generation:
            merged = merge_metadata(entry.base_metadata, entry.metadata, dict(current.metadata))
            if merged is not None and not _fits(merged):
                log.warning("the metadata of %r changed elsewhere and, merged with this version's, is over GCS's "
                            "limits: this version goes beside", entry.name)
                merged = None
            if merged is not None:
                log.info("the metadata of %r changed elsewhere while this version waited to go up: merged",
                         entry.name)
                self._rebase(entry, current, merged)
                return
        self._keep_beside(entry, data, current)

    def _rebase(self, entry: Entry, current: ObjectInfo, metadata: dict[str, str]) -> None:
        """Retry ``entry`` at once, replacing ``current`` (with ``metadata``)."""
        with self._cond:
            for successor in self._entries.successors(entry.id):
                # Derived from what this entry was to send: it takes the change merged in too.
                merged = merge_metadata(entry.metadata, successor.metadata, metadata)
                if merged is None:
                    # It changed a key the other writer changed too: it must not win silently. It
                    # keeps the precondition this entry had, so it goes up beside, reported.
                    self._entries.unchain(successor)
                    successor.base_generation, successor.base_metageneration = (entry.base_generation,
                                                                                entry.base_metageneration)
                    successor.base_metadata = entry.base_metadata
                    self.journal.write(successor)
                elif merged != successor.metadata:
                    successor.metadata = merged
                    self.journal.write(successor)
            entry.base_generation, entry.base_metageneration = current.generation, current.metageneration
            entry.base_metadata, entry.metadata = dict(current.metadata), metadata
            self.journal.write(entry)
            entry.state, entry.next_try = QUEUED, 0.0
            self._early[entry.id] = entry
            self._cond.notify_all()
            self._work_ready.notify()

    def _keep_beside(self, entry: Entry, data: str, theirs: ObjectInfo | None) -> None:
        theirs_text = f"generation {theirs.generation}" if theirs is not None else "deleted"
        if entry.conflict_name is None:
            with self._cond:
                entry.conflict_name = conflict_name(entry.name, time.time(), entry.id[-6:])
                entry.conflict_id = json.dumps(str(uuid.uuid4()))  # a new object, so a new Octue id
                self.journal.write(entry)
        target = entry.conflict_name
        metadata = {k: v for k, v in entry.metadata.items() if k != "octue__id"}
        metadata["octue__id"] = entry.conflict_id
        try:
            try:
                info = self.bucket.upload_file(target, data, metadata, if_generation_match=0,
                                               content_type=entry.content_type, progress=self.moved)
            except PreconditionFailed:  # there already: ours, from before a lost answer or a crash?
                info = self.bucket.stat(target)
                if not (content_fingerprint(entry, data).matches(info) and dict(info.metadata) == metadata):
                    with self._cond:  # someone else's: another name next time
                        entry.conflict_name = entry.conflict_id = None
                    raise
                if any(c.get("saved_as") == target for c in self.journal.conflicts()):
                    self._finish(entry, info, CONFLICT)  # noted before the crash
                    return
        except (OctuefsError, OSError) as exc:
            self._retry_later(entry, exc)
            return
        log.warning("conflict: gs://%s/%s changed in the bucket (now %s; this mount expected generation %s); "
                    "not overwritten: your version was saved as gs://%s/%s",
                    self.bucket.name, entry.name, theirs_text, entry.base_generation, self.bucket.name, target)
        self.journal.note_conflict({"time": time.time(), "bucket": self.bucket.name, "object": entry.name,
                                    "theirs": theirs_text,
                                    "expected_generation": entry.base_generation, "saved_as": target,
                                    "generation": info.generation})
        self._finish(entry, info, CONFLICT)

    def _retry_later(self, entry: Entry, exc: BaseException) -> None:
        permanent = is_permanent(exc)
        if permanent:
            delay = max(self.max_backoff, PERMANENT_RETRY)
            log.error("upload of gs://%s/%s failed, and retrying alone will not mend it: %s. Its data stays in "
                      "the cache (%s); it is tried again every %.0fs and at the next mount; nothing waits for it "
                      "meanwhile (`octuefs status` lists it)", self.bucket.name, entry.name, exc,
                      self.journal.data_path(entry.id), delay)
        else:
            delay = min(self.max_backoff, 0.5 * 2 ** min(entry.attempts - 1, 10))
            log.warning("%s %r failed (attempt %d), retrying in %.1fs: %s",
                        "check of a conflict copy of" if entry.check_copy else "upload of", entry.name,
                        entry.attempts, delay, exc)
        with self._cond:
            entry.failed = str(exc) if permanent else None
            for successor in self._entries.successors(entry.id):  # they wait for it: nobody waits for them
                successor.failed = f"waits for an earlier version that failed: {exc}" if permanent else None
            entry.state, entry.last_error = QUEUED, str(exc)
            entry.waits_for_bucket = isinstance(exc, TransientError)
            if entry.waits_for_bucket:
                self._bucket_waits[entry.id] = entry
            entry.next_try = time.monotonic() + delay
            self._retrying[entry.id] = entry
            self._cond.notify_all()
            self._work_ready.notify_all()  # to wait until the soonest retry

    def _finish(self, entry: Entry, info: ObjectInfo, state: str) -> None:
        # Tell the file layer first, while the entry still counts as running: a version
        # closed meanwhile then chains after it instead of reusing a stale precondition.
        if state == DONE:  # (still queued: the late-landing sweep leaves the name alone meanwhile)
            self.late.forget(entry.name)  # this mount's own version is there now
        entry.state, entry.result, entry.failed = state, info, None
        self.moved()
        try:
            self.on_done(entry)  # may adopt the data file into the content cache
        except Exception:
            log.exception("after uploading %r", entry.name)
        for hook in self.on_finished:  # each, whatever the one before did (user.octuefs.state's among them)
            try:
                hook(entry)
            except Exception:
                log.exception("after uploading %r", entry.name)
        with self._cond:
            now = time.monotonic()
            runnable = False  # other than what this worker picks up next anyway
            waits, self._bucket_waits = self._bucket_waits, {}
            for other in waits.values():  # the bucket answers again: no need to wait
                if other.state == QUEUED and other.waits_for_bucket and other.next_try > now:
                    other.next_try = now
                    runnable = True
                other.waits_for_bucket = False
            for successor in self._entries.release_successors(entry.id):
                # A later version of the same object: it replaces what we just wrote, or,
                # after a conflict, meets the same precondition and is kept beside too.
                successor.failed = None
                merged = successor.metadata
                if state == DONE and dict(info.metadata) != entry.metadata:
                    # What landed holds a change made elsewhere (merged into it): the successor's
                    # metadata was derived from what was sent, so it takes that change too.
                    merged = merge_metadata(entry.metadata, successor.metadata, dict(info.metadata))
                if state == DONE and merged is not None:
                    successor.base_generation, successor.base_metageneration = info.generation, info.metageneration
                    successor.base_metadata, successor.metadata = dict(info.metadata), merged
                else:  # beside the object, as its predecessor went (or both changed one key)
                    successor.base_generation = entry.base_generation
                    successor.base_metageneration, successor.base_metadata = (entry.base_metageneration,
                                                                              entry.base_metadata)
                self.journal.write(successor)
                runnable = True
            self._entries.pop(entry.id, None)
            # Its record goes before a successor can run: a crash must never leave this record
            # beside a newer version already landed (it would be retried, and meet that version
            # as someone else's change).
            self.journal.remove(entry)
            self._cond.notify_all()
            if runnable:
                self._work_ready.notify_all()
        entry.done.set()
        log.debug("upload %s of %r: %s (generation %s)", entry.id, entry.name, state, info.generation)

    # --- metadata patches (a setfattr of a saved file) ------------------------------------------

    def submit_patch(self, name: str, metadata: dict[str, str], content_type: str | None,
                     base: ObjectInfo) -> Entry:
        """Journal a metadata-only change of ``base`` (the whole custom metadata it should have)
        and queue it: one PATCH, sent ``patch_pace`` after it was queued (changes made meanwhile
        join it: :meth:`resubmit`) and no sooner than ``patch_pace`` after this mount's last change
        of the object. Returns once it is durable locally."""
        entry = Entry(self._new_id(), name, base.generation, None, dict(metadata), content_type, base.size,
                      time.time(), base_metageneration=base.metageneration, base_metadata=dict(base.metadata),
                      patch=True, base_object=object_fields(base))
        entry.next_try = self._patch_not_before(name)
        return self._enqueue(entry, self._commit_patch)

    def _commit_patch(self, entry: Entry) -> None:  # under _cond (from _enqueue)
        self.journal.commit_patch(entry)
        self._retrying[entry.id] = entry  # a worker keeps a timer for its next_try

    def _patch_not_before(self, name: str) -> float:
        now = time.monotonic()
        with self._cond:
            last = self._changed_at.get(name)
        return max(now + self.patch_pace, (last or 0.0) + self.patch_pace)

    def wait_pace(self, name: str) -> None:
        """Return once GCS's pace (one change of an object a second) allows another change of
        ``name`` after an upload or metadata patch this mount just made: a delete (of rm, or of a
        rename after its copy) right after a file landed would otherwise be answered 429."""
        with self._cond:
            last = self._changed_at.get(name)
        if last is not None:
            time.sleep(max(0.0, min(self.patch_pace, last + self.patch_pace - time.monotonic())))

    def mutated(self, name: str) -> None:
        """The mount changed object ``name`` outside the queue just now (a rename's copy, a
        touch): a metadata patch of it keeps GCS's pace from then on too."""
        self._mutated(name)

    def _mutated(self, name: str) -> None:
        """This mount changed object ``name`` just now (its answer came)."""
        now = time.monotonic()
        with self._cond:
            if len(self._changed_at) > 1024:
                self._changed_at = {k: t for k, t in self._changed_at.items() if now - t < self.patch_pace}
            self._changed_at[name] = now

    def _run_patch(self, entry: Entry) -> None:
        """Send a metadata-only entry as one PATCH under generation and metageneration
        preconditions, no sooner than ``patch_pace`` after this mount's last change of it."""
        with self._cond:
            last = self._changed_at.get(entry.name)
            wait = 0.0 if last is None else last + self.patch_pace - time.monotonic()
            if wait > 0:  # (chained after a change that just landed)
                entry.state, entry.next_try = QUEUED, time.monotonic() + wait
                entry.attempts -= 1
                self._retrying[entry.id] = entry
                self._cond.notify_all()
                self._work_ready.notify_all()
                return
        base = entry.base_metadata or {}
        changes: dict[str, str | None] = {k: v for k, v in entry.metadata.items() if base.get(k) != v}
        changes.update({k: None for k, v in base.items() if k not in entry.metadata and v != ""})
        was = (entry.base_object or {}).get("content_type")
        content_type = (entry.content_type or "application/octet-stream") if entry.content_type != was else None
        try:
            if entry.base_generation == BASE_UNKNOWN:
                raise PreconditionFailed(f"{entry.name!r}: the version this change applies to is not known")
            if not changes and content_type is None:
                info = self.bucket.stat(entry.name)
                if (info.generation, info.metageneration) != (entry.base_generation, entry.base_metageneration):
                    raise PreconditionFailed(f"{entry.name!r} changed in the bucket")
            else:
                info = self.bucket.patch_metadata(
                    entry.name, changes, if_generation_match=entry.base_generation,
                    if_metageneration_match=entry.base_metageneration, content_type=content_type)
                self._mutated(entry.name)
        except PreconditionFailed:
            try:
                self._settle_patch(entry)
            except Exception as exc:  # (its stat failed, say) the worker must live on
                if not isinstance(exc, (OctuefsError, OSError)):
                    log.exception("unexpected error after a conflict patching %r; it stays queued", entry.name)
                self._retry_later(entry, exc)
            return
        except NotFound:
            self._patch_gone(entry)
            return
        except Exception as exc:  # a 429 too: retried with backoff; a bug: said, kept, retried
            if not isinstance(exc, (OctuefsError, OSError)):
                log.exception("unexpected error patching the metadata of %r; it stays queued", entry.name)
            self._retry_later(entry, exc)
            return
        log.debug("patched metadata of %r: %s", entry.name, sorted(changes))
        self._finish(entry, info, DONE)

    def _settle_patch(self, entry: Entry) -> None:
        """The object moved on since the change was made (a change elsewhere, or our own patch
        whose answer was lost): the change is applied again to what is there, key by key
        (``octue__tags`` tag by tag). A key changed here and elsewhere takes this mount's value,
        the later setfattr (as GCS's last writer would), and the log says which key."""
        try:
            current = self.bucket.stat(entry.name)
        except NotFound:
            self._patch_gone(entry)
            return
        if dict(current.metadata) == entry.metadata:
            log.info("the metadata change of %r was already in the bucket", entry.name)
            self._finish(entry, current, DONE)
            return
        theirs = dict(current.metadata)
        merged = merge_metadata(entry.base_metadata, entry.metadata, theirs)
        if merged is None:
            merged, overwritten = apply_changes(entry.base_metadata or {}, entry.metadata, theirs)
            log.warning("the metadata of %r changed in the bucket while a setfattr here waited to be sent; the "
                        "change made here is applied to it, and for key(s) %s, changed on both sides, this mount's "
                        "value replaces the bucket's (%s)", entry.name, sorted(overwritten),
                        {k: theirs.get(k) for k in sorted(overwritten)})
        else:
            log.info("the metadata of %r changed in the bucket while a setfattr here waited to be sent: merged",
                     entry.name)
        with self._cond:
            if entry.content_type == (entry.base_object or {}).get("content_type"):
                entry.content_type = current.content_type  # not changed here: the bucket's stands
            entry.base_object = object_fields(current)
        self._rebase(entry, current, merged)

    def _patch_gone(self, entry: Entry) -> None:
        """The object a metadata change was for is gone from the bucket: nothing to apply it to."""
        log.warning("%r was deleted in the bucket before a metadata change made here reached it: the change is "
                    "dropped with it", entry.name)
        entry.state, entry.result, entry.failed = DONE, None, None
        try:
            self.on_done(entry)
        except Exception:
            log.exception("after dropping the metadata change of %r", entry.name)
        with self._cond:
            for successor in self._entries.release_successors(entry.id):
                successor.base_generation = entry.base_generation  # it meets the same absence
                successor.base_metageneration, successor.base_metadata = (entry.base_metageneration,
                                                                          entry.base_metadata)
                self.journal.write(successor)
            self._entries.pop(entry.id, None)
            self.journal.remove(entry)
            self._cond.notify_all()
            self._work_ready.notify_all()
        entry.done.set()


def object_fields(info: ObjectInfo) -> dict:
    """What a journal record keeps of the object a metadata change applies to."""
    return {"size": info.size, "updated": info.updated.isoformat(), "crc32c": info.crc32c, "md5": info.md5,
            "content_type": info.content_type, "storage_class": info.storage_class}


def patched_object(entry: Entry) -> ObjectInfo:
    """The object as a journaled metadata-only entry found it (its metadata the one replaced)."""
    fields = {"size": entry.size, **(entry.base_object or {})}
    updated = dt.datetime.fromisoformat(fields.pop("updated", "1970-01-01T00:00:00+00:00"))
    return ObjectInfo(entry.name, generation=max(entry.base_generation or 0, 0),
                      metageneration=entry.base_metageneration or 0, updated=updated,
                      metadata=entry.base_metadata or {}, **fields)


def apply_changes(base: dict[str, str], ours: dict[str, str], theirs: dict[str, str]) -> tuple[dict[str, str], set]:
    """``theirs`` with the keys ``ours`` changed from ``base`` set as ours has them (tags merged
    tag by tag where they can be); and the keys where that replaced a change of theirs."""
    merged, overwritten = dict(theirs), set()
    for key in ours.keys() | base.keys():
        b, o, t = base.get(key), ours.get(key), theirs.get(key)
        if o == b:
            continue
        if t != b and t != o:
            value = merge_tags(b, o, t) if key == TAGS_KEY else None
            if value is not None:
                merged[key] = value
                continue
            overwritten.add(key)
        if o is None:
            merged.pop(key, None)
        else:
            merged[key] = o
    return merged, overwritten
