"""Which queued upload runs next, and the worker threads that run them (:class:`Scheduler`, a
part of :class:`octuefs.writeback.uploads.Uploader`).

Entries of one object run one at a time and in queueing order. Write-back in bursts: while
closes keep coming, a small file's upload waits for them to pause (``burst_hold``); far from
the bucket nothing is held and small uploads run ``small_workers`` at once. Everything here
runs under the uploader's lock, ``_cond``, except the upload itself (``_run``).
"""

from __future__ import annotations

import logging
import threading
import time

from octuefs.storage.base import far_away
from octuefs.writeback.entry import QUEUED, RUNNING, Entry

log = logging.getLogger(__name__)

BURST_QUIET = 0.05  # seconds without a close that end a burst of them
BURST_HOLD = 2.0  # seconds a small file's upload waits at most for a burst of closes to end
BURST_MAX_BYTES = 8 * 1024 * 1024  # larger files are never held: their uploads are not CPU per file
# Small files' uploads (one request each, the content in memory) may run SMALL_IN_FLIGHT at once,
# beyond ``workers`` (which bounds uploads of any size): at a distance one upload is one round
# trip, so N small files take N x RTT / in-flight. 32 x 1 MiB bounds their memory to 32 MiB.
SMALL_UPLOAD_MAX = 1024 * 1024
SMALL_IN_FLIGHT = 32
# The burst hold is for uploads that compete with closes for the CPU. When the bucket is far
# away (:func:`octuefs.storage.base.far_away`), a small upload is mostly a wait for its answer:
# nothing is held any more (the closes keep the CPU, the round trips overlap them) and small
# uploads run SMALL_IN_FLIGHT at once. Looked at again every FAR_RECHECK seconds at most.
FAR_RECHECK = 0.5


class Scheduler:
    """The workers of :class:`~octuefs.writeback.uploads.Uploader`: its queue, lock and counters."""

    def _spawn(self, threads: int) -> None:  # LOCKS_REQUIRED(_cond)
        """Workers up to ``threads`` in all (none once stopping, or before start)."""
        while self._started and not self._stopping and len(self._threads) < max(threads, self.workers):
            t = threading.Thread(target=self._work, name=f"octuefs-upload-{len(self._threads)}", daemon=True)
            self._threads.append(t)
            t.start()

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
        :func:`far_away`; a bucket that does not time its requests is near.) Caller holds _cond."""
        if now - self._far_checked >= FAR_RECHECK:
            self._far_checked = now
            far, wall, cpu = far_away(self.bucket)
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
