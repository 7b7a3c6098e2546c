"""One journaled upload (:class:`Entry`), what identifies a version this mount sent, and the
queue that keeps entries by object (:class:`EntryQueue`).

An Entry is one closed version of one object waiting to go up, a metadata-only change of a
saved file (``patch``), or a check of a conflict copy (``check_copy``). Its record
(:data:`RECORD_FIELDS`) is what the journal keeps on disk (:mod:`octuefs.writeback.journal`);
its other fields live in memory only, guarded by the uploader's lock
(:class:`octuefs.writeback.uploads.Uploader`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import threading

from octuefs.storage.base import ObjectInfo
from octuefs.storage.retry import Fingerprint, file_fingerprint

QUEUED, RUNNING, DONE, CONFLICT = "queued", "running", "done", "conflict"
WITHHELD = "withheld"  # held back while a delete or rename decides whether it is still wanted


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


class EntryQueue(dict):
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
