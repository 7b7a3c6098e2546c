"""Late landings: versions of a removed file, sent before its removal with their answer lost,
that may land after it; removed again if they do (:class:`LateLandings`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from octuefs.errors import NotFound, OctuefsError, PreconditionFailed
from octuefs.storage.base import Bucket, ObjectInfo
from octuefs.writeback.entry import is_version

log = logging.getLogger(__name__)

# How long a request this mount gave up on (its answer lost) may still land: the client's request
# timeout is 60 s, so three times that. See LateLandings.
LATE_WINDOW = 180.0
LATE_SWEEP_EVERY = 5.0


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
