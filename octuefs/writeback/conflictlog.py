"""The log of conflicts, beside the journal in the cache directory (files 0600):

    conflicts.jsonl       one line per conflict: which object, which versions, where ours went
    conflicts.reported    how many lines of it an `octuefs sync` (or unmount) has reported
    conflicts.settled     one JSON string a line: a conflict copy whose conflict has ended (a
                          newer version landed, the file was removed or renamed here); read by
                          user.octuefs.state at the next mount

:class:`ConflictLog` is a part of :class:`octuefs.writeback.journal.Journal`: the journal's
conflict methods (``note_conflict``, ``conflicts``, ...) are these.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from octuefs.cachedir import CacheDir
from octuefs.durable import fsync_dir

log = logging.getLogger(__name__)


class ConflictLog:
    """conflicts.jsonl and the files that say how far it was reported and which copies settled."""

    def __init__(self, root: str):
        self.conflicts_path = CacheDir(root).conflicts
        # The conflict copies (saved_as) whose conflict a later event ended: a newer version from
        # this mount landed at the name, or the mount removed or renamed the file. Read by
        # user.octuefs.state (filestate.py) at the next mount; octuefs status still lists them.
        self.settled_path = CacheDir(root).conflicts_settled
        # How many lines of conflicts.jsonl an `octuefs sync` (or unmount) has reported.
        self.reported_path = CacheDir(root).conflicts_reported

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
