"""The write-back journal: closed files' content and their records, on local disk.

On disk, under the cache directory (0700, files 0600):

    pending/<id>          the file's content as it was when it was closed, with its journal
                          record (what to do with it: object, precondition, metadata) in the
                          extended attribute ``user.octuefs.upload.<id>``; made durable with
                          one fsync of the file, then renamed in, then one of the directory
    journal/<id>.json     the record instead, where the cache's filesystem cannot hold it as
                          an attribute (no user xattrs, or a record too large for one):
                          written after the data is durable (temp file, fsync, rename, fsync
                          of the directory)
    lost+found/           what is never uploaded: an entry whose record does not match its data
                          (``<id>.data`` beside ``<id>.record``), content sealed without a
                          record, and files a dead daemon was still writing (quarantine.py)

and the conflict log beside them (:mod:`octuefs.writeback.conflictlog`).

A record travels with its content: a file in ``pending/`` always has its record, so a crash
at any moment leaves either nothing (the close failed, and said so) or both. That costs a
close two fsyncs, where separate record files cost four.

:meth:`Journal.load` reads the journal back at mount: in queueing order, superseded entries
dropped, unusable ones set aside in ``lost+found/``.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import time
import uuid

from octuefs.cache.space import bytes_in
from octuefs.cachedir import CacheDir
from octuefs.durable import fsync_dir, fsync_path
from octuefs.writeback.conflictlog import ConflictLog
from octuefs.writeback.entry import BASE_UNKNOWN, Entry, as_check

log = logging.getLogger(__name__)


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


class Journal(ConflictLog):
    """The on-disk half: sealed content and journal records (and the conflict log)."""

    def __init__(self, root: str):
        self.pending_dir = CacheDir(root).pending
        self.journal_dir = CacheDir(root).journal
        ConflictLog.__init__(self, root)
        for d in (self.pending_dir, self.journal_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self.lost_dir = CacheDir(root).lost_found
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
