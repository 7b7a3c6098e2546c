"""One attempt of an upload and what follows it (:class:`Attempts`, a part of
:class:`octuefs.writeback.uploads.Uploader`).

Every upload carries generation and metageneration preconditions. When one fails, the object is
looked at: the version may be ours after all (a lost answer, a crash), only its metadata may
have changed elsewhere (merged), or someone else changed it (then ours goes beside:
:mod:`octuefs.writeback.conflicts`). Transient failures are retried with exponential backoff for
as long as it takes; one that retrying alone will not mend (403, 400) every
:data:`PERMANENT_RETRY` seconds, with nobody waiting for it. When one lands, its successors take
the generation it made, and uploads waiting for the bucket are tried again at once.
"""

from __future__ import annotations

import logging
import time

from octuefs.errors import (
    BucketNotFound,
    NotFound,
    OctuefsError,
    PermissionDenied,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
    TransientError,
)
from octuefs.octue.merge import fits_limits, merge_metadata
from octuefs.storage.base import ChecksumMismatch, ObjectInfo
from octuefs.writeback.entry import (
    BASE_UNKNOWN,
    DONE,
    QUEUED,
    Entry,
    content_fingerprint,
    is_version,
    version_key,
)

log = logging.getLogger(__name__)

PERMANENT_RETRY = 300.0  # seconds between retries of an upload that failed for good (403, 400)


def is_permanent(exc: BaseException) -> bool:
    """An upload error that retrying alone will not mend: refused (403), a bad request (400), no
    such bucket. The data is kept and retried now and then, but nobody waits for it."""
    if isinstance(exc, (PermissionDenied, BucketNotFound)):
        return True
    return isinstance(exc, StorageError) and not isinstance(
        exc, (TransientError, PreconditionFailed, NotFound, RangeNotSatisfiable))


class Attempts:
    """Running :class:`~octuefs.writeback.uploads.Uploader`'s entries (its bucket, journal and
    queue, under its lock)."""

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
            if merged is not None and not fits_limits(merged):
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
