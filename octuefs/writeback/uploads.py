"""Write-back: :class:`Uploader`, the queue of closed files waiting to be uploaded, and the
workers that upload them.

The write-back package, one job a module:

    entry.py        one journaled upload (:class:`~octuefs.writeback.entry.Entry`) and the queue's index
    journal.py      the on-disk journal: records, sealed content, load and repair, lost+found/
    conflictlog.py  conflicts.jsonl: the conflicts noted, reported and settled
    quarantine.py   staging files a dead daemon left unclosed, moved to lost+found/
    uploads.py      :class:`Uploader`: submitting, waiting, withholding, status, shutdown
    scheduler.py    which entry runs next (bursts, distance to the bucket) and the worker threads
    attempts.py     one attempt and what follows: preconditions settled, retries, successors
    conflicts.py    conflict copies: their names, keeping a version beside, checking for one
    patches.py      metadata-only changes (setfattr), paced to GCS's one change a second
    merge.py        three-way merges of custom metadata
    late.py         versions of a removed file that land late, removed again
    givebacks.py    the give-backs owed by take-over renames

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

Lock: ``_cond`` (a Condition) guards ``_entries`` and every Entry's mutable state, in this
module and in the parts of :class:`Uploader` that live in scheduler.py, attempts.py,
conflicts.py and patches.py. No network I/O is done while holding it. Journaling is (an
entry's precondition and chaining depend on what else is queued): a close's two fsyncs, whose
data a large file flushed beforehand. ``_moved_at`` (a float, written whole) is read without it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from octuefs.errors import Conflict, UploadFailed, UploadStillPending
from octuefs.storage.base import Bucket, ObjectInfo
from octuefs.writeback.attempts import Attempts
from octuefs.writeback.conflicts import ConflictCopies
from octuefs.writeback.entry import (
    CONFLICT,
    DONE,
    QUEUED,
    WITHHELD,
    Entry,
    EntryQueue,
    as_check,
    content_fingerprint,
    version_key,
)
from octuefs.writeback.journal import Journal
from octuefs.writeback.late import LateLandings
from octuefs.writeback.patches import PATCH_PACE, MetadataPatches
from octuefs.writeback.scheduler import (
    BURST_HOLD,
    BURST_MAX_BYTES,
    BURST_QUIET,
    FAR_RECHECK,
    SMALL_IN_FLIGHT,
    Scheduler,
)

log = logging.getLogger(__name__)


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


DoneCallback = Callable[[Entry], None]


class Uploader(Scheduler, Attempts, ConflictCopies, MetadataPatches):
    """Background uploads of journaled entries (see the module docstring). Its workers, attempts,
    conflict copies and metadata patches are its parts in scheduler.py, attempts.py, conflicts.py
    and patches.py, on the state set up here."""

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
        self._entries = EntryQueue()  # guarded by _cond
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
