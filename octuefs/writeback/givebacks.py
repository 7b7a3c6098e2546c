"""Give-backs owed by take-over renames (:meth:`octuefs.fs.takeover.TakeOvers.taking_over`).

A take-over PATCHes the replaced file's Octue metadata (its id, tags, labels) onto the incoming
file before copying it over. If the daemon dies between that PATCH and the end of the rename,
the incoming file would keep the replaced file's id for good: two live Datafiles with one id.
So the give-back is journaled before the PATCH, and settled by the next mount with the same
cache directory if the rename never settled it.

On disk: ``<cache_dir>/givebacks/<id>.json`` (0600), written with temp file, fsync, rename,
fsync of the directory: ``{"bucket", "name", "dst", "size", "md5", "crc32c", "own", "took"}``,
``own`` and ``took`` being the source's Octue keys before and after the PATCH. Removed once the
rename's outcome is settled (moved, given back, or handed to the upload queue, which journals
it itself).

Settling a left-over record: the source, if it still holds the same content with exactly the
Octue keys it took, gets its own back (one PATCH, with the generation and metageneration just
read as preconditions); anything else there (gone, rewritten, changed since) is left alone.

Owed: a record whose rename has ended (failed) but which could not be settled then (the bucket
did not answer), or one an earlier mount left that the start could not settle. The mount does
not wait for the next one: it tries again in the background (backing off), before a lookup of
the source (so the mount never shows the replaced file's id on it once the bucket answers), and
at every ``octuefs sync``, which counts what is still owed as pending: a sync that says all is
written means no source still carries an id it took. Locking: ``_lock`` guards ``_owed`` and
``_thread``; no bucket request is made under it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping

from octuefs.cachedir import CacheDir
from octuefs.durable import fsync_dir, fsync_path
from octuefs.errors import NotFound, OctuefsError, PreconditionFailed
from octuefs.octue import metadata as octue
from octuefs.storage.base import Bucket, ObjectInfo

log = logging.getLogger(__name__)


def octue_keys(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k.startswith(octue.OCTUE_PREFIX)}


class OwedGiveBacks:
    RETRY_FIRST, RETRY_MAX = 0.5, 30.0  # seconds between background tries of what is owed

    def __init__(self, cache_dir: str):
        self.dir = CacheDir(cache_dir).givebacks
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._owed: dict[str, str] = {}  # record id -> the source's name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _write(self, record_id: str, record: dict) -> None:
        path = os.path.join(self.dir, record_id + ".json")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(self.dir)

    def note(self, bucket: str, src: ObjectInfo, took: Mapping[str, str], dst_name: str) -> str:
        """Before the take-over's PATCH of ``src``: it will carry ``took``'s Octue keys."""
        record_id = uuid.uuid4().hex
        self._write(record_id, {"bucket": bucket, "name": src.name, "dst": dst_name, "size": src.size,
                                "md5": src.md5, "crc32c": src.crc32c, "own": octue_keys(src.metadata),
                                "took": octue_keys(took)})
        return record_id

    def retook(self, record_id: str, took: Mapping[str, str]) -> None:
        """Before a second PATCH of the source (a change elsewhere merged in)."""
        record = self._read(os.path.join(self.dir, record_id + ".json"))
        if record is not None:
            record["took"] = octue_keys(took)
            self._write(record_id, record)

    def settled(self, record_id: str) -> None:
        try:
            os.unlink(os.path.join(self.dir, record_id + ".json"))
        except FileNotFoundError:
            pass

    @staticmethod
    def _read(path: str) -> dict | None:
        try:
            with open(path) as f:
                record = json.load(f)
            return record if isinstance(record, dict) else None
        except (OSError, ValueError):
            return None

    def left_over(self, bucket: str) -> list[tuple[str, dict]]:
        """The records an earlier mount of ``bucket`` left unsettled (a crash)."""
        found = []
        for fname in sorted(os.listdir(self.dir)):
            if not fname.endswith(".json"):
                continue
            record = self._read(os.path.join(self.dir, fname))
            if record is None:
                log.warning("ignoring an unreadable give-back record %s", os.path.join(self.dir, fname))
                continue
            if record.get("bucket") == bucket:
                found.append((fname[: -len(".json")], record))
        return found

    def settle_now(self, bucket: Bucket, record_id: str) -> bool:
        """:meth:`settle` a record of this mount (a take-over whose PATCH had no answer)."""
        record = self._read(os.path.join(self.dir, record_id + ".json"))
        if record is None:
            return True
        try:
            return self.settle(bucket, record_id, record)
        except Exception:
            log.exception("settling the give-back owed to %r failed; it is tried again", record.get("name"))
            return False

    def owe(self, bucket: Bucket, record_id: str) -> None:
        """The rename of record ``record_id`` has ended without settling it: keep trying."""
        record = self._read(os.path.join(self.dir, record_id + ".json"))
        if record is None:
            return
        with self._lock:
            self._owed[record_id] = record.get("name", "")
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._retry, args=(bucket,), name="octuefs-givebacks-owed",
                                                daemon=True)
                self._thread.start()

    def owes(self, name: str) -> bool:
        """Asked by every lookup: nothing owed (the usual case) is answered without the lock (a
        dict's emptiness is read atomically; an entry added meanwhile is for a rename that has
        already returned its error, and the next lookup sees it)."""
        if not self._owed:
            return False
        with self._lock:
            return name in self._owed.values()

    def status(self) -> list[dict]:
        """What is owed, for ``octuefs status``: each source still carrying the Octue keys it
        took from the file it was to replace, with when that rename failed."""
        with self._lock:
            owed = list(self._owed)
        rows = []
        for record_id in owed:
            path = os.path.join(self.dir, record_id + ".json")
            record = self._read(path)
            try:
                since = os.stat(path).st_mtime
            except OSError:
                continue  # settled meanwhile
            if record is not None:
                rows.append({"id": record_id, "name": record.get("name", ""), "replacing": record.get("dst", ""),
                             "since": since})
        return rows

    def settle_owed(self, bucket: Bucket, name: str | None = None) -> int:
        """Try to settle what is owed (to ``name`` only, if given); return how many are still owed."""
        with self._lock:
            todo = [rid for rid, source in self._owed.items() if name is None or source == name]
        for record_id in todo:
            if self.settle_now(bucket, record_id):
                with self._lock:
                    self._owed.pop(record_id, None)
        with self._lock:
            return len(self._owed)

    def _retry(self, bucket: Bucket) -> None:
        delay = self.RETRY_FIRST
        while not self._stop.wait(delay):
            with self._lock:
                before = len(self._owed)
            left = self.settle_owed(bucket)
            with self._lock:
                if not self._owed:
                    self._thread = None
                    return
            delay = self.RETRY_FIRST if left < before else min(self.RETRY_MAX, delay * 2)

    def stop(self) -> None:
        """No more background tries (what is still owed stays journaled for the next mount)."""
        self._stop.set()

    def settle(self, bucket: Bucket, record_id: str, record: dict) -> bool:
        """Give the source of a record an earlier mount left its own Octue keys back if it still
        carries the ones it took; True once the record is settled (removed)."""
        name = record["name"]
        try:
            current = bucket.stat(name)
        except NotFound:
            current = None
        except (OctuefsError, OSError) as exc:
            log.warning("could not settle the give-back owed to %r (a rename over %r interrupted): %s; it is "
                        "tried again", name, record.get("dst"), exc)
            return False
        same = current is not None and (current.size, current.md5, current.crc32c) == (
            record.get("size"), record.get("md5"), record.get("crc32c"))
        if same and octue_keys(current.metadata) == record.get("took"):
            back = octue.octue_patch_from(current.metadata, record.get("own") or {})
            try:
                bucket.patch_metadata(name, back, if_generation_match=current.generation,
                                      if_metageneration_match=current.metageneration)
                log.warning("%r had kept the Octue metadata of %r after a rename over it was interrupted; it has "
                            "its own back", name, record.get("dst"))
            except PreconditionFailed:
                pass  # changed meanwhile: left alone
            except (OctuefsError, OSError) as exc:
                log.warning("could not give %r its own Octue metadata back (a rename over %r was interrupted): %s; "
                            "it is tried again", name, record.get("dst"), exc)
                return False
        self.settled(record_id)
        return True
