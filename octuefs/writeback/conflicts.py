"""Conflict copies: when the object changed or vanished in the bucket while our version waited,
nothing is overwritten: our version goes up beside it under a marked name
(:func:`conflict_name`) with an Octue id of its own, a warning names both versions, and the
conflict log (:mod:`octuefs.writeback.conflictlog`) and ``octuefs status`` list it.

:class:`ConflictCopies` is a part of :class:`octuefs.writeback.uploads.Uploader`: keeping a
version beside, removing a copy an earlier attempt left once this version is in place, and
checking for a copy an attempt of a dropped version may have left.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid

from octuefs.errors import NotFound, OctuefsError, PreconditionFailed
from octuefs.octue.dataset_record import RECORD_NAME
from octuefs.octue.metadata import with_octue_id
from octuefs.storage.base import ObjectInfo
from octuefs.writeback.entry import CONFLICT, DONE, Entry, content_fingerprint

log = logging.getLogger(__name__)


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


class ConflictCopies:
    """Conflict copies of :class:`~octuefs.writeback.uploads.Uploader`'s entries (its bucket,
    journal and queue, under its lock)."""

    def _remove_own_copy(self, entry: Entry, data: str) -> None:
        """This version went up under its own name after an earlier attempt had gone beside (its
        answer lost, or the daemon died before noting it): that copy, if it landed and is still
        exactly ours, repeats what is now in place, unreported; it is deleted. One that anyone
        changed since stays."""
        target = entry.conflict_name
        metadata = with_octue_id(entry.metadata, entry.conflict_id)
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
        metadata = with_octue_id(entry.metadata, entry.conflict_id)
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

    def _keep_beside(self, entry: Entry, data: str, theirs: ObjectInfo | None) -> None:
        theirs_text = f"generation {theirs.generation}" if theirs is not None else "deleted"
        if entry.conflict_name is None:
            with self._cond:
                entry.conflict_name = conflict_name(entry.name, time.time(), entry.id[-6:])
                entry.conflict_id = json.dumps(str(uuid.uuid4()))  # a new object, so a new Octue id
                self.journal.write(entry)
        target = entry.conflict_name
        metadata = with_octue_id(entry.metadata, entry.conflict_id)
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
