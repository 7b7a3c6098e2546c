"""``user.octuefs.state``: where a file's write-back stands, answered from memory.

The value is one line: the state, then ``key=value`` fields (a value that is not a plain word or
number is a JSON string, so a script splits it with ``shlex.split`` or the regex
``(\\S+?)=("(?:[^"\\\\]|\\\\.)*"|\\S+)``)::

    saved                                   nothing of it is waiting here: the bucket has it
    pending kind=upload attempts=0          closed, journaled, its upload waiting its turn
    pending kind=metadata attempts=2 error="503 ..."   a setfattr waiting to be sent, and why it waits
    pending kind=upload attempts=4 error="403 ..." failed=yes   refused for good: retried every 5 minutes
    pending kind=unclosed attempts=0        written and not yet closed (saved at close)
    uploading kind=upload attempts=1        being sent now
    conflict saved-as="a.octuefs-conflict-20261207T011500Z-1a2b3c.csv" url="gs://b/d/a.octuefs-..."

``pending`` and ``uploading`` name the oldest version of the file still waiting (its attempts and
last error); ``conflict`` says that the last version this mount sent went up beside the object
(someone else changed it), under ``saved-as`` in the same directory. It lasts until the file's
next version from this mount (or a later mount with the same cache directory) lands, or the file
is removed or renamed through the mount; a remount keeps it: the conflicts are taken at start
from the list ``octuefs status`` keeps (the journal's ``conflicts.jsonl``, its
:data:`CONFLICTS_KEPT` newest lines), less those a later event ended (``conflicts.settled``).
So ``saved`` keeps meaning that the bucket holds the mount's bytes at that name.

Nothing here asks the bucket: the upload queue, the file's node and the conflicts (kept for the
:data:`CONFLICTS_KEPT` newest names) are all in memory; the journal's files are read once, at
start, and the end of a conflict appended to ``conflicts.settled``. The attribute is
read-only (EPERM) and not listed by ``listxattr``: ``cp --preserve=xattr``, ``rsync -X`` and
``getfattr -d`` copy or show every listed name, and a copy onto another octuefs mount would fail
on it (or a copy to a local disk keep a state that is no longer true).

Lock: ``_lock`` guards ``_conflicts``; taken alone (the queue's own lock is taken and let go
before it, by :meth:`Uploader.pending_for`).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import threading

import cachetools

from octuefs.writeback.entry import CONFLICT, DONE, RUNNING, Entry
from octuefs.writeback.uploads import Uploader

log = logging.getLogger(__name__)

NAME = "user.octuefs.state"
CONFLICTS_KEPT = 4096
_PLAIN = re.compile(r"[A-Za-z0-9_.:/+-]+")


def _field(key: str, value: object) -> str:
    text = str(value)
    return f"{key}={text}" if isinstance(value, int) or _PLAIN.fullmatch(text) else f"{key}={json.dumps(text)}"


def render(state: str, **fields: object) -> bytes:
    """One state line: ``state key=value ...`` (None values left out)."""
    return " ".join([state] + [_field(k.replace("_", "-"), v) for k, v in fields.items() if v is not None]).encode()


class UploadStates:
    """The state of each file's write-back, from the upload queue and what it told us."""

    def __init__(self, uploader: Uploader, bucket_name: str):
        self.uploader = uploader
        self.journal = uploader.journal
        self.bucket_name = bucket_name
        self._lock = threading.Lock()
        self._conflicts: cachetools.LRUCache[str, str] = cachetools.LRUCache(CONFLICTS_KEPT)  # name -> saved as
        self._load()
        uploader.on_finished.append(self._finished)

    def _load(self) -> None:
        """The conflicts earlier mounts with this cache made and nothing ended since."""
        try:
            records = self.journal.conflicts(limit=CONFLICTS_KEPT)
            for record in records:  # oldest first: a later conflict of a name wins
                name, saved_as = record.get("object"), record.get("saved_as")
                if record.get("bucket", self.bucket_name) == self.bucket_name and isinstance(name, str) \
                        and isinstance(saved_as, str):
                    self._conflicts[name] = saved_as
            settled = self.journal.settled_conflicts(keep=set(self._conflicts.values()))
        except OSError as exc:
            log.warning("user.octuefs.state: the conflicts of earlier mounts could not be read (%s); files whose "
                        "version went beside then read as saved", exc)
            return
        for name in [n for n, saved_as in self._conflicts.items() if saved_as in settled]:
            del self._conflicts[name]

    def _settled(self, saved_as: list[str]) -> None:
        try:
            self.journal.note_settled(saved_as)
        except OSError as exc:
            log.warning("user.octuefs.state: could not note the end of the conflicts of %s (%s); after a remount "
                        "they read as conflict", saved_as, exc)

    def _finished(self, entry: Entry) -> None:
        ended = None
        with self._lock:
            if entry.state == CONFLICT and entry.conflict_name:
                self._conflicts[entry.name] = entry.conflict_name
            elif entry.state == DONE and entry.result is not None and not entry.patch:
                # its newest version is in place now (a metadata patch of the version made
                # elsewhere is not one: the mount's bytes are still only in the copy)
                ended = self._conflicts.pop(entry.name, None)
        if ended is not None:
            self._settled([ended])

    def forget(self, name: str, under: bool = False) -> None:
        """The mount removed or renamed ``name`` (with ``under``: every name under the prefix
        ``name``): a file made there later, elsewhere, has no conflict of this mount's."""
        with self._lock:
            names = [n for n in self._conflicts if n.startswith(name)] if under else [name]
            ended = [saved_as for saved_as in (self._conflicts.pop(n, None) for n in names) if saved_as is not None]
        self._settled(ended)

    def state(self, name: str, node=None) -> bytes:
        """``user.octuefs.state`` of object ``name`` (``node``: its live node, if any)."""
        queued = self.uploader.pending_for(name)
        waiting = [e for e in queued if e.state not in (DONE, CONFLICT)]
        if waiting:
            first = next((e for e in waiting if e.state == RUNNING), waiting[0])
            return render("uploading" if first.state == RUNNING else "pending",
                          kind="metadata" if first.patch else "upload", attempts=first.attempts,
                          error=first.last_error or None, failed="yes" if first.failed else None)
        if node is not None and node.unsaved:  # written (or changed) here, not handed to the queue yet
            return render("pending", kind="unclosed" if node.dirty else "metadata", attempts=0)
        with self._lock:
            saved_as = self._conflicts.get(name)
        if saved_as is None:  # gone beside a moment ago, its hook (_finished) not run yet
            saved_as = next((e.conflict_name for e in reversed(queued) if e.state == CONFLICT and e.conflict_name),
                            None)
        if saved_as is not None:
            return render("conflict", saved_as=posixpath.basename(saved_as),
                          url=f"gs://{self.bucket_name}/{saved_as}")
        return render("saved")
